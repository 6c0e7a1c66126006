//! `dma <command> --resume DIR`: the stopped run's own arguments come back from its record; any flag given again
//! must say the same, and the settings they resolve to must not have changed, so a resumed run cannot silently
//! become another one.
use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use dma::files::read_json;
use dma::checkpoint::run::run_record;
use dma::output::OutDir;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Flags that may differ on resume: they change how the run is shown or where it is, not what it computes.
const FREE: [&str; 3] = ["resume", "quiet", "out"];

/// The leaves of nested argument structs (clap's flattened groups) by field name, which is each flag's id.
fn leaves(value: &Value, into: &mut Map<String, Value>) {
    if let Value::Object(fields) = value {
        for (name, field) in fields {
            match field {
                Value::Object(_) => leaves(field, into),
                other => {
                    into.insert(name.clone(), other.clone());
                }
            }
        }
    }
}

/// Fails, naming the first flag given on the command line whose value differs from the recorded run's.
fn refuse_differences<A: Serialize>(given: &A, recorded: &A, matches: &ArgMatches) -> Result<()> {
    let (mut now, mut then) = (Map::new(), Map::new());
    leaves(&serde_json::to_value(given)?, &mut now);
    leaves(&serde_json::to_value(recorded)?, &mut then);
    for id in matches.ids().map(|id| id.as_str()) {
        if FREE.contains(&id) || matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let (a, b) = (now.get(id).unwrap_or(&Value::Null), then.get(id).unwrap_or(&Value::Null));
        if a != b {
            let flag = id.replace('_', "-");
            bail!("--{flag} {a} differs from the run being resumed (--{flag} {b}); resume with the same flags, or none");
        }
    }
    Ok(())
}

/// A command's arguments that `--resume` can replace.
pub trait Resumable: Serialize + DeserializeOwned {
    /// --resume DIR, when given.
    fn resume_dir(&self) -> Option<PathBuf>;
    /// These recorded arguments as the run resumed into `dir` uses them: shown as `given` asks (--quiet), writing to
    /// `dir`, resuming nothing further.
    fn resumed(self, given: &Self, dir: PathBuf) -> Self;
}

/// The arguments to run with: `given`, or with --resume DIR those the stopped run was started with, with its folder
/// and record.
pub fn arguments<A: Resumable>(command: &str, given: A, matches: &ArgMatches) -> Result<(Option<(OutDir, Value)>, A)> {
    let Some(dir) = given.resume_dir() else {
        return Ok((None, given));
    };
    let (out, record, recorded) = take_up(command, &dir, &given, matches)?;
    Ok((Some((out, record)), recorded.resumed(&given, dir)))
}

/// A stopped `dma <command>` run taken up again: its folder, its record, and the arguments it was started with.
fn take_up<A: Serialize + DeserializeOwned>(command: &str, dir: &Path, given: &A, matches: &ArgMatches) -> Result<(OutDir, Value, A)> {
    let out = OutDir::resume(dir)?;
    super::interrupt::running(&out, command);
    let record: Value = read_json(&run_record(out.staging()))?;
    if record["command"] != command {
        bail!("--resume {}: the run there is a `dma {}`, not a `dma {command}`", dir.display(), record["command"].as_str().unwrap_or("?"));
    }
    let recorded: A = serde_json::from_value(record["args"].clone())
        .with_context(|| format!("--resume {}: the record does not hold the arguments of a `dma {command}` run", dir.display()))?;
    refuse_differences(given, &recorded, matches)?;
    Ok((out, record, recorded))
}

/// The run's folder: the resumed run's (`arguments`), whose settings must resolve to `settings` again (a changed
/// dma_defaults.json or prompts file would make it another run), or a new one from `create`. With it, what the
/// run's run.json says of its resumption: null for a run never stopped, else the command line it was started with
/// (its own `argv` is the `--resume` one).
pub fn resumed_or_new(resumed: Option<(OutDir, Value)>, settings: &Value, create: impl FnOnce() -> Result<OutDir>) -> Result<(OutDir, Value)> {
    let Some((out, record)) = resumed else {
        return Ok((create()?, Value::Null));
    };
    if record["settings"] != *settings {
        bail!(
            "--resume {}: the model's defaults have changed since the run started (then {}, now {settings})",
            out.target().display(),
            record["settings"]
        );
    }
    Ok((out, serde_json::json!({ "argv_at_start": record["argv"] })))
}
