//! The embedded models travel inside the `dma` binary (about 15 MB: models/embedded/ with the DiT in dit/, without
//! the training logs, listed by build.rs), so an installed or copied binary runs without the source tree. The loaders read folders,
//! so on first use the files are written once into a folder named by their content hash in the cache
//! (`$DMA_CACHE`, else `~/.cache/dma`, else the system's temporary folder), whole or not at all.
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// `FILES: &[(&str, &[u8])]`: each file's path inside models/embedded and its bytes.
include!(concat!(env!("OUT_DIR"), "/embedded_files.rs"));

/// The folder holding the embedded model's files, written there first if needed; found once per process (the
/// model and its CLIP both ask, and hashing the files is the cost).
pub fn embedded_model_dir() -> Result<PathBuf> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = FOUND.get() {
        return Ok(dir.clone());
    }
    let dir = find_or_unpack()?;
    Ok(FOUND.get_or_init(|| dir).clone())
}

fn find_or_unpack() -> Result<PathBuf> {
    let mut hasher = Sha256::new();
    for (name, bytes) in FILES {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let hash: String = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let name = format!("embedded-model-{hash}");
    let mut errors = Vec::new();
    for root in cache_roots() {
        let dir = root.join(&name);
        if dir.join(COMPLETE).is_file() {
            return Ok(dir);
        }
        match unpack_into(&root, &dir) {
            Ok(()) => return Ok(dir),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    anyhow::bail!("cannot write the embedded model's files anywhere: {}", errors.join("; "))
}

/// Marks a folder whose files were all written.
const COMPLETE: &str = ".complete";

/// Where the files may go, in order of preference.
fn cache_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(cache) = std::env::var_os("DMA_CACHE").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(cache));
    } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(home).join(".cache").join("dma"));
    }
    roots.push(std::env::temp_dir().join("dma"));
    roots
}

/// Writes every file into a temporary folder under `root`, then renames it to `dir` (another process may have
/// done the same meanwhile: its folder is as good).
fn unpack_into(root: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = tempfile::Builder::new().prefix(".embedded-model-").tempdir_in(root).with_context(|| format!("cannot write in {}", root.display()))?;
    for (name, bytes) in FILES {
        let path = tmp.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::write(tmp.path().join(COMPLETE), b"").with_context(|| format!("cannot write in {}", tmp.path().display()))?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(COMPLETE).is_file() {
            return Err(e).with_context(|| format!("cannot create {}", dir.display()));
        }
    }
    Ok(())
}
