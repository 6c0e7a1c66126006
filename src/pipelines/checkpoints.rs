//! Where a long pipeline keeps the work of its expensive stages, so that a stopped run picks up where it was and
//! computes exactly what it would have computed uninterrupted: a sampling stage's state after every DDIM step, an
//! adapter's training state. The pipeline names its stages ("samples", "mode-1/adapter"); the cheap work between
//! them (decoding, clustering, scoring) is deterministic and simply done again. Pipelines see only this trait; the
//! command line keeps the stages in the run's folder, and `NoCheckpoints` keeps nothing.
use super::mental_average::{Start, StepState};
use crate::adapters::training::{AdapterTraining, TrainingState};
use crate::training::checkpoint::Resume;
use anyhow::Result;

pub trait Checkpoints {
    /// The saved state of sampling stage `stage` of `steps` steps, if it has one.
    fn sampling_start(&self, stage: &str, steps: usize) -> Result<Option<Start>>;
    /// Shown the state after every DDIM step of `stage`; an error stops the run (e.g. on Ctrl-C).
    fn after_sampling_step(&mut self, stage: &str, state: StepState) -> Result<()>;
    /// Where adapter training `stage` starts: its saved state, or a fresh start.
    fn training_start(&self, stage: &str, settings: &AdapterTraining) -> Result<Resume>;
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
    fn training_start(&self, stage: &str, _: &AdapterTraining) -> Result<Resume> {
        Ok(Resume::fresh(stage))
    }
    fn after_training_step(&mut self, _: &str, _: &TrainingState) -> Result<()> {
        Ok(())
    }
}
