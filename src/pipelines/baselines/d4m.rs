//! D4M-style (Su et al. 2024): image-to-image from the samples' latent centre with the prompt. The centre is
//! noised to `strength` of the schedule with seeded noise, then guided DDIM finishes it.
use super::BaselineSettings;
use crate::pipelines::mental_average::{seeded_latents, SamplingSettings};
use crate::pipelines::DiffusionModel;
use crate::sampling::{sample_from, NoHooks};
use anyhow::Result;
use tch::Tensor;

/// The first of `steps` steps image-to-image runs at `strength`, as diffusers' img2img pipeline counts it.
pub fn first_step(steps: usize, strength: f64) -> usize {
    let noised = ((steps as f64 * strength) as usize).min(steps);
    steps - noised
}

/// One D4M prototype latent [1,C,H,W] from `centre`, its noise seeded by `seed`.
pub fn d4m(model: &DiffusionModel, sampling: &SamplingSettings, baselines: &BaselineSettings, centre: &Tensor, seed: u64) -> Result<Tensor> {
    let scheduler = sampling.scheduler(model)?;
    let first = first_step(scheduler.timesteps().len(), baselines.d4m_strength);
    let centre = centre.to_device(model.device).to_kind(model.latent_kind());
    let noise = seeded_latents(model, 1, seed).to_device(model.device).to_kind(model.latent_kind());
    let Some(&start) = scheduler.timesteps().get(first) else {
        return Ok(centre); // strength 0: nothing is redrawn
    };
    let (cond, uncond) = model.guidance_conditions(&sampling.prompt)?;
    let denoiser = model.guided(&cond, &uncond, baselines.d4m_guidance, None, sampling.batch);
    let noised = scheduler.add_noise(&centre, &noise, start);
    sample_from(&scheduler, first, noised, &mut |x, t| Ok(denoiser.predict(x, t)), &mut NoHooks)
}
