//! Sampling loops, k-diffusion style: a plain function of (denoiser, latents, schedule) with per-step hooks.
pub mod ddim;
pub mod guidance;
pub mod mode_guidance;

pub use ddim::{ensure_finite, sample, sample_from, NoHooks, StepHooks, TrajectoryRecorder};
pub use guidance::GuidedDenoiser;
