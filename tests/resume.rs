//! Long runs that survive (issue "Long runs that survive"): a run killed by a real signal mid-way resumes from its
//! last checkpoint to exactly the result of a run never stopped; Ctrl-C saves and says how to resume; resuming
//! with other settings, or writing over an unfinished run or a finished result, is refused unless asked.
mod common;
use common::{fixture, read_json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 12;

/// A `dma average` on the tiny fixture slow enough (12 steps, 8 aligned, 20 Adam iterations each) to be caught
/// mid-way.
fn average_args(out: &Path) -> Vec<String> {
    let model = fixture("tiny-sd1");
    let steps = STEPS.to_string();
    [
        "average", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", "2", "--steps", &steps,
        "--align-steps", "8", "--iters", "20", "--tol", "0", "--save-latents", "--quiet", "--out", out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn dma(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma")).args(args).output().unwrap()
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dma")).args(args).stderr(Stdio::piped()).spawn().unwrap()
}

fn staging(out: &Path) -> PathBuf {
    out.parent().unwrap().join(format!(".{}.partial", out.file_name().unwrap().to_string_lossy()))
}

/// Waits until the run writing `out` has checkpointed at least `steps` steps of `stage`; the step it reached.
fn wait_for_stage(out: &Path, stage: &str, steps: u64) -> u64 {
    let record = staging(out).join("checkpoints").join(stage).join("checkpoint.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&record) {
            // A sampling stage counts `next_step`, a training stage `step`.
            let value = serde_json::from_str::<serde_json::Value>(&text).ok();
            if let Some(step) = value.and_then(|v| v["next_step"].as_u64().or(v["step"].as_u64())) {
                if step >= steps {
                    return step;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no checkpoint of {steps} steps of {stage} within two minutes");
}

fn wait_for_checkpoint(out: &Path, steps: u64) -> u64 {
    wait_for_stage(out, "average", steps)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([format!("-{name}"), child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{name}");
}

fn succeeded(output: &Output) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_killed_run_resumes_to_the_result_of_one_never_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    succeeded(&dma(&average_args(&reference)));

    // SIGKILL: no chance to clean up; the last checkpoint is all there is.
    let killed = tmp.path().join("killed");
    let mut child = spawn(&average_args(&killed));
    let reached = wait_for_checkpoint(&killed, 2);
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(reached < STEPS as u64, "the run had finished before it was killed");
    assert!(!killed.exists(), "no result appears for a run that did not finish");
    let refused = dma(&average_args(&killed));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--resume") && stderr.contains("--force"), "{stderr}");
    succeeded(&dma(&["average".into(), "--resume".into(), killed.display().to_string(), "--quiet".into()]));
    for file in ["latents.safetensors", "prototype.png", "grid.png", "trajectory.png"] {
        assert_eq!(std::fs::read(killed.join(file)).unwrap(), std::fs::read(reference.join(file)).unwrap(), "{file} differs after resuming");
    }
    let (resumed, original) = (read_json(&killed.join("run.json")), read_json(&reference.join("run.json")));
    assert_eq!(resumed["steps"].as_array().unwrap().len(), original["steps"].as_array().unwrap().len());
    for (a, b) in resumed["steps"].as_array().unwrap().iter().zip(original["steps"].as_array().unwrap()) {
        assert_eq!((&a["loss_before"], &a["loss_after"], &a["spread_after"]), (&b["loss_before"], &b["loss_after"], &b["spread_after"]));
    }
    assert!(!staging(&killed).exists(), "the checkpoint is gone once the run is done");
    assert!(!killed.join("checkpoint.json").exists() && !killed.join("checkpoints").exists());

    // Ctrl-C (SIGINT): the step in progress finishes, its checkpoint is saved, and the message says how to go on.
    let interrupted = tmp.path().join("interrupted");
    let child = spawn(&average_args(&interrupted));
    wait_for_checkpoint(&interrupted, 1);
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains(&format!("dma average --resume {}", interrupted.display())), "{stderr}");
    assert!(staging(&interrupted).join("checkpoint.json").is_file() && !interrupted.exists());
    succeeded(&dma(&["average".into(), "--resume".into(), interrupted.display().to_string(), "--quiet".into()]));
    assert_eq!(std::fs::read(interrupted.join("latents.safetensors")).unwrap(), std::fs::read(reference.join("latents.safetensors")).unwrap());
}

#[test]
fn resuming_refuses_other_settings_and_runs_that_are_not_there() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut child = spawn(&average_args(&out));
    wait_for_checkpoint(&out, 1);
    signal(&child, "KILL");
    child.wait().unwrap();
    let resume = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["average".into(), "--resume".into(), out.display().to_string(), "--quiet".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        dma(&args)
    };
    for (flags, named) in [(&["--steps", "20"][..], "--steps 20"), (&["--lr", "0.5"][..], "--lr 0.5"), (&["--seed", "3"][..], "--seed 3")] {
        let output = resume(flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(named) && stderr.contains("differs"), "{flags:?}: {stderr}");
    }
    // The same value given again is no difference.
    succeeded(&resume(&["--steps", &STEPS.to_string(), "--prompt", "a photo of a dog"]));
    let nothing = tmp.path().join("nothing");
    let output = dma(&["average".into(), "--resume".into(), nothing.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no unfinished run"), "{stderr}");
}

#[test]
fn a_finished_result_is_replaced_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let quick = |extra: &[&str]| {
        let model = fixture("tiny-sd1");
        let mut args: Vec<String> = ["average", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", "2", "--steps", "2"]
            .map(String::from)
            .to_vec();
        args.extend(["--align-steps", "1", "--iters", "2", "--quiet", "--out", out.to_str().unwrap()].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        dma(&args)
    };
    succeeded(&quick(&["--seed", "1"]));
    let first = std::fs::read(out.join("prototype.png")).unwrap();
    let refused = quick(&["--seed", "2"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(out.join("prototype.png")).unwrap(), first, "the earlier result is untouched");
    succeeded(&quick(&["--seed", "2", "--force"]));
    assert_ne!(std::fs::read(out.join("prototype.png")).unwrap(), first, "--force replaced it");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("out")], "nothing is left beside the result");
}
