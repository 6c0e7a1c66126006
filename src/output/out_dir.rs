//! An output folder that appears whole or not at all: files go to a hidden staging folder beside it
//! (`.NAME.partial`), which is renamed into place when the run succeeds and removed when it fails, unless the run
//! left a checkpoint there to resume from (`checkpoint::run`).
//!
//! Only what `dma` wrote is ever replaced or removed: `--force` replaces a folder only when it holds a finished
//! `dma` result and nothing else (its run.json lists every file), and a staging folder only when it carries this
//! module's lock file. The lock is an OS file lock held for the whole run, so it ends with its process however that
//! process ends: a crash, a kill or a reboot never leaves a run that cannot be resumed or started over.
use crate::checkpoint::run::{remove_all, run_record};
use anyhow::{bail, Context, Result};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// The file in a staging folder that the writing process holds locked.
const LOCK: &str = "owner.lock";
/// The pid file that earlier versions used instead of the lock; it marks their staging folders as ours.
const LEGACY_OWNER: &str = "owner.pid";
/// The record every command writes last into its folder; its `outputs` name the other files.
const RUN_JSON: &str = "run.json";

pub struct OutDir {
    target: PathBuf,
    staging: PathBuf,
    /// How messages name the folder: `--out DIR`, or `the output folder DIR` when the user gave none.
    name: String,
    /// Replace a finished result at `target` (`--force`).
    replace: bool,
    /// Keep the staging folder when the run fails (a resumed run's, a finished run's that could not be moved into
    /// place); one that holds the run's record is kept anyway.
    keep: bool,
    finished: bool,
    /// Held locked while this process writes the staging folder; closing it (at exit, whatever the exit) unlocks.
    _lock: File,
}

/// The staging folder of `target`.
pub fn staging_of(target: &Path) -> Result<PathBuf> {
    let name = target.file_name().with_context(|| format!("--out {}: not a folder name", target.display()))?;
    Ok(parent_of(target).join(format!(".{}.partial", name.to_string_lossy())))
}

fn parent_of(target: &Path) -> &Path {
    target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Locks `staging`'s lock file for this process: `None` when another live process holds it.
fn lock(staging: &Path) -> Result<Option<File>> {
    let path = staging.join(LOCK);
    let file = File::options().create(true).truncate(false).write(true).open(&path).with_context(|| format!("cannot write {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Whether `staging` is a staging folder this module made (and so may be removed).
fn is_staging(staging: &Path) -> bool {
    [LOCK, LEGACY_OWNER].iter().any(|f| staging.join(f).exists()) || run_record(staging).exists()
}

/// What a folder given as --out holds.
enum Contents {
    Empty,
    /// A finished result of `dma <command>` and nothing else.
    DmaResult { command: String },
    /// Anything else: the first few entries `dma` did not write.
    Other { examples: Vec<String> },
}

/// The top-level names a finished result's run.json accounts for (itself, and the first component of every output),
/// and its command; `None` when `dir` has no run.json that `dma` wrote.
fn recorded_outputs(dir: &Path) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join(RUN_JSON)).ok()?;
    let record: serde_json::Value = serde_json::from_str(&text).ok()?;
    record.get("dma_version")?.as_str()?;
    let command = record.get("command")?.as_str()?.to_string();
    let mut names = vec![RUN_JSON.to_string()];
    for output in record.get("outputs")?.as_array()? {
        let first = Path::new(output.as_str()?).components().next()?;
        names.push(first.as_os_str().to_string_lossy().into_owned());
    }
    Some((command, names))
}

fn contents(dir: &Path) -> Result<Contents> {
    let entries: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    if entries.is_empty() {
        return Ok(Contents::Empty);
    }
    let (command, known) = recorded_outputs(dir).unwrap_or_default();
    let mut examples: Vec<String> = entries.into_iter().filter(|e| command.is_empty() || !known.contains(e)).collect();
    if examples.is_empty() {
        return Ok(Contents::DmaResult { command });
    }
    examples.sort();
    examples.truncate(3);
    Ok(Contents::Other { examples })
}

impl OutDir {
    /// The folder `--out target`: refused when it holds files, unless `replace` (`--force`) and they are a finished
    /// `dma` result and nothing else. Checks it can be written by creating the staging folder now, before any long
    /// work. An unfinished run's staging folder is refused too: it is resumed with `resume`, or started over with
    /// `replace`. `command` is the `dma` subcommand writing it (named in the message about an unfinished run).
    pub fn create(target: &Path, replace: bool, command: &str) -> Result<Self> {
        let name = format!("--out {}", target.display());
        Self::check_target(target, &name, replace)?;
        let staging = staging_of(target)?;
        if staging.exists() {
            Self::clear_stale_staging(target, &staging, &name, replace, command)?;
        }
        let parent = parent_of(target);
        std::fs::create_dir_all(parent).with_context(|| format!("{name}: cannot create {}", parent.display()))?;
        match std::fs::create_dir(&staging) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!("{name}: another dma process started writing it just now"),
            other => other.with_context(|| format!("{name}: cannot write in {}", parent.display()))?,
        }
        Self::claim(target.to_path_buf(), staging, name, replace)
    }

    /// A new folder named `base`, or `base-2`, `base-3`, ... when that name is taken (two runs started in the same
    /// second by a script get two folders).
    pub fn create_unique(base: &Path) -> Result<Self> {
        let parent = parent_of(base);
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create the output folder {}", parent.display()))?;
        for n in 1.. {
            let target = if n == 1 { base.to_path_buf() } else { PathBuf::from(format!("{}-{n}", base.display())) };
            let staging = staging_of(&target)?;
            if target.exists() || staging.exists() {
                continue;
            }
            match std::fs::create_dir(&staging) {
                Ok(()) => return Self::claim(target.clone(), staging, format!("the output folder {}", target.display()), false),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot write the output folder in {}", parent.display())),
            }
        }
        unreachable!("the loop only ends by returning")
    }

    fn claim(target: PathBuf, staging: PathBuf, name: String, replace: bool) -> Result<Self> {
        let lock = lock(&staging)?.with_context(|| format!("{name}: another dma process started writing it just now"))?;
        Ok(Self { target, staging, name, replace, keep: false, finished: false, _lock: lock })
    }

    /// Refuses a target that is not a folder, or holds files that are not to be replaced.
    fn check_target(target: &Path, name: &str, replace: bool) -> Result<()> {
        if !target.exists() {
            return Ok(());
        }
        if !target.is_dir() {
            bail!("{name}: exists and is not a folder");
        }
        match contents(target)? {
            Contents::Empty => Ok(()),
            Contents::DmaResult { .. } if replace => Ok(()),
            Contents::DmaResult { command } => {
                bail!("{name}: the folder holds the result of an earlier `dma {command}`; choose a new folder, or pass --force to replace it")
            }
            Contents::Other { examples } => bail!(
                "{name}: the folder holds files that are not a dma result ({}{}); choose a new or empty folder{}",
                examples.join(", "),
                if examples.len() == 3 { ", ..." } else { "" },
                if replace { " (--force only replaces a result dma wrote)" } else { "" }
            ),
        }
    }

    /// Removes the staging folder of a run that no longer runs, unless it holds a checkpoint and `replace` is off.
    fn clear_stale_staging(target: &Path, staging: &Path, name: &str, replace: bool, command: &str) -> Result<()> {
        if !staging.is_dir() || !is_staging(staging) {
            bail!("{name}: {} is in the way and was not made by dma; move it, or choose another --out", staging.display());
        }
        let Some(_stale) = lock(staging)? else {
            bail!("{name}: another dma process is writing it ({})", staging.display());
        };
        if run_record(staging).is_file() && !replace {
            bail!("{name}: an unfinished run is there ({}); continue it with `dma {command} --resume {}`, or pass --force to start over", staging.display(), target.display());
        }
        std::fs::remove_dir_all(staging).with_context(|| format!("cannot remove the stale {}", staging.display()))
    }

    /// Takes over the staging folder of an unfinished run at `target`, checkpoint and all.
    pub fn resume(target: &Path) -> Result<Self> {
        let staging = staging_of(target)?;
        if !run_record(&staging).is_file() {
            if let Ok(Contents::DmaResult { command }) = contents(target) {
                bail!("--resume {}: the `dma {command}` run there has finished; its result is in {0}", target.display());
            }
            bail!("--resume {}: no unfinished run there (no checkpoint in {})", target.display(), staging.display());
        }
        let lock = lock(&staging)?.with_context(|| format!("--resume {}: another dma process is still running it", target.display()))?;
        let _ = std::fs::remove_file(staging.join(LEGACY_OWNER));
        Ok(Self { target: target.to_path_buf(), staging, name: format!("--out {}", target.display()), replace: true, keep: true, finished: false, _lock: lock })
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

    /// Moves the finished outputs into place (replacing an earlier result when asked to).
    pub fn finish(mut self) -> Result<PathBuf> {
        remove_all(&self.staging);
        let _ = std::fs::remove_file(self.staging.join(LEGACY_OWNER));
        let mut old = None;
        if self.target.is_dir() {
            // Checked when the run started; checked again, since the folder may have been written to meanwhile.
            if let Err(e) = Self::check_target(&self.target, &self.name, self.replace) {
                self.keep = true;
                return Err(e.context(format!("the results are kept in {}", self.staging.display())));
            }
            if self.replace {
                let aside = parent_of(&self.target).join(format!(".{}.replaced-{}", self.target.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
                std::fs::rename(&self.target, &aside).with_context(|| format!("cannot move the earlier result {} aside", self.target.display()))?;
                old = Some(aside);
            } else {
                std::fs::remove_dir(&self.target).with_context(|| format!("{}: the folder was filled during the run", self.name))?;
            }
        }
        // The lock file goes last, just before the folder becomes the result: it is not one of the outputs.
        let _ = std::fs::remove_file(self.staging.join(LOCK));
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
        // A run that has written its record (with its first checkpoint) leaves its staging folder for `--resume`.
        if !self.finished && !self.keep && !run_record(&self.staging).is_file() {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
