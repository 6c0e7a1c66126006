//! An output folder that appears whole or not at all: files go to a hidden staging folder beside it, which is
//! renamed into place when the run succeeds and removed when it fails.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct OutDir {
    target: PathBuf,
    staging: PathBuf,
    finished: bool,
}

impl OutDir {
    /// Refuses an --out that already holds files (a finished run is never overwritten), and checks it can be
    /// written by creating the staging folder now, before any long work.
    pub fn create(target: &Path) -> Result<Self> {
        if target.exists() {
            if !target.is_dir() {
                bail!("--out {}: exists and is not a folder", target.display());
            }
            let mut entries = std::fs::read_dir(target).with_context(|| format!("--out {}: cannot read", target.display()))?;
            if entries.next().is_some() {
                bail!("--out {}: the folder is not empty; choose a new folder so no earlier result is overwritten", target.display());
            }
        }
        let name = target.file_name().with_context(|| format!("--out {}: not a folder name", target.display()))?;
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).with_context(|| format!("--out {}: cannot create {}", target.display(), parent.display()))?;
        let staging = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        std::fs::create_dir(&staging).with_context(|| format!("--out {}: cannot write in {}", target.display(), parent.display()))?;
        Ok(Self { target: target.to_path_buf(), staging, finished: false })
    }

    /// Where to write a file named `name` during the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// The final folder.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the finished outputs into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.target.is_dir() {
            // Checked empty at creation; remove_dir fails (safely) if something appeared since.
            std::fs::remove_dir(&self.target).with_context(|| format!("--out {}: the folder was filled during the run", self.target.display()))?;
        }
        std::fs::rename(&self.staging, &self.target).with_context(|| format!("cannot move the results into {}", self.target.display()))?;
        self.finished = true;
        Ok(self.target.clone())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
