//! How every checkpoint reaches the disk (a training run's, a sampling stage's): its tensors in a file named by its
//! step, then a JSON record naming that file, both atomic and the record last, then the previous step's tensor
//! file removed. A run killed at any moment leaves a record that names a complete tensor file of its own step.
use crate::files::{read_json, write_json};
use crate::weights::write_safetensors;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use tch::Tensor;

/// A checkpoint's record, beside its tensor file (a run's own record is `run::RUN_RECORD`).
pub const RECORD: &str = "checkpoint.json";

/// The tensor file of `step`; the record saved with it must name it in its `tensors` field.
pub fn tensors_name(step: usize) -> String {
    format!("checkpoint-step{step}.safetensors")
}

/// Refuses a record whose tensor file is not the one its step's checkpoint writes (`legacy` aside: the one fixed
/// name older checkpoints used): a record names a file beside it, never a path elsewhere, and never another step's.
pub fn check_tensors_name(dir: &Path, named: &str, step: usize, legacy: Option<&str>) -> Result<()> {
    if named != tensors_name(step) && Some(named) != legacy {
        anyhow::bail!(
            "the checkpoint record {} is damaged: it is at step {step} but names the tensor file `{named}` (expected `{}`)",
            dir.join(RECORD).display(),
            tensors_name(step)
        );
    }
    Ok(())
}

/// The tensor file the record in `dir` names, if there is a record.
fn recorded_tensors(dir: &Path) -> Option<String> {
    read_json::<serde_json::Value>(&dir.join(RECORD)).ok()?.get("tensors")?.as_str().map(String::from)
}

/// Saves `tensors` of `step` and then `record`, replacing the checkpoint in `dir`.
pub fn save(dir: &Path, step: usize, tensors: &[(&str, &Tensor)], record: &impl Serialize) -> Result<()> {
    let name = tensors_name(step);
    write_safetensors(&dir.join(&name), tensors)?;
    let previous = recorded_tensors(dir).filter(|p| *p != name);
    write_json(&dir.join(RECORD), record)?;
    if let Some(previous) = previous {
        let _ = std::fs::remove_file(dir.join(previous));
    }
    Ok(())
}
