//! A sampling run's checkpoint in its staging folder, written after every DDIM step (`checkpoint_files`): the
//! latents after the step and the recorded trajectory frames as tensors, and a record of the step, the per-step
//! log and the run's arguments.
//!
//! Nothing random is drawn after the initial noise (DDIM with eta = 0; each aligned step starts Adam afresh), so
//! the latents and the log are the whole state: a resumed run computes exactly what the uninterrupted one would.
use crate::checkpoint_files;
use crate::files::read_json;
use crate::method::StepLog;
use crate::pipelines::mental_average::{Start, StepState};
use crate::weights::read_safetensors;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use tch::Tensor;

pub use checkpoint_files::{remove, RECORD};

#[derive(Serialize, Deserialize)]
struct Record {
    /// The first step not yet done.
    next_step: usize,
    tensors: String,
    log: Vec<StepLog>,
    /// (step, timestep) of each trajectory frame, stored as `frame<i>` tensors.
    frames: Vec<(usize, i64)>,
    /// What the command needs to continue, as it chose to record it (its arguments and resolved settings).
    run: Value,
}

/// Saves `state` with `run` into `dir`, replacing the previous checkpoint.
pub fn save(dir: &Path, state: &StepState, run: &Value) -> Result<()> {
    let frame_names: Vec<String> = (0..state.frames.len()).map(|i| format!("frame{i}")).collect();
    let mut tensors: Vec<(&str, &Tensor)> = vec![("latents", state.latents)];
    tensors.extend(frame_names.iter().zip(state.frames).map(|(n, (_, _, t))| (n.as_str(), t)));
    let frames = state.frames.iter().map(|(s, t, _)| (*s, *t)).collect();
    let tensors_name = checkpoint_files::tensors_name(state.next_step);
    let record = Record { next_step: state.next_step, tensors: tensors_name, log: state.log.to_vec(), frames, run: run.clone() };
    checkpoint_files::save(dir, state.next_step, &tensors, &record)
}

/// The checkpoint in `dir`: where to start and the run it belongs to.
pub fn load(dir: &Path) -> Result<(Start, Value)> {
    let record: Record = read_json(&dir.join(RECORD))?;
    let path = dir.join(&record.tensors);
    let mut tensors: std::collections::HashMap<String, Tensor> =
        read_safetensors(&path).with_context(|| format!("the checkpoint {} is damaged", path.display()))?.into_iter().collect();
    let mut take = |name: &str| tensors.remove(name).with_context(|| format!("the checkpoint {} lacks `{name}`", path.display()));
    let latents = take("latents")?;
    let frames = record.frames.iter().enumerate().map(|(i, &(s, t))| Ok((s, t, take(&format!("frame{i}"))?))).collect::<Result<Vec<_>>>()?;
    if record.log.len() > record.next_step {
        bail!("the checkpoint {} logs more steps than it has done", dir.join(RECORD).display());
    }
    Ok((Start { first_step: record.next_step, latents, log: record.log, frames }, record.run))
}
