//! Reading h (the UNet mid-block output) for many latents at one timestep.
use crate::models::unet::UNet2DConditionModel;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which classifier-free-guidance branch h is read from (the paper does not say; Haas et al. used uncond).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HBranch {
    Cond,
    Uncond,
}

/// The encoder half of a UNet with the text context of one branch: latents -> h.
pub struct HSpace<'a> {
    pub unet: &'a UNet2DConditionModel,
    /// The branch's text context [1, L, D], in the model's dtype and on its device.
    pub context: Tensor,
    pub batch: i64,
}

impl HSpace<'_> {
    /// h for latents `x` [n,C,H,W] at `timestep`, in the latents' dtype (f32, or f64 for checks);
    /// differentiable with respect to `x`.
    pub fn h(&self, x: &Tensor, timestep: i64) -> Tensor {
        let n = x.size()[0];
        let input = x.to_device(self.context.device()).to_kind(self.context.kind());
        let t = Tensor::from(timestep).to_device(self.context.device());
        self.unet.encode_h(&input, &t, &self.context.expand([n, -1, -1], false)).to_kind(x.kind())
    }

    /// h for any number of latents, in batches, without autograd.
    pub fn h_all(&self, x: &Tensor, timestep: i64) -> Tensor {
        tch::no_grad(|| Tensor::cat(&x.split(self.batch, 0).iter().map(|c| self.h(c, timestep)).collect::<Vec<_>>(), 0))
    }
}

/// Mean squared distance of each h to `target`, one value per latent: [n].
pub fn distance_to(h: &Tensor, target: &Tensor) -> Tensor {
    (h - target).square().flatten(1, -1).mean_dim(1, false, h.kind())
}

/// The spread of h across latents: mean squared distance to their own mean.
pub fn spread(h: &Tensor) -> f64 {
    distance_to(h, &h.mean_dim(0, true, h.kind())).mean(h.kind()).double_value(&[])
}
