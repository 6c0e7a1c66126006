//! An output folder that appears whole or not at all: files go to a hidden staging folder beside it
//! (`.NAME.partial`), which is renamed into place when the run succeeds and removed when it fails, unless the run
//! left a checkpoint there to resume from.
use super::checkpoint::RUN_RECORD;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The file in a staging folder naming the process that writes it, so a second run cannot take it over.
const OWNER: &str = "owner.pid";

pub struct OutDir {
    target: PathBuf,
    staging: PathBuf,
    /// Replace a finished result at `target` (`--force`).
    replace: bool,
    /// Keep the staging folder when the run fails: it holds a checkpoint.
    keep: bool,
    finished: bool,
}

/// The staging folder of `target`.
pub fn staging_of(target: &Path) -> Result<PathBuf> {
    let name = target.file_name().with_context(|| format!("--out {}: not a folder name", target.display()))?;
    Ok(parent_of(target).join(format!(".{}.partial", name.to_string_lossy())))
}

fn parent_of(target: &Path) -> &Path {
    target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Whether the process that last wrote into `staging` is still running.
fn owner_alive(staging: &Path) -> bool {
    let pid = std::fs::read_to_string(staging.join(OWNER)).ok().and_then(|s| s.trim().parse::<u32>().ok());
    pid.is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

fn claim(staging: &Path) -> Result<()> {
    crate::files::write_atomic(&staging.join(OWNER), std::process::id().to_string().as_bytes())
}

impl OutDir {
    /// Refuses an --out that already holds files unless `replace` (a finished run is never overwritten by
    /// accident), and checks it can be written by creating the staging folder now, before any long work. An
    /// unfinished run's staging folder is refused too: it is resumed with `resume`, or started over with `replace`.
    /// `command` is the `dma` subcommand writing it (named in the message about an unfinished run).
    pub fn create(target: &Path, replace: bool, command: &str) -> Result<Self> {
        if target.exists() {
            if !target.is_dir() {
                bail!("--out {}: exists and is not a folder", target.display());
            }
            let mut entries = std::fs::read_dir(target).with_context(|| format!("--out {}: cannot read", target.display()))?;
            if entries.next().is_some() && !replace {
                bail!("--out {}: the folder holds an earlier result; choose a new folder, or pass --force to replace it", target.display());
            }
        }
        let staging = staging_of(target)?;
        if staging.exists() {
            if owner_alive(&staging) {
                bail!("--out {}: another dma process is writing it ({})", target.display(), staging.display());
            }
            if staging.join(RUN_RECORD).is_file() && !replace {
                bail!(
                    "--out {}: an unfinished run is there ({}); continue it with `dma {command} --resume {0}`, or pass --force to start over",
                    target.display(),
                    staging.display()
                );
            }
            std::fs::remove_dir_all(&staging).with_context(|| format!("cannot remove the stale {}", staging.display()))?;
        }
        let parent = parent_of(target);
        std::fs::create_dir_all(parent).with_context(|| format!("--out {}: cannot create {}", target.display(), parent.display()))?;
        std::fs::create_dir(&staging).with_context(|| format!("--out {}: cannot write in {}", target.display(), parent.display()))?;
        claim(&staging)?;
        Ok(Self { target: target.to_path_buf(), staging, replace, keep: false, finished: false })
    }

    /// Takes over the staging folder of an unfinished run at `target`, checkpoint and all.
    pub fn resume(target: &Path) -> Result<Self> {
        let staging = staging_of(target)?;
        if !staging.join(RUN_RECORD).is_file() {
            bail!("--resume {}: no unfinished run there (no checkpoint in {})", target.display(), staging.display());
        }
        if owner_alive(&staging) {
            bail!("--resume {}: another dma process is still running it", target.display());
        }
        claim(&staging)?;
        Ok(Self { target: target.to_path_buf(), staging, replace: true, keep: true, finished: false })
    }

    /// Where to write a file named `name` during the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// The staging folder the run writes into (and keeps its checkpoint in).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// The final folder.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// From now on a failed run leaves its staging folder (and the checkpoint in it) for `--resume`.
    pub fn keep_on_failure(&mut self) {
        self.keep = true;
    }

    /// Moves the finished outputs into place (replacing an earlier result when asked to).
    pub fn finish(mut self) -> Result<PathBuf> {
        let _ = std::fs::remove_file(self.staging.join(OWNER));
        super::checkpoint::remove_all(&self.staging);
        let mut old = None;
        if self.target.is_dir() {
            if self.replace {
                let aside = parent_of(&self.target).join(format!(".{}.replaced-{}", self.target.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
                std::fs::rename(&self.target, &aside).with_context(|| format!("cannot move the earlier result {} aside", self.target.display()))?;
                old = Some(aside);
            } else {
                // Checked empty at creation; remove_dir fails (safely) if something appeared since.
                std::fs::remove_dir(&self.target).with_context(|| format!("--out {}: the folder was filled during the run", self.target.display()))?;
            }
        }
        std::fs::rename(&self.staging, &self.target).with_context(|| format!("cannot move the results into {}", self.target.display()))?;
        self.finished = true;
        if let Some(old) = old {
            std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove the replaced result {}", old.display()))?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.keep {
            let _ = std::fs::remove_file(self.staging.join(OWNER));
        } else {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
