//! The Hugging Face layouts a model's files come in: the local hub cache (`models--org--name/snapshots/<rev>`) and
//! a component's weight files, single or sharded, as diffusers and transformers save them. Only finds files; both
//! the diffusion model loaders and the judges (BLIP, ImageReward) resolve through it.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The hub cache folder, as huggingface_hub finds it: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
fn hf_hub_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("huggingface").join("hub"))
}

/// The snapshot folder of `repo_id` at the revision `refs/main` points to.
pub fn hf_cache_snapshot(repo_id: &str) -> Result<PathBuf> {
    let cache = hf_hub_cache().context("cannot locate the Hugging Face cache (set HF_HOME or HF_HUB_CACHE)")?;
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    if !repo.is_dir() {
        bail!(
            "--model {repo_id}: not a local path, and not in the Hugging Face cache ({} does not exist); \
             this tool reads the cache offline, so download the model first (e.g. `hf download {repo_id}`)",
            repo.display()
        );
    }
    let refs_main = repo.join("refs").join("main");
    let revision = std::fs::read_to_string(&refs_main)
        .with_context(|| format!("{repo_id}: cannot read {}", refs_main.display()))?;
    let snapshot = repo.join("snapshots").join(revision.trim());
    if !snapshot.is_dir() {
        bail!("{repo_id}: the cache names revision {} but {} is missing", revision.trim(), snapshot.display());
    }
    Ok(snapshot)
}

/// The weight files of one component folder (e.g. `unet/`), preferring safetensors in full precision, then the
/// fp16 variant, then PyTorch's .bin files (read as tensors only: `weights::torch_file`); sharded checkpoints are
/// listed through their index. `stem` is the safetensors name (`diffusion_pytorch_model`, or transformers'
/// `model`, whose .bin is `pytorch_model.bin`).
pub fn component_weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let bin_stem = if stem == "model" { "pytorch_model" } else { stem };
    for (stem, extension) in [(stem, "safetensors"), (bin_stem, "bin")] {
        for variant in ["", ".fp16"] {
            let single = dir.join(format!("{stem}{variant}.{extension}"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{stem}{variant}.{extension}.index.json"));
            if index.is_file() {
                return sharded_files(&index);
            }
        }
    }
    bail!("{}: no weights found (expected {stem}.safetensors or {bin_stem}.bin)", dir.display())
}

fn sharded_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json["weight_map"].as_object().with_context(|| format!("{}: no weight_map", index.display()))?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
