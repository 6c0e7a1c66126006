//! Long runs that survive (issue "Long runs that survive"): a run killed by a real signal mid-way resumes from its
//! last checkpoint to exactly the result of a run never stopped (`dma average`; `dma modes --average` stopped in an
//! adapter's training or in a mode's mental average; `dma eval`; `dma train`); Ctrl-C saves and says how to
//! resume; resuming with other settings, or writing over an unfinished run or a finished result, is refused unless
//! asked.
mod common;
use common::{fixture, read_json, without_seconds};
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

/// The runs here are timed against each other (a signal once a checkpoint appears) and each uses every core, so
/// the tests take turns: run side by side on a small machine they took four times as long.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    // A guard against a run that never checkpoints, not a timing test: a slow or busy machine takes minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
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
    panic!("no checkpoint of {steps} steps of {stage} within ten minutes");
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
    let _turn = one_at_a_time();
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
    assert!(!killed.join("resume.json").exists() && !killed.join("checkpoints").exists());

    // Ctrl-C (SIGINT): the step in progress finishes, its checkpoint is saved, and the message says how to go on.
    let interrupted = tmp.path().join("interrupted");
    let child = spawn(&average_args(&interrupted));
    wait_for_checkpoint(&interrupted, 1);
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains(&format!("dma average --resume {}", interrupted.display())), "{stderr}");
    assert!(staging(&interrupted).join("resume.json").is_file() && !interrupted.exists());
    // Earlier versions named the run's record checkpoint.json: such a stopped run still resumes.
    std::fs::rename(staging(&interrupted).join("resume.json"), staging(&interrupted).join("checkpoint.json")).unwrap();
    succeeded(&dma(&["average".into(), "--resume".into(), interrupted.display().to_string(), "--quiet".into()]));
    assert_eq!(std::fs::read(interrupted.join("latents.safetensors")).unwrap(), std::fs::read(reference.join("latents.safetensors")).unwrap());
}

#[test]
fn resuming_refuses_other_settings_and_runs_that_are_not_there() {
    let _turn = one_at_a_time();
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
    let _turn = one_at_a_time();
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

/// A `dma modes --average` on the tiny fixture (2 modes, each with 120 adapter steps and a 4-step DMA) slow
/// enough to be stopped in either mode's adapter training or mental average.
#[test]
fn an_align_few_run_killed_after_dropping_its_extra_latents_resumes_to_the_same_result() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let args = |out: &Path| {
        let mut args = average_args(out);
        args.iter_mut().skip_while(|a| *a != "--latents").nth(1).map(|k| *k = "4".into());
        args.extend(["--optimise", "2", "--wide-target-steps", "1"].map(String::from));
        args
    };
    let reference = tmp.path().join("reference");
    succeeded(&dma(&args(&reference)));
    let killed = tmp.path().join("killed");
    let mut child = spawn(&args(&killed));
    // After the second step the run holds only its 2 optimised latents.
    let reached = wait_for_checkpoint(&killed, 2);
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(reached < STEPS as u64, "the run had finished before it was killed");
    succeeded(&dma(&["average".into(), "--resume".into(), killed.display().to_string(), "--quiet".into()]));
    for file in ["latents.safetensors", "prototype.png", "grid.png"] {
        assert_eq!(std::fs::read(killed.join(file)).unwrap(), std::fs::read(reference.join(file)).unwrap(), "{file} differs after resuming");
    }
    let run = read_json(&killed.join("run.json"));
    assert_eq!((run["latents"].as_i64(), run["final_latents"].as_i64()), (Some(4), Some(2)));
    assert_eq!(run["passes"], read_json(&reference.join("run.json"))["passes"], "passes counted once across the stop");
}

fn modes_args(out: &Path, adapter_kind: &str) -> Vec<String> {
    let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
    [
        "modes", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--samples", "6",
        "--steps", "4", "--clusters", "2", "--average", "--adapter-kind", adapter_kind, "--adapter-steps", "120", "--adapter-batch", "2",
        "--latents", "2", "--align-steps", "3", "--iters", "20", "--tol", "0", "--save-latents", "--quiet", "--out", out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// Every file of a finished result but run.json and results.json (which record times), by path.
fn result_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if !["run.json", "results.json"].contains(&path.file_name().unwrap().to_str().unwrap()) {
                files.push((path.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}


#[test]
fn a_modes_chain_stopped_in_training_or_in_a_mode_s_average_resumes_to_the_same_result() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    // (adapter kind, the stage to stop in, the step to wait for, the signal)
    for (kind, stage, step, signal_name) in [("lora", "mode-0/adapter", 50, "KILL"), ("ti", "mode-1/average", 1, "INT")] {
        let reference = tmp.path().join(format!("reference-{kind}"));
        succeeded(&dma(&modes_args(&reference, kind)));
        let stopped = tmp.path().join(format!("stopped-{kind}"));
        let child = spawn(&modes_args(&stopped, kind));
        wait_for_stage(&stopped, stage, step);
        signal(&child, signal_name);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stopped.exists(), "{kind}: no result appears for a run that did not finish");
        if signal_name == "INT" {
            assert_eq!(output.status.code(), Some(130), "{stderr}");
            assert!(stderr.contains(&format!("dma modes --resume {}", stopped.display())), "{stderr}");
        }
        let samples_done = staging(&stopped).join("checkpoints/samples/checkpoint.json");
        assert!(samples_done.is_file(), "{kind}: the samples' checkpoint is kept");
        let refused = dma(&["modes".into(), "--resume".into(), stopped.display().to_string(), "--adapter-steps".into(), "10".into()]);
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--adapter-steps 10 differs"), "{}", String::from_utf8_lossy(&refused.stderr));
        succeeded(&dma(&["modes".into(), "--resume".into(), stopped.display().to_string(), "--quiet".into()]));
        same_results(&stopped, &reference, kind);
        let (a, b) = (read_json(&stopped.join("run.json")), read_json(&reference.join("run.json")));
        assert_eq!(without_seconds(&a["chain"]), without_seconds(&b["chain"]), "{kind}: the per-step logs");
        assert!(!staging(&stopped).exists());
    }
}

/// Asserts that `resumed` holds exactly the files of `original`, byte for byte.
fn same_results(resumed: &Path, original: &Path, what: &str) {
    let (a, b) = (result_files(resumed), result_files(original));
    assert_eq!(a.iter().map(|f| &f.0).collect::<Vec<_>>(), b.iter().map(|f| &f.0).collect::<Vec<_>>(), "{what}: the same files");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{what}: {name} differs after resuming");
    }
}

/// A `dma eval` of two concepts over two seeds on the tiny fixture, slow enough to be stopped in the second
/// concept's mental average.
fn eval_args(out: &Path) -> Vec<String> {
    let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
    [
        "eval", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--prompt", "a photo of a cat",
        "--seeds", "2", "--samples", "4", "--steps", "6", "--latents", "2", "--align-steps", "4", "--iters", "20", "--tol", "0", "--quiet",
        "--out", out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// A `dma compare` of two models on one concept, stopped in the second model's mental average.
fn compare_args(out: &Path) -> Vec<String> {
    let models = format!("{},{}", fixture("tiny-sd1").display(), fixture("tiny-sd2").display());
    let clip = fixture("tiny-clip");
    [
        "compare", "--models", &models, "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--methods", "dma,typical", "--seeds", "2",
        "--samples", "4", "--steps", "6", "--latents", "2", "--align-steps", "4", "--iters", "20", "--tol", "0", "--quiet", "--out", out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn a_comparison_interrupted_midway_resumes_to_the_same_results() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    succeeded(&dma(&compare_args(&reference)));
    let stopped = tmp.path().join("stopped");
    let child = spawn(&compare_args(&stopped));
    wait_for_stage(&stopped, "subject-1/seed-1/dma", 2);
    signal(&child, "INT");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(130) && stderr.contains(&format!("dma compare --resume {}", stopped.display())), "{stderr}");
    succeeded(&dma(&["compare".into(), "--resume".into(), stopped.display().to_string(), "--quiet".into()]));
    same_results(&stopped, &reference, "compare");
}

#[test]
fn an_evaluation_killed_midway_resumes_to_the_same_results() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    succeeded(&dma(&eval_args(&reference)));
    let killed = tmp.path().join("killed");
    let mut child = spawn(&eval_args(&killed));
    let reached = wait_for_stage(&killed, "subject-1/seed-1/dma", 2);
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(reached < 6 && !killed.exists());
    let refused = dma(&eval_args(&killed));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("dma eval --resume"), "{}", String::from_utf8_lossy(&refused.stderr));
    let wrong = dma(&["modes".into(), "--resume".into(), killed.display().to_string()]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && stderr.contains("is a `dma eval`, not a `dma modes`"), "{stderr}");
    succeeded(&dma(&["eval".into(), "--resume".into(), killed.display().to_string(), "--quiet".into()]));
    same_results(&killed, &reference, "eval");
    let (a, b) = (read_json(&killed.join("results.json")), read_json(&reference.join("results.json")));
    assert_eq!(without_seconds(&a), without_seconds(&b));
}

/// A short `dma train` of the embedded model's architecture (20 steps of 8 images, a checkpoint every step).
fn train_args(dir: &Path) -> Vec<String> {
    let (model, state) = (dir.join("model"), dir.join("state"));
    ["train", "--model-out", model.to_str().unwrap(), "--state", state.to_str().unwrap(), "--steps", "20", "--batch", "8", "--checkpoint-every", "1", "--quiet"]
        .map(String::from)
        .to_vec()
}

/// The training step of the checkpoint in `state`, once there is one.
fn wait_for_training(state: &Path, steps: u64) {
    // A guard against a run that never checkpoints, not a timing test: a slow or busy machine takes minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let step = std::fs::read_to_string(state.join("checkpoint.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).and_then(|v| v["step"].as_u64());
        if step.is_some_and(|s| s >= steps) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no training checkpoint of {steps} steps within two minutes");
}

#[test]
fn model_training_killed_or_interrupted_resumes_to_the_same_weights() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    succeeded(&dma(&train_args(&reference)));
    for signal_name in ["KILL", "INT"] {
        let dir = tmp.path().join(signal_name);
        let child = spawn(&train_args(&dir));
        wait_for_training(&dir.join("state"), 3);
        signal(&child, signal_name);
        let output = child.wait_with_output().unwrap();
        if signal_name == "INT" {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(130), "{stderr}");
            assert!(stderr.contains("run the same command again"), "{stderr}");
        }
        let step = read_json(&dir.join("state/checkpoint.json"))["step"].as_u64().unwrap();
        assert!(step < 20, "{signal_name}: the training had finished before it was stopped");
        succeeded(&dma(&train_args(&dir)));
        same_results(&dir.join("model"), &reference.join("model"), signal_name);
        let log = |d: &Path| std::fs::read_to_string(d.join("state/loss.csv")).unwrap();
        assert_eq!(log(&dir), log(&reference), "{signal_name}: the loss log");
    }
}

#[test]
fn model_training_stops_where_asked_and_resumes_to_train_longer() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    succeeded(&dma(&train_args(&reference)));
    let with = |dir: &Path, extra: &[&str]| [train_args(dir), extra.iter().map(|s| s.to_string()).collect()].concat();
    // --stop-at splits the run at a step; the rest gives the same weights as the run in one go.
    let split = tmp.path().join("split");
    succeeded(&dma(&with(&split, &["--stop-at", "7"])));
    assert_eq!(read_json(&split.join("state/checkpoint.json"))["step"], 7);
    succeeded(&dma(&train_args(&split)));
    same_results(&split.join("model"), &reference.join("model"), "--stop-at");
    let refused = dma(&with(&split, &["--stop-at", "3"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--stop-at 3") && stderr.contains("already at step 20"), "{stderr}");

    // A run of 10 steps resumed with --steps 20 trains 10 more, its learning rate on the 20-step schedule.
    let longer = tmp.path().join("longer");
    let steps = |n: &str| with(&longer, &["--warmup", "2"]).into_iter().map(|a| if a == "20" { n.to_string() } else { a }).collect::<Vec<_>>();
    succeeded(&dma(&steps("10")));
    succeeded(&dma(&steps("20")));
    let logged: Vec<String> = std::fs::read_to_string(longer.join("state/loss.csv")).unwrap().lines().skip(1).map(|l| l.rsplit(',').next().unwrap().to_string()).collect();
    let schedule = |total: usize, step: usize| format!("{:.3e}", dma::training::cosine_lr(1e-3, 2, total, step));
    let expected: Vec<String> = (0..20).map(|step| schedule(if step < 10 { 10 } else { 20 }, step)).collect();
    assert_eq!(logged, expected);
    assert_ne!(schedule(10, 5), schedule(20, 5), "the two schedules differ where the test reads them");
    // Not shorter than the step reached.
    let refused = dma(&steps("5"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("at step 20, past --steps 5"), "{stderr}");
}

#[test]
fn plain_sampling_killed_midway_resumes_to_the_same_samples() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-sd1");
    let args = |out: &Path| -> Vec<String> {
        ["sample", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--num", "32", "--steps", "20", "--save-latents", "--quiet", "--out", out.to_str().unwrap()]
            .map(String::from)
            .to_vec()
    };
    let reference = tmp.path().join("reference");
    succeeded(&dma(&args(&reference)));
    let killed = tmp.path().join("killed");
    let mut child = spawn(&args(&killed));
    let reached = wait_for_stage(&killed, "sample", 2);
    signal(&child, "KILL");
    child.wait().unwrap();
    assert!(reached < 20 && !killed.exists());
    succeeded(&dma(&["sample".into(), "--resume".into(), killed.display().to_string(), "--quiet".into()]));
    same_results(&killed, &reference, "sample");
    // The run may have finished another step between the checkpoint seen and the signal.
    let run = read_json(&killed.join("run.json"));
    assert_eq!(run["resumed"]["argv_at_start"], serde_json::json!([env!("CARGO_BIN_EXE_dma")].iter().map(|s| s.to_string()).chain(args(&killed)).collect::<Vec<_>>()));
    let resumed_at = run["resumed"]["at_step"].as_u64().unwrap();
    assert!((reached..20).contains(&resumed_at), "resumed at step {resumed_at}, the checkpoint seen was of {reached}");
}

#[test]
fn a_run_whose_model_defaults_changed_is_not_resumed() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assert!(Command::new("cp").arg("-r").arg(fixture("tiny-sd1")).arg(&model).status().unwrap().success());
    let out = tmp.path().join("out");
    let mut args = average_args(&out);
    let at = args.iter().position(|a| a == "--model").unwrap() + 1;
    args[at] = model.display().to_string();
    let mut child = spawn(&args);
    wait_for_checkpoint(&out, 1);
    signal(&child, "KILL");
    child.wait().unwrap();
    // The model's own defaults now say guidance 5 where the run resolved the built-in 7.
    std::fs::write(model.join("dma_defaults.json"), r#"{"guidance": 5.0}"#).unwrap();
    let output = dma(&["average".into(), "--resume".into(), out.display().to_string(), "--quiet".into()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("defaults have changed") && stderr.contains("\"guidance\":5.0"), "{stderr}");
    assert!(staging(&out).join("resume.json").is_file(), "the refused run's checkpoint is kept");
}
