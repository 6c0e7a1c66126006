//! Resumable training state in a folder (`files`): the parameters, the optimiser's moments and any extra tensors
//! (such as an EMA) as tensors, and the step and the settings as the record.
use super::files::{self as checkpoint_files, RECORD};
use crate::files::read_json;
use crate::optim::AdamW;
use crate::weights::{read_safetensors, Weights};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Serialize, Deserialize)]
struct Record<S> {
    step: usize,
    settings: S,
    /// The tensor file of this step (checkpoints written before it was recorded used one fixed name).
    #[serde(default = "legacy_tensors")]
    tensors: String,
}

fn legacy_tensors() -> String {
    "checkpoint.safetensors".into()
}

/// Where a training run starts: a checkpoint made with the same settings, or nothing (a fresh start).
pub struct Resume {
    pub step: usize,
    tensors: Option<HashMap<String, Tensor>>,
    source: String,
}

impl Resume {
    /// A fresh start (`source` names it in errors).
    pub fn fresh(source: &str) -> Self {
        Self { step: 0, tensors: None, source: source.to_string() }
    }

    /// Opens the checkpoint in `dir`, if one was completed there; one made with other settings (compared as their
    /// JSON, as the record keeps them) is refused.
    pub fn open(dir: &Path, settings: &impl Serialize) -> Result<Self> {
        Self::open_allowing(dir, settings, &[])
    }

    /// A training run's checkpoint: as `open`, except that the run's length (`steps`, a field of `settings`) may
    /// differ from the checkpoint's, so that a run can be resumed to train longer (its learning-rate schedule then
    /// runs to the new end from the step reached), or to end sooner, though not before that step.
    pub fn open_training(dir: &Path, settings: &impl Serialize, steps: usize) -> Result<Self> {
        let resume = Self::open_allowing(dir, settings, &["steps"])?;
        ensure!(resume.step <= steps, "{}: the checkpoint is at step {}, past --steps {steps}", dir.display(), resume.step);
        Ok(resume)
    }

    /// As `open`, but the settings named in `may_change` (top-level keys of their JSON) may differ from the
    /// checkpoint's.
    fn open_allowing(dir: &Path, settings: &impl Serialize, may_change: &[&str]) -> Result<Self> {
        let source = dir.display().to_string();
        if !dir.join(RECORD).is_file() {
            return Ok(Self::fresh(&source));
        }
        let record: Record<Value> = read_json(&dir.join(RECORD))?;
        let without = |value: &Value| {
            let mut value = value.clone();
            if let Some(fields) = value.as_object_mut() {
                fields.retain(|key, _| !may_change.contains(&key.as_str()));
            }
            value
        };
        if without(&record.settings) != without(&serde_json::to_value(settings)?) {
            bail!(
                "{source}: the checkpoint was made with other settings ({}); resume with the same ones or use a new folder",
                record.settings
            );
        }
        checkpoint_files::check_tensors_name(dir, &record.tensors, record.step, Some(&legacy_tensors()))?;
        let tensors = read_safetensors(&dir.join(&record.tensors))?.into_iter().collect();
        Ok(Self { step: record.step, tensors: Some(tensors), source })
    }

    /// The trainable weights saved under `prefix.`, or fresh ones (seed the RNG first) when starting anew.
    pub fn weights(&self, prefix: &str, device: Device) -> Weights {
        match &self.tensors {
            Some(tensors) => Weights::trainable(with_prefix(tensors, prefix), self.source.clone(), device, Kind::Float),
            None => Weights::initialise(format!("new {prefix}"), device, Kind::Float),
        }
    }

    /// Restores the optimiser's state when resuming.
    pub fn restore(&self, optimizer: &mut AdamW) -> Result<()> {
        match &self.tensors {
            Some(tensors) => optimizer.load_state(tensors, self.step as i32),
            None => Ok(()),
        }
    }

    /// A saved extra tensor (e.g. `ema.<param>`), when resuming.
    pub fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        match &self.tensors {
            Some(tensors) => Ok(Some(
                tensors.get(name).with_context(|| format!("{}: the checkpoint lacks `{name}`", self.source))?.shallow_clone(),
            )),
            None => Ok(None),
        }
    }
}

/// A training run after a step: what its checkpoint keeps (the randomness of every step comes from (seed, step),
/// so these tensors are the whole state).
pub struct TrainingState<'a> {
    /// Steps done, of `steps`.
    pub step: usize,
    pub steps: usize,
    /// The run's settings, as its record keeps them (a checkpoint made with others is refused).
    pub settings: &'a Value,
    /// The learned tensors by name (`token`, or `<module>.lora_A` / `.lora_B`).
    pub params: &'a [(String, Tensor)],
    pub optimizer: &'a AdamW,
}

/// Saves parameters (by their prefixed names), the optimiser's moments and `extra` tensors with the step and settings.
pub fn save<S: Serialize>(
    dir: &Path,
    step: usize,
    settings: &S,
    params: &[(String, Tensor)],
    optimizer: &AdamW,
    extra: Vec<(String, Tensor)>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (moments, _) = optimizer.state();
    let all: Vec<(String, Tensor)> = params.iter().map(|(n, t)| (n.clone(), t.detach())).chain(moments).chain(extra).collect();
    let named: Vec<(&str, &Tensor)> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
    checkpoint_files::save(dir, step, &named, &Record { step, settings, tensors: checkpoint_files::tensors_name(step) })
}

/// The tensors under `prefix.` with the prefix removed.
fn with_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    let prefix = format!("{prefix}.");
    tensors.iter().filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t.shallow_clone()))).collect()
}

/// Parameters of several weight sets under their prefixes (`unet.down_blocks...`), sharing the tensors.
pub fn prefixed_params(sets: &[(&str, &Weights)]) -> Vec<(String, Tensor)> {
    sets.iter().flat_map(|(prefix, w)| w.named_tensors().into_iter().map(move |(k, t)| (format!("{prefix}.{k}"), t))).collect()
}
