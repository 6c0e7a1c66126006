//! Where a model comes from: a diffusers folder, a Hugging Face repo id in the local cache, or a single-file
//! checkpoint. Resolution only finds files; it loads nothing.
use crate::hub::hf_cache_snapshot;
use crate::weights::TORCH_EXTENSIONS;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A folder in diffusers layout (model_index.json, unet/, text_encoder/, tokenizer/, vae/, scheduler/).
    Folder(PathBuf),
    /// One `.safetensors` or PyTorch checkpoint file (`.ckpt`, ...) in the original LDM key layout.
    SingleFile(PathBuf),
}

impl ModelSource {
    /// Resolves what the user gave to `--model`: an existing path, or else a repo id such as
    /// `stable-diffusion-v1-5/stable-diffusion-v1-5` looked up offline in the Hugging Face cache.
    pub fn resolve(spec: &str) -> Result<Self> {
        // Absolute, so run.json names the model unambiguously.
        let path = &std::fs::canonicalize(spec).unwrap_or_else(|_| PathBuf::from(spec));
        if path.is_dir() {
            return Ok(Self::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if extension == "safetensors" || TORCH_EXTENSIONS.contains(&extension) {
                return Ok(Self::SingleFile(path.to_path_buf()));
            }
            bail!("{spec}: a single-file checkpoint must be a .safetensors or PyTorch (.ckpt, .pt, .pth, .bin) file");
        }
        if looks_like_repo_id(spec) {
            return hf_cache_snapshot(spec).map(Self::Folder);
        }
        bail!("{spec}: no such file or folder")
    }

    /// The path a run records as the model's identity.
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder(p) | Self::SingleFile(p) => p,
        }
    }
}

fn looks_like_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}
