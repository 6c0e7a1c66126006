//! Reading h (a UNet's mid-block output, a DiT's last block's tokens) for many latents at one timestep.
use crate::models::denoiser::{Condition, Denoiser};
use crate::distributed::{Ranks, Share};
use crate::passes::{PassCounter, Passes};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which classifier-free-guidance branch h is read from (the paper does not say; Haas et al. used uncond).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HBranch {
    Cond,
    Uncond,
}

/// The path to h of a denoiser with the condition of one branch: latents -> h.
pub struct HSpace<'a> {
    pub denoiser: &'a Denoiser,
    /// The branch's condition (one sample), on the model's device, text in the model's dtype.
    pub condition: Condition,
    /// The dtype the model runs in.
    pub kind: Kind,
    pub batch: i64,
    /// The encoder passes made through this h-space: forward only here, forward and backward where a gradient
    /// is taken (`alignment::loss_and_gradient`).
    pub passes: PassCounter,
}

impl<'a> HSpace<'a> {
    pub fn new(denoiser: &'a Denoiser, condition: Condition, kind: Kind, batch: i64) -> Self {
        Self { denoiser, condition, kind, batch, passes: PassCounter::default() }
    }

    /// Whether the model runs in half precision (f16 or bf16).
    pub fn half_precision(&self) -> bool {
        matches!(self.kind, Kind::Half | Kind::BFloat16)
    }

    /// Whether h's values (the step's target, the logged losses, the residual the gradient follows) are computed
    /// in the latents' dtype (f32) rather than the UNet's: for bf16, whose 8 significant bits leave rounding noise
    /// of 1.5% of h's RMS in a random-weight SD 1.5 UNet, enough to hide h - target once the loss has fallen
    /// 100-fold (gradient cosine 0.92 against f32). f16's 11 bits leave 0.19% there (cosine 0.9986), not worth an
    /// f32 forward per iteration. BENCHMARKS.md "Half-precision alignment gradients".
    pub fn values_in_latent_dtype(&self) -> bool {
        self.kind == Kind::BFloat16
    }

    /// h for latents `x` [n,C,H,W] at `timestep`, computed in the UNet's dtype and returned in the latents'
    /// (f32, or f64 for checks); differentiable with respect to `x`.
    pub fn h(&self, x: &Tensor, timestep: i64) -> Tensor {
        self.h_in(x, timestep, self.kind).to_kind(x.kind())
    }

    /// h computed in `kind`, whatever the model's dtype (its layers convert their weights).
    fn h_in(&self, x: &Tensor, timestep: i64, kind: Kind) -> Tensor {
        let n = x.size()[0];
        let device = self.denoiser_device();
        let input = x.to_device(device).to_kind(kind);
        let t = Tensor::from(timestep).to_device(device);
        self.denoiser.encode_h(&input, &t, &self.condition.in_kind(kind).repeat(n))
    }

    fn denoiser_device(&self) -> tch::Device {
        self.condition.device()
    }

    /// h's values for any number of latents, in batches, without autograd, in the latents' dtype; computed in the
    /// UNet's dtype, or in the latents' where `values_in_latent_dtype`.
    pub fn h_all(&self, x: &Tensor, timestep: i64) -> Tensor {
        let kind = if self.values_in_latent_dtype() { x.kind() } else { self.kind };
        self.passes.add(Passes { encoder_forward: x.size()[0] as u64, ..Passes::default() });
        tch::no_grad(|| {
            Tensor::cat(&x.split(self.batch, 0).iter().map(|c| self.h_in(c, timestep, kind).to_kind(x.kind())).collect::<Vec<_>>(), 0)
        })
    }
}

/// Mean squared distance of each h to `target`, one value per latent: [n].
pub fn distance_to(h: &Tensor, target: &Tensor) -> Tensor {
    (h - target).square().flatten(1, -1).mean_dim(1, false, h.kind())
}

/// Each latent's `distance_to` `target`, for this rank's latents' `h` computed batch by batch as `share` splits them
/// (so each value is the same bits on any number of ranks), gathered over all `total` latents in their order.
pub fn distances_over(ranks: Ranks, share: &Share, h: &Tensor, target: &Tensor, total: i64) -> Result<Vec<f64>> {
    let mut local = Vec::with_capacity(h.size()[0] as usize);
    for chunk in h.split(share.batch, 0) {
        local.extend(Vec::<f64>::try_from(distance_to(&chunk, target).to_kind(Kind::Double))?);
    }
    ranks.gather_per_latent(share, total, &local)
}
