//! A command's stopped run in its staging folder, so `dma <command> --resume DIR` continues it: the run's record
//! (`resume.json`: the command, its arguments, the settings they resolved to and the command line), written with
//! the first checkpoint, and one folder per expensive stage under `checkpoints/` (`checkpoints/samples`,
//! `checkpoints/mode-1/adapter`): a sampling stage after every DDIM step, an adapter's training every
//! `TRAINING_EVERY` steps and at its last. A run that fails before its first checkpoint leaves nothing to resume.
//!
//! A stop asked for (Ctrl-C: `stop::request_stop`) ends the run at its next checkpoint, once that is saved.
use super::sampling::{self, Start, StepState};
use super::training::{self, Resume, TrainingState};
use super::Checkpoints;
use crate::distributed::Parcel;
use crate::files::{write_atomic, write_json};
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use crate::stop::{stop_requested, Interrupted};

/// The run's record in its staging folder; its presence marks a run that can be resumed.
pub const RUN_RECORD: &str = "resume.json";
/// The name the run's record had before a stage's record took `checkpoint.json` alone; still read.
const LEGACY_RUN_RECORD: &str = "checkpoint.json";
/// The folder of the stages' checkpoints in the staging folder.
const STAGES: &str = "checkpoints";

/// A finished item's outcome in its stage's folder (`distributed::items`).
const ITEM_OUTCOME: &str = "outcome.safetensors";

/// Adapter training steps between checkpoints: a step of SD 1.5 LoRA training is well under a second on a GPU,
/// so at most a minute or so is lost, and the files are small.
const TRAINING_EVERY: usize = 50;

/// The run's record in the staging folder `staging`: the one there (of this version or an earlier one), else where
/// this version writes it.
pub fn run_record(staging: &Path) -> PathBuf {
    let legacy = staging.join(LEGACY_RUN_RECORD);
    if !staging.join(RUN_RECORD).is_file() && legacy.is_file() {
        return legacy;
    }
    staging.join(RUN_RECORD)
}

/// The checkpoint folder of `stage` in the staging folder `staging`.
pub fn stage_dir(staging: &Path, stage: &str) -> PathBuf {
    staging.join(STAGES).join(stage)
}

/// Removes the run's record and every stage's checkpoint (when the run has finished).
pub fn remove_all(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging.join(STAGES));
    let _ = std::fs::remove_file(run_record(staging));
}

/// How to continue the `dma <command>` run whose folder is `target`.
pub fn resume_hint(command: &str, target: &Path) -> String {
    format!("continue with `dma {command} --resume {}`", target.display())
}

/// The checkpoints of one `dma <command>` run, in its staging folder.
pub struct RunCheckpoints {
    staging: PathBuf,
    /// The command and the run's output folder, and the stop at a checkpoint when one is asked for.
    stop: StopOnly,
    /// The run's record: `command`, `args` (what `--resume` starts again from), the settings they resolved to, and
    /// the command line (`argv`).
    record: Value,
    recorded: bool,
}

impl RunCheckpoints {
    /// Checkpoints of a `dma <command>` run with arguments `args`, which resolved to `settings`, into the staging
    /// folder `staging` of the output folder `target`.
    pub fn new(staging: &Path, target: &Path, command: &'static str, args: &impl Serialize, settings: &Value) -> Self {
        let record = json!({ "command": command, "args": args, "settings": settings, "argv": std::env::args().collect::<Vec<_>>() });
        let recorded = run_record(staging).is_file();
        Self { staging: staging.to_path_buf(), stop: StopOnly::new(command, target), record, recorded }
    }

    /// The command whose run this is.
    pub fn command(&self) -> &'static str {
        self.stop.command
    }

    /// Writes the run's record once; from then on the staging folder outlives a failure (`OutDir`).
    pub fn record_run(&mut self) -> Result<()> {
        if !self.recorded {
            write_json(&self.staging.join(RUN_RECORD), &self.record)?;
            self.recorded = true;
        }
        Ok(())
    }

    /// The outcome of item `stage` when a run before this one finished it (`save_item`).
    pub fn finished_item(&self, stage: &str) -> Result<Option<Parcel>> {
        let path = stage_dir(&self.staging, stage).join(ITEM_OUTCOME);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(Parcel::from_bytes(&bytes, &path.display().to_string())?))
    }

    /// Keeps the outcome of the finished item `stage` (its own stages' checkpoints go: the outcome replaces them).
    pub fn save_item(&mut self, stage: &str, outcome: &Parcel) -> Result<()> {
        self.record_run()?;
        let dir = stage_dir(&self.staging, stage);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join(ITEM_OUTCOME), &outcome.to_bytes()?)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name() != ITEM_OUTCOME {
                let _ = std::fs::remove_dir_all(entry.path()).or_else(|_| std::fs::remove_file(entry.path()));
            }
        }
        Ok(())
    }

    /// `error`, saying where the last checkpoint is kept when there is one (a Ctrl-C already says how to resume).
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        if self.recorded && error.downcast_ref::<Interrupted>().is_none() {
            error.context(format!("the last checkpoint is kept in {}; {}", self.staging.display(), resume_hint(self.stop.command, &self.stop.target)))
        } else {
            error
        }
    }
}

impl Checkpoints for RunCheckpoints {
    fn sampling_start(&self, stage: &str, steps: usize) -> Result<Option<Start>> {
        sampling::load(&stage_dir(&self.staging, stage), steps)
    }

    fn after_sampling_step(&mut self, stage: &str, state: StepState) -> Result<()> {
        self.record_run()?;
        sampling::save(&stage_dir(&self.staging, stage), &state)?;
        self.stop.stop_if_asked(state.next_step < state.steps, format!("step {} of {} of {stage}", state.next_step, state.steps))
    }

    fn training_start(&self, stage: &str, settings: &Value) -> Result<Resume> {
        Resume::open(&stage_dir(&self.staging, stage), settings)
    }

    fn after_training_step(&mut self, stage: &str, state: &TrainingState) -> Result<()> {
        let last = state.step == state.steps;
        if state.step % TRAINING_EVERY == 0 || last || stop_requested() {
            self.record_run()?;
            training::save(&stage_dir(&self.staging, stage), state.step, state.settings, state.params, state.optimizer, Vec::new())?;
        }
        self.stop.stop_if_asked(!last, format!("training step {} of {} of {stage}", state.step, state.steps))
    }
}

/// What an item computed by one of several ranks keeps: nothing (its outcome reaches rank 0 when it is finished,
/// `distributed::items`), but it stops when a stop is asked for, like a run's checkpoints.
pub struct StopOnly {
    command: &'static str,
    /// The run's output folder, for the message on how to resume.
    target: PathBuf,
}

impl StopOnly {
    pub fn new(command: &'static str, target: &Path) -> Self {
        Self { command, target: target.to_path_buf() }
    }

    /// Stops the run when a stop was asked for and the stage has more to do.
    fn stop_if_asked(&self, more_to_do: bool, at: String) -> Result<()> {
        if stop_requested() && more_to_do {
            return Err(Interrupted { at, resume: resume_hint(self.command, &self.target) }.into());
        }
        Ok(())
    }
}

impl Checkpoints for StopOnly {
    fn sampling_start(&self, _: &str, _: usize) -> Result<Option<Start>> {
        Ok(None)
    }
    fn after_sampling_step(&mut self, stage: &str, state: StepState) -> Result<()> {
        self.stop_if_asked(state.next_step < state.steps, format!("step {} of {} of {stage}", state.next_step, state.steps))
    }
    fn training_start(&self, stage: &str, _: &Value) -> Result<Resume> {
        Ok(Resume::fresh(stage))
    }
    fn after_training_step(&mut self, stage: &str, state: &TrainingState) -> Result<()> {
        self.stop_if_asked(state.step < state.steps, format!("training step {} of {} of {stage}", state.step, state.steps))
    }
}
