//! A sampling stage's checkpoint: after every DDIM step (`files`), the latents after the step and the recorded
//! trajectory frames as tensors, and the step and the per-step log as its record.
//!
//! Nothing random is drawn after the initial noise (DDIM with eta = 0; each aligned step starts Adam afresh), so
//! the latents and the log are a sampling stage's whole state: a resumed run computes exactly what the
//! uninterrupted one would.
use super::files as checkpoint_files;
use crate::files::read_json;
use crate::method::StepLog;
use crate::distributed::Ranks;
use crate::passes::Passes;
use crate::weights::read_safetensors;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// Where a sampling run starts: from noise at step 0, or where a stopped run left off (its checkpoint).
pub struct Start {
    pub first_step: usize,
    /// The latents about to be denoised at `first_step`, [K,C,H,W].
    pub latents: Tensor,
    /// The alignment log and trajectory frames of the steps already done, and the sampler's network passes in them.
    pub log: Vec<StepLog>,
    pub frames: Vec<(usize, i64, Tensor)>,
    pub unet_passes: u64,
    /// How many latents the run started with (K): `latents` holds fewer once a run of `--optimise` dropped the
    /// others (`AlignSettings::latents_after`).
    pub run_latents: i64,
}

impl Start {
    /// A run from the initial noise `init`.
    pub fn fresh(init: &Tensor) -> Self {
        Self { first_step: 0, latents: init.shallow_clone(), log: Vec::new(), frames: Vec::new(), unet_passes: 0, run_latents: init.size()[0] }
    }
}

/// What a rank needs of rank 0's `start` (`Some` there): all of it but the trajectory frames, which only rank 0
/// records.
pub fn share_start(ranks: Ranks, start: Option<Start>) -> Result<Start> {
    if ranks.size() == 1 {
        return start.context("rank 0 has no start");
    }
    #[derive(Serialize, Deserialize)]
    struct Header {
        first_step: usize,
        log: Vec<StepLog>,
        unet_passes: u64,
        run_latents: i64,
    }
    let header = start.as_ref().map(|s| Header { first_step: s.first_step, log: s.log.clone(), unet_passes: s.unet_passes, run_latents: s.run_latents });
    let mut bytes = header.map(|h| serde_json::to_vec(&h)).transpose()?.unwrap_or_default();
    ranks.broadcast(&mut bytes);
    let header: Header = serde_json::from_slice(&bytes)?;
    let latents = ranks.broadcast_tensor(start.as_ref().map(|s| &s.latents))?;
    let frames = start.map(|s| s.frames).unwrap_or_default();
    Ok(Start { first_step: header.first_step, latents, log: header.log, frames, unet_passes: header.unet_passes, run_latents: header.run_latents })
}

/// A run's state after a step: what a checkpoint keeps.
pub struct StepState<'a> {
    /// The first step not yet done, of `steps`.
    pub next_step: usize,
    pub steps: usize,
    pub latents: &'a Tensor,
    pub log: &'a [StepLog],
    pub frames: &'a [(usize, i64, Tensor)],
    /// The sampler's network passes so far.
    pub unet_passes: u64,
    /// How many latents the run started with.
    pub run_latents: i64,
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
    /// The sampler's network passes so far, and how many latents the run started with (both absent from checkpoints
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
/// against its tensor file and that step count here; `mental_average::check_start` checks the rest against the
/// run.
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
            // network passes per latent and step; per aligned step 2 encoder forward passes per latent (target, check),
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
