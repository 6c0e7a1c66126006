//! A run's stages kept in its staging folder (`output::checkpoint`), so `dma <command> --resume DIR` continues it:
//! a sampling stage after every DDIM step, an adapter's training every `TRAINING_EVERY` steps and at its last.
//! The run's record is written with the first checkpoint (a run that fails before leaves nothing to resume), and
//! Ctrl-C stops the run at the next checkpoint, once it is saved.
use super::interrupt::{self, Interrupted};
use anyhow::Result;
use dma::adapters::training::{AdapterTraining, TrainingState};
use dma::files::write_json;
use dma::output::checkpoint::{self, stage_dir, RUN_RECORD};
use dma::output::OutDir;
use dma::pipelines::checkpoints::Checkpoints;
use dma::pipelines::mental_average::{Start, StepState};
use dma::training::checkpoint::Resume;
use serde::Serialize;
use serde_json::{json, Value};

/// Adapter training steps between checkpoints: a step of SD 1.5 LoRA training is well under a second on a GPU,
/// so at most a minute or so is lost, and the files are small.
const TRAINING_EVERY: usize = 50;

pub struct RunCheckpoints<'a> {
    out: &'a mut OutDir,
    command: &'static str,
    /// The run's record: `command`, `args` (what `--resume` starts again from), the settings they resolved to, and
    /// the command line (`argv`).
    record: Value,
    recorded: bool,
}

impl<'a> RunCheckpoints<'a> {
    /// Checkpoints of a `dma <command>` run with arguments `args`, which resolved to `settings`, into `out`'s
    /// staging folder.
    pub fn new(out: &'a mut OutDir, command: &'static str, args: &impl Serialize, settings: &Value) -> Self {
        let record = json!({ "command": command, "args": args, "settings": settings, "argv": std::env::args().collect::<Vec<_>>() });
        let recorded = out.staging().join(RUN_RECORD).is_file();
        Self { out, command, record, recorded }
    }

    /// The command whose run this is.
    pub fn command(&self) -> &'static str {
        self.command
    }

    /// Writes the run's record once, and from then on keeps the staging folder when the run fails.
    fn record_run(&mut self) -> Result<()> {
        if !self.recorded {
            write_json(&self.out.staging().join(RUN_RECORD), &self.record)?;
            self.out.keep_on_failure();
            self.recorded = true;
        }
        Ok(())
    }

    /// Stops the run when Ctrl-C was pressed and `stage` has more to do.
    fn stop_if_asked(&self, more_to_do: bool, at: String) -> Result<()> {
        if interrupt::requested() && more_to_do {
            return Err(Interrupted { at, resume: format!("continue with `dma {} --resume {}`", self.command, self.out.target().display()) }.into());
        }
        Ok(())
    }

    /// `error`, saying where the last checkpoint is kept when there is one (a Ctrl-C already says how to resume).
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        if self.recorded && error.downcast_ref::<Interrupted>().is_none() {
            error.context(format!("the last checkpoint is kept in {}; continue with `dma {} --resume {}`", self.out.staging().display(), self.command, self.out.target().display()))
        } else {
            error
        }
    }
}

impl Checkpoints for RunCheckpoints<'_> {
    fn sampling_start(&self, stage: &str, steps: usize) -> Result<Option<Start>> {
        checkpoint::load(&stage_dir(self.out.staging(), stage), steps)
    }

    fn after_sampling_step(&mut self, stage: &str, state: StepState) -> Result<()> {
        self.record_run()?;
        checkpoint::save(&stage_dir(self.out.staging(), stage), &state)?;
        self.stop_if_asked(state.next_step < state.steps, format!("step {} of {} of {stage}", state.next_step, state.steps))
    }

    fn training_start(&self, stage: &str, settings: &AdapterTraining) -> Result<Resume> {
        Resume::open(&stage_dir(self.out.staging(), stage), settings)
    }

    fn after_training_step(&mut self, stage: &str, state: &TrainingState) -> Result<()> {
        let last = state.step == state.settings.steps;
        if state.step % TRAINING_EVERY == 0 || last || interrupt::requested() {
            self.record_run()?;
            let dir = stage_dir(self.out.staging(), stage);
            dma::training::checkpoint::save(&dir, state.step, state.settings, state.params, state.optimizer, Vec::new())?;
        }
        self.stop_if_asked(!last, format!("training step {} of {} of {stage}", state.step, state.settings.steps))
    }
}
