//! Classifier-free guidance around a UNet, evaluated in memory-bounded batches.
use crate::models::unet::UNet2DConditionModel;
use tch::Tensor;

pub struct GuidedDenoiser<'a> {
    pub unet: &'a UNet2DConditionModel,
    /// Text contexts [1, L, D] of the prompt and of the empty prompt.
    pub cond: &'a Tensor,
    pub uncond: &'a Tensor,
    pub guidance: f64,
    /// Latents per UNet call (each call runs 2x this many samples: both CFG branches).
    pub batch: i64,
}

impl GuidedDenoiser<'_> {
    /// uncond + w (cond - uncond) for every latent, without autograd, in the dtype of `x`; the UNet runs in its own.
    pub fn predict(&self, x: &Tensor, timestep: i64) -> Tensor {
        let kind = self.cond.kind();
        let device = self.cond.device();
        tch::no_grad(|| {
            let chunks: Vec<Tensor> = x
                .split(self.batch, 0)
                .iter()
                .map(|chunk| {
                    let n = chunk.size()[0];
                    let input = Tensor::cat(&[chunk, chunk], 0).to_device(device).to_kind(kind);
                    let context = Tensor::cat(&[self.uncond.expand([n, -1, -1], false), self.cond.expand([n, -1, -1], false)], 0);
                    let t = Tensor::from(timestep).to_device(device);
                    let out = self.unet.forward(&input, &t, &context).sample.to_kind(x.kind());
                    let (uncond, cond) = (out.narrow(0, 0, n), out.narrow(0, n, n));
                    &uncond + (cond - &uncond) * self.guidance
                })
                .collect();
            Tensor::cat(&chunks, 0).to_device(x.device())
        })
    }
}
