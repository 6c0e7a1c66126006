//! A training checkpoint: named tensors in one safetensors file plus a JSON record, both written atomically
//! (the JSON last, so a checkpoint whose JSON exists is complete).
use crate::files::{read_json, write_json};
use crate::weights::{read_safetensors, write_safetensors};
use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

const TENSORS: &str = "checkpoint.safetensors";
const RECORD: &str = "checkpoint.json";

pub fn save(dir: &Path, tensors: &[(String, Tensor)], record: &impl Serialize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&dir.join(TENSORS), &named)?;
    write_json(&dir.join(RECORD), record)
}

/// The checkpoint in `dir`, if one was completed there.
pub fn load<R: DeserializeOwned>(dir: &Path) -> Result<Option<(HashMap<String, Tensor>, R)>> {
    if !dir.join(RECORD).is_file() {
        return Ok(None);
    }
    let record = read_json(&dir.join(RECORD))?;
    let tensors = read_safetensors(&dir.join(TENSORS))?.into_iter().collect();
    Ok(Some((tensors, record)))
}

/// The tensors under `prefix.` with the prefix removed.
pub fn with_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    let prefix = format!("{prefix}.");
    tensors.iter().filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t.shallow_clone()))).collect()
}
