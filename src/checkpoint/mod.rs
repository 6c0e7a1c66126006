//! Checkpoints, all in one place: where a long run keeps the work of its expensive stages, so that a stopped run
//! picks up where it was and computes exactly what it would have computed uninterrupted.
//!
//! - `files`: how any checkpoint reaches the disk (a tensor file per step, then the record naming it; atomic).
//! - `sampling`: a sampling stage's state after every DDIM step (latents, trajectory frames, the alignment log).
//! - `training`: a training run's state (parameters, optimiser moments), for adapters and the embedded model.
//! - `run`: a command's stopped run in its staging folder (the run's record, one folder per stage), and the Ctrl-C
//!   stop at the next checkpoint.
//!
//! Pipelines name their stages ("samples", "mode-1/adapter") and see only the `Checkpoints` trait; the cheap work
//! between stages (decoding, clustering, scoring) is deterministic and simply done again. `NoCheckpoints` keeps
//! nothing.
pub mod files;
pub mod run;
pub mod sampling;
pub mod training;

use anyhow::Result;
use sampling::{Start, StepState};
use serde_json::Value;
use training::{Resume, TrainingState};

pub trait Checkpoints {
    /// The saved state of sampling stage `stage` of `steps` steps, if it has one.
    fn sampling_start(&self, stage: &str, steps: usize) -> Result<Option<Start>>;
    /// Shown the state after every DDIM step of `stage`; an error stops the run (e.g. on Ctrl-C).
    fn after_sampling_step(&mut self, stage: &str, state: StepState) -> Result<()>;
    /// Where training stage `stage` with `settings` starts: its saved state, or a fresh start.
    fn training_start(&self, stage: &str, settings: &Value) -> Result<Resume>;
    /// Shown the state after every training step of `stage`.
    fn after_training_step(&mut self, stage: &str, state: &TrainingState) -> Result<()>;
}

/// Keeps nothing: every stage starts afresh.
pub struct NoCheckpoints;

impl Checkpoints for NoCheckpoints {
    fn sampling_start(&self, _: &str, _: usize) -> Result<Option<Start>> {
        Ok(None)
    }
    fn after_sampling_step(&mut self, _: &str, _: StepState) -> Result<()> {
        Ok(())
    }
    fn training_start(&self, stage: &str, _: &Value) -> Result<Resume> {
        Ok(Resume::fresh(stage))
    }
    fn after_training_step(&mut self, _: &str, _: &TrainingState) -> Result<()> {
        Ok(())
    }
}
