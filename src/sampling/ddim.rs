//! The DDIM sampling loop. Methods that steer sampling (DMA's alignment, trajectory recording) plug in as hooks.
use crate::schedulers::ddim::DdimScheduler;
use anyhow::{bail, Result};
use tch::Tensor;

/// Called around each step of the loop; both default to doing nothing.
pub trait StepHooks {
    /// Receives the latents about to be denoised at step `index` (timestep `timestep`) and returns the latents
    /// to denoise instead. DMA's alignment happens here.
    fn before_step(&mut self, _index: usize, _timestep: i64, latents: Tensor) -> Result<Tensor> {
        Ok(latents)
    }

    /// Sees the new latents and the scheduler's prediction of the clean sample after step `index`.
    fn after_step(&mut self, _index: usize, _timestep: i64, _latents: &Tensor, _pred_x0: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing: plain sampling.
pub struct NoHooks;
impl StepHooks for NoHooks {}

/// Runs the scheduler's timesteps from `latents` (pure noise) to the end. `denoise(x, t)` returns the model output
/// the scheduler expects (epsilon or v), already guided.
pub fn sample(
    scheduler: &DdimScheduler,
    latents: Tensor,
    denoise: &mut impl FnMut(&Tensor, i64) -> Result<Tensor>,
    hooks: &mut impl StepHooks,
) -> Result<Tensor> {
    sample_from(scheduler, 0, latents, denoise, hooks)
}

/// As `sample`, but from step `first` (latents noised to that step's timestep: image-to-image) to the end.
pub fn sample_from(
    scheduler: &DdimScheduler,
    first: usize,
    mut latents: Tensor,
    denoise: &mut impl FnMut(&Tensor, i64) -> Result<Tensor>,
    hooks: &mut impl StepHooks,
) -> Result<Tensor> {
    for (index, &timestep) in scheduler.timesteps().iter().enumerate().skip(first) {
        latents = hooks.before_step(index, timestep, latents)?;
        let output = denoise(&latents, timestep)?;
        let step = scheduler.step(&output, timestep, &latents);
        ensure_finite(&step.prev_sample, "latent", index, timestep)?;
        hooks.after_step(index, timestep, &step.prev_sample, &step.pred_original_sample)?;
        latents = step.prev_sample;
    }
    Ok(latents)
}

/// Fails, naming the step and the first latent affected, when any value of `x` [K,...] (one row per latent) is
/// NaN or infinite: a diverged run stops where it went wrong instead of writing black images.
pub fn ensure_finite(x: &Tensor, what: &str, index: usize, timestep: i64) -> Result<()> {
    let finite_rows = x.isfinite().flatten(1, -1).all_dim(1, false);
    if finite_rows.all().int64_value(&[]) == 1 {
        return Ok(());
    }
    let row = finite_rows.logical_not().to_kind(tch::Kind::Int64).argmax(0, false).int64_value(&[]);
    bail!("step {index} (timestep {timestep}): the {what} of latent {row} is not finite (NaN or Inf)")
}

/// Two sets of hooks run one after the other (e.g. alignment, then trajectory recording).
impl<A: StepHooks, B: StepHooks> StepHooks for (A, B) {
    fn before_step(&mut self, index: usize, timestep: i64, latents: Tensor) -> Result<Tensor> {
        let latents = self.0.before_step(index, timestep, latents)?;
        self.1.before_step(index, timestep, latents)
    }

    fn after_step(&mut self, index: usize, timestep: i64, latents: &Tensor, pred_x0: &Tensor) -> Result<()> {
        self.0.after_step(index, timestep, latents, pred_x0)?;
        self.1.after_step(index, timestep, latents, pred_x0)
    }
}

/// Keeps the predicted clean sample of the first few latents at every step, to show trajectories converging.
pub struct TrajectoryRecorder {
    pub latents: i64,
    /// (step, timestep, predicted x0 of the first `latents` latents) per step.
    pub frames: Vec<(usize, i64, Tensor)>,
}

impl StepHooks for TrajectoryRecorder {
    fn after_step(&mut self, index: usize, timestep: i64, _latents: &Tensor, pred_x0: &Tensor) -> Result<()> {
        let n = self.latents.min(pred_x0.size()[0]);
        self.frames.push((index, timestep, pred_x0.narrow(0, 0, n).detach().copy()));
        Ok(())
    }
}
