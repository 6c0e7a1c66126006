//! MGD3's mode guidance (Chan et al. 2025): while a step is early enough, the noise estimate is shifted so the
//! predicted clean sample moves toward a mode (a k-means centre of sample latents), by `scale` times the noise
//! level times the gap. Diversity comes from the noise; the mode keeps each sample near a typical one.
use crate::schedulers::ddim::DdimScheduler;
use tch::Tensor;

pub struct ModeGuidance<'a> {
    pub scheduler: &'a DdimScheduler,
    /// The mode [1,C,H,W] (or [B,C,H,W]), in latent space.
    pub mode: Tensor,
    pub scale: f64,
    /// Steps guided, counted from the first (MGD3 stops halfway).
    pub steps: usize,
}

impl ModeGuidance<'_> {
    /// The model output at `timestep` for latents `x`, with the mode's pull added while the step is one of the
    /// first `steps`: epsilon - scale * sigma_t * (mode - x0_pred).
    pub fn apply(&self, timestep: i64, x: &Tensor, output: Tensor) -> Tensor {
        if !self.scheduler.timesteps().iter().take(self.steps).any(|&t| t == timestep) {
            return output;
        }
        let (original, epsilon) = self.scheduler.predictions(&output, timestep, x);
        let sigma = (1.0 - self.scheduler.alpha_cumprod(timestep)).sqrt();
        let pulled = epsilon - (self.mode.to_kind(x.kind()) - original) * (self.scale * sigma);
        self.scheduler.output_for_epsilon(&pulled, timestep, x)
    }
}
