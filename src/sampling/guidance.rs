//! Classifier-free guidance around a denoiser, evaluated in memory-bounded batches.
use crate::models::denoiser::{Condition, Denoiser};
use tch::{Kind, Tensor};

pub struct GuidedDenoiser<'a> {
    pub denoiser: &'a Denoiser,
    /// The conditions (one sample each) of the prompt and of the empty prompt.
    pub cond: &'a Condition,
    pub uncond: &'a Condition,
    /// The dtype the model runs in.
    pub kind: Kind,
    pub guidance: f64,
    /// Latents per network call (each call runs 2x this many samples: both CFG branches).
    pub batch: i64,
}

impl GuidedDenoiser<'_> {
    /// uncond + w (cond - uncond) for every latent, without autograd, in the dtype of `x`; the network runs in its
    /// own. (DiTPipeline guides only the noise channels and drops the learned variance: `Denoiser::predict` has
    /// dropped it already.)
    pub fn predict(&self, x: &Tensor, timestep: i64) -> Tensor {
        let device = self.cond.device();
        tch::no_grad(|| {
            let chunks: Vec<Tensor> = x
                .split(self.batch, 0)
                .iter()
                .map(|chunk| {
                    let n = chunk.size()[0];
                    let input = Tensor::cat(&[chunk, chunk], 0).to_device(device).to_kind(self.kind);
                    let condition = Condition::cat(&self.uncond.in_kind(self.kind).repeat(n), &self.cond.in_kind(self.kind).repeat(n));
                    let t = Tensor::from(timestep).to_device(device);
                    let out = self.denoiser.predict(&input, &t, &condition).noise.to_kind(x.kind());
                    let (uncond, cond) = (out.narrow(0, 0, n), out.narrow(0, n, n));
                    &uncond + (cond - &uncond) * self.guidance
                })
                .collect();
            Tensor::cat(&chunks, 0).to_device(x.device())
        })
    }
}
