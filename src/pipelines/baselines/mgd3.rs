//! MGD3-style (Chan et al. 2025): a sample from seeded noise, pulled toward the samples' latent centre during
//! the first part of the steps (`sampling::mode_guidance`).
use super::BaselineSettings;
use crate::pipelines::mental_average::{seeded_latents, SamplingSettings};
use crate::pipelines::DiffusionModel;
use crate::sampling::mode_guidance::ModeGuidance;
use crate::sampling::{sample, NoHooks};
use anyhow::Result;
use tch::Tensor;

/// One MGD3 prototype latent [1,C,H,W] guided toward `mode`, from noise seeded by `seed`.
pub fn mgd3(model: &DiffusionModel, sampling: &SamplingSettings, baselines: &BaselineSettings, mode: &Tensor, seed: u64) -> Result<Tensor> {
    let scheduler = sampling.scheduler(model)?;
    let (cond, uncond) = model.guidance_conditions(&sampling.prompt)?;
    let denoiser = model.guided(&cond, &uncond, sampling.guidance, sampling.guidance_interval, sampling.batch);
    let steps = (scheduler.timesteps().len() as f64 * baselines.mgd3_fraction).round() as usize;
    let guidance = ModeGuidance { scheduler: &scheduler, mode: mode.to_device(model.device), scale: baselines.mgd3_scale, steps };
    let noise = seeded_latents(model, 1, seed).to_device(model.device).to_kind(model.latent_kind());
    sample(&scheduler, noise, &mut |x, t| Ok(guidance.apply(t, x, denoiser.predict(x, t))), &mut NoHooks)
}
