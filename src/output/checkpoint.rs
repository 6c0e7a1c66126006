//! A stopped run's files in its staging folder: the run's record (`checkpoint.json`: the command, its arguments
//! and the settings they resolved to), written with the first checkpoint, and one folder per expensive stage under
//! `checkpoints/` (`checkpoints/samples`, `checkpoints/mode-1/adapter`). A sampling stage keeps, after every DDIM
//! step (`checkpoint_files`), the latents after the step and the recorded trajectory frames as tensors, and the
//! step and the per-step log as its record.
//!
//! Nothing random is drawn after the initial noise (DDIM with eta = 0; each aligned step starts Adam afresh), so
//! the latents and the log are a sampling stage's whole state: a resumed run computes exactly what the
//! uninterrupted one would.
use crate::checkpoint_files;
use crate::files::read_json;
use crate::method::StepLog;
use crate::passes::Passes;
use crate::pipelines::mental_average::{Start, StepState};
use crate::weights::read_safetensors;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The run's record in its staging folder; its presence marks a run that can be resumed.
pub const RUN_RECORD: &str = "checkpoint.json";
/// The folder of the stages' checkpoints in the staging folder.
const STAGES: &str = "checkpoints";

/// The checkpoint folder of `stage` in the staging folder `staging`.
pub fn stage_dir(staging: &Path, stage: &str) -> PathBuf {
    staging.join(STAGES).join(stage)
}

/// Removes the run's record and every stage's checkpoint (when the run has finished).
pub fn remove_all(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging.join(STAGES));
    let _ = std::fs::remove_file(staging.join(RUN_RECORD));
}

#[derive(Serialize, Deserialize)]
struct Record {
    /// The first step not yet done, of `steps`.
    next_step: usize,
    steps: usize,
    tensors: String,
    log: Vec<StepLog>,
    /// (step, timestep) of each trajectory frame, stored as `frame<i>` tensors.
    frames: Vec<(usize, i64)>,
    /// The sampler's UNet passes so far, and how many latents the run started with (both absent from checkpoints
    /// written before passes were counted, when every run kept all its latents).
    #[serde(default)]
    unet_passes: Option<u64>,
    #[serde(default)]
    run_latents: Option<i64>,
}

/// Saves `state` into the stage folder `dir`, replacing its previous checkpoint.
pub fn save(dir: &Path, state: &StepState) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let frame_names: Vec<String> = (0..state.frames.len()).map(|i| format!("frame{i}")).collect();
    let mut tensors: Vec<(&str, &Tensor)> = vec![("latents", state.latents)];
    tensors.extend(frame_names.iter().zip(state.frames).map(|(n, (_, _, t))| (n.as_str(), t)));
    let frames = state.frames.iter().map(|(s, t, _)| (*s, *t)).collect();
    let tensors_name = checkpoint_files::tensors_name(state.next_step);
    let record = Record { next_step: state.next_step, steps: state.steps, tensors: tensors_name, log: state.log.to_vec(), frames, unet_passes: Some(state.unet_passes), run_latents: Some(state.run_latents) };
    checkpoint_files::save(dir, state.next_step, &tensors, &record)
}

/// The checkpoint in the stage folder `dir`, if it has one, for a run of `steps` steps. Its record is checked
/// against its tensor file and that step count here; `Start::check` checks the rest against the run.
pub fn load(dir: &Path, steps: usize) -> Result<Option<Start>> {
    let record_path = dir.join(checkpoint_files::RECORD);
    if !record_path.is_file() {
        return Ok(None);
    }
    let record: Record = read_json(&record_path)?;
    if record.steps != steps || record.next_step > steps {
        bail!(
            "the checkpoint record {} is at step {} of {} steps, but this run has {steps}: it is damaged or belongs to another run",
            record_path.display(),
            record.next_step,
            record.steps
        );
    }
    checkpoint_files::check_tensors_name(dir, &record.tensors, record.next_step, None)?;
    let path = dir.join(&record.tensors);
    let mut tensors: std::collections::HashMap<String, Tensor> =
        read_safetensors(&path).with_context(|| format!("the checkpoint {} is damaged", path.display()))?.into_iter().collect();
    let mut take = |name: &str| tensors.remove(name).with_context(|| format!("the checkpoint {} lacks `{name}`", path.display()));
    let latents = take("latents")?;
    let frames = record.frames.iter().enumerate().map(|(i, &(s, t))| Ok((s, t, take(&format!("frame{i}"))?))).collect::<Result<Vec<_>>>()?;
    let rows = latents.size().first().copied().unwrap_or(0);
    let mut log = record.log;
    let unet_passes = match record.unet_passes {
        Some(passes) => passes,
        None => {
            // Written before passes were counted, when every step sampled and optimised all of a run's latents: two
            // UNet passes per latent and step; per aligned step 2 encoder forward passes per latent (target, check),
            // and its iterations' forward and backward.
            for step in &mut log {
                let (k, iterations) = (rows as u64, (step.iterations_mean * rows as f64).round() as u64);
                step.passes = Passes { encoder_forward: 2 * k, encoder_backward: iterations, unet_forward: 0 };
            }
            2 * record.next_step as u64 * rows as u64
        }
    };
    let run_latents = record.run_latents.unwrap_or(rows);
    Ok(Some(Start { first_step: record.next_step, latents, log, frames, unet_passes, run_latents }))
}
