//! `dma average --resume DIR`: the stopped run's own arguments come back from its checkpoint; any flag given again
//! must say the same, so a resumed run cannot silently become another one.
use super::average::AverageArgs;
use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde_json::{Map, Value};

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
pub fn refuse_differences(given: &AverageArgs, recorded: &AverageArgs, matches: &ArgMatches) -> Result<()> {
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
