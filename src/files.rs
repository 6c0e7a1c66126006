//! Reading configs and writing outputs safely: every file is written under a temporary name and renamed, so a
//! crash or a full disk never leaves a half-written file behind.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Reads a JSON file into `T`, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid: wrong or missing fields", path.display()))
}

/// Reads `key` of a JSON file into `T`, or the whole file when it has no such key: a CLIP model's config.json
/// nests each tower's config (`text_config`, `vision_config`), a tower's own config.json is flat.
pub fn read_json_section<T: serde::de::DeserializeOwned>(path: &Path, key: &str, what: &str) -> Result<T> {
    let mut json: serde_json::Value = read_json(path)?;
    if let Some(section) = json.get_mut(key) {
        json = section.take();
    }
    serde_json::from_value(json).with_context(|| format!("{} is not {what}", path.display()))
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = temp_file_in(dir)?;
    tmp.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    persist(tmp, path)
}

/// Gives the finished temporary file `tmp` its name `path`: its data reaches the disk first and the rename after,
/// so after a crash or a power cut `path` is the old file or the whole new one, never an empty or partial one (a
/// checkpoint's record must not name tensors that were still in the page cache).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file().sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The rename itself is durable once the folder is synced; not every file system lets a folder be opened.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// A temporary file beside the final one, readable by all like an ordinary new file (tempfile's default is 0600).
pub fn temp_file_in(dir: &Path) -> Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    builder.tempfile_in(dir).with_context(|| format!("cannot write in {}", dir.display()))
}

pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}
