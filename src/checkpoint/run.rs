//! A command's stopped run in its staging folder, so `dma <command> --resume DIR` continues it: the run's record
//! (`resume.json`: the command, its arguments, the settings they resolved to and the command line), written with
//! the first checkpoint, and one folder per expensive stage under `checkpoints/` (`checkpoints/samples`,
//! `checkpoints/mode-1/adapter`): a sampling stage after every DDIM step, an adapter's training every
//! `TRAINING_EVERY` steps and at its last. A run that fails before its first checkpoint leaves nothing to resume.
//!
//! A stop asked for (Ctrl-C: `request_stop`) ends the run at its next checkpoint, once that is saved.
use super::sampling::{self, Start, StepState};
use super::training::{self, Resume, TrainingState};
use super::Checkpoints;
use crate::files::write_json;
use anyhow::Result;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The run's record in its staging folder; its presence marks a run that can be resumed.
pub const RUN_RECORD: &str = "resume.json";
/// The name the run's record had before a stage's record took `checkpoint.json` alone; still read.
const LEGACY_RUN_RECORD: &str = "checkpoint.json";
/// The folder of the stages' checkpoints in the staging folder.
const STAGES: &str = "checkpoints";

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

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every run of this process to stop at its next checkpoint; true when that had been asked already.
pub fn request_stop() -> bool {
    STOP.swap(true, Ordering::SeqCst)
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The error a run stopped on request ends with; `main` exits with 130 (128 + SIGINT) on it.
#[derive(Debug, thiserror::Error)]
#[error("stopped by Ctrl-C after {at}; {resume}")]
pub struct Interrupted {
    /// Where the run stopped ("step 3 of 20 of the mental average").
    pub at: String,
    /// How to continue it.
    pub resume: String,
}

impl Interrupted {
    /// The exit status of a run stopped so (128 + SIGINT, as shells report it).
    pub const STATUS: i32 = 130;
}

/// How to continue the `dma <command>` run whose folder is `target`.
pub fn resume_hint(command: &str, target: &Path) -> String {
    format!("continue with `dma {command} --resume {}`", target.display())
}

/// The checkpoints of one `dma <command>` run, in its staging folder.
pub struct RunCheckpoints {
    staging: PathBuf,
    target: PathBuf,
    command: &'static str,
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
        Self { staging: staging.to_path_buf(), target: target.to_path_buf(), command, record, recorded }
    }

    /// The command whose run this is.
    pub fn command(&self) -> &'static str {
        self.command
    }

    /// Writes the run's record once; from then on the staging folder outlives a failure (`OutDir`).
    fn record_run(&mut self) -> Result<()> {
        if !self.recorded {
            write_json(&self.staging.join(RUN_RECORD), &self.record)?;
            self.recorded = true;
        }
        Ok(())
    }

    /// Stops the run when a stop was asked for and `stage` has more to do.
    fn stop_if_asked(&self, more_to_do: bool, at: String) -> Result<()> {
        if stop_requested() && more_to_do {
            return Err(Interrupted { at, resume: resume_hint(self.command, &self.target) }.into());
        }
        Ok(())
    }

    /// `error`, saying where the last checkpoint is kept when there is one (a Ctrl-C already says how to resume).
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        if self.recorded && error.downcast_ref::<Interrupted>().is_none() {
            error.context(format!("the last checkpoint is kept in {}; {}", self.staging.display(), resume_hint(self.command, &self.target)))
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
        self.stop_if_asked(state.next_step < state.steps, format!("step {} of {} of {stage}", state.next_step, state.steps))
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
        self.stop_if_asked(!last, format!("training step {} of {} of {stage}", state.step, state.steps))
    }
}
