//! The command line in careless or hostile hands (issue "Right on every machine, safe under every input"): `--force`
//! never deletes what `dma` did not write; a lock never outlives its process; default output names never collide;
//! a second Ctrl-C, SIGTERM and SIGHUP stop at once, cleanly, saying what was kept; an edited checkpoint record is
//! refused; latents too many or too large for memory, or of a size the UNet cannot take, are refused before any work.
mod common;
use common::{fixture, read_json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A quick `dma average` on the tiny fixture into `out` (None: the default name, in `cwd`), plus `extra`.
fn average(cwd: &Path, out: Option<&Path>, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dma"));
    command.current_dir(cwd).args(["average", "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a photo of a dog"]);
    command.args(["--latents", "2", "--steps", "2", "--align-steps", "1", "--iters", "2", "--quiet"]);
    if let Some(out) = out {
        command.arg("--out").arg(out);
    }
    command.args(extra).output().unwrap()
}

/// A `dma average` slow enough to be signalled mid-way: 12 steps, 8 aligned, `iters` Adam iterations each (20:
/// a few seconds in all, and quick to resume; 100: a step long enough for two signals 50 ms apart to land in it).
fn spawn_slow(out: &Path, iters: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", "2"])
        .args(["--steps", "12", "--align-steps", "8", "--iters", &iters.to_string(), "--tol", "0", "--quiet", "--out"])
        .arg(out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: &Output) {
    assert!(output.status.success(), "{}", stderr(output));
}

/// Fails unless the run failed with exactly one error line mentioning every one of `parts`; returns stderr.
fn refused(output: &Output, parts: &[&str]) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "expected a refusal: {text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line expected: {text}");
    for part in parts {
        assert!(text.contains(part), "the error should mention `{part}`: {text}");
    }
    text
}

fn staging(out: &Path) -> PathBuf {
    out.parent().unwrap().join(format!(".{}.partial", out.file_name().unwrap().to_string_lossy()))
}

fn record_of(out: &Path) -> PathBuf {
    staging(out).join("checkpoints").join("average").join("checkpoint.json")
}

/// Waits until the run writing `out` has checkpointed its first step.
fn wait_for_checkpoint(out: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !record_of(out).is_file() {
        assert!(Instant::now() < deadline, "no checkpoint within five minutes");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// The runs here time signals against checkpoints and use every core: one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn force_never_deletes_what_dma_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    // A project folder: --force must not touch it, and without --force nothing may invite it.
    let project = tmp.path().join("p");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/main.rs"), "x").unwrap();
    std::fs::create_dir_all(project.join(".git")).unwrap();
    let text = refused(&average(tmp.path(), Some(&project), &["--force"]), &["--out", "not a dma result", "src", "only replaces a result dma wrote"]);
    assert!(text.contains(".git"), "{text}");
    let text = refused(&average(tmp.path(), Some(&project), &[]), &["--out", "not a dma result"]);
    assert!(!text.contains("--force"), "a refusal of a folder dma did not write must not invite --force: {text}");
    assert_eq!(std::fs::read_to_string(project.join("src/main.rs")).unwrap(), "x");
    assert!(project.join(".git").is_dir());

    // A finished result is replaced with --force, but not once someone has added a file of their own to it.
    let out = tmp.path().join("out");
    succeeded(&average(tmp.path(), Some(&out), &[]));
    refused(&average(tmp.path(), Some(&out), &[]), &["the result of an earlier `dma average`", "--force"]);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    refused(&average(tmp.path(), Some(&out), &["--force"]), &["notes.txt"]);
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    succeeded(&average(tmp.path(), Some(&out), &["--force", "--seed", "3"]));
    assert_eq!(read_json(&out.join("run.json"))["sampling"]["seed"], 3, "--force replaced the result");

    // A folder in the place of the staging folder that dma did not make is not removed either.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(staging(&other).join("keep")).unwrap();
    refused(&average(tmp.path(), Some(&other), &["--force"]), &["was not made by dma"]);
    assert!(staging(&other).join("keep").is_dir());
}

#[test]
fn default_output_names_never_collide_and_errors_name_no_flag_not_given() {
    let tmp = tempfile::tempdir().unwrap();
    // Results already under the names of this second and the next minute: the run must take another name.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for t in now..now + 60 {
        std::fs::create_dir_all(tmp.path().join(format!("out/average-a-photo-of-a-dog-{t}"))).unwrap();
        std::fs::write(tmp.path().join(format!("out/average-a-photo-of-a-dog-{t}/mine")), "").unwrap();
    }
    // Two runs started together, as a script would.
    let runs: Vec<_> = (0..2).map(|_| std::thread::spawn({
        let cwd = tmp.path().to_path_buf();
        move || average(&cwd, None, &[])
    })).collect();
    for run in runs {
        succeeded(&run.join().unwrap());
    }
    let written: Vec<String> = std::fs::read_dir(tmp.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with("-2") || name.ends_with("-3"))
        .collect();
    assert_eq!(written.len(), 2, "two runs, two new folders: {written:?}");
    for t in now..now + 60 {
        assert!(tmp.path().join(format!("out/average-a-photo-of-a-dog-{t}/mine")).is_file(), "an earlier folder was touched");
    }

    // Where the default folder cannot be made, the error names the folder, not an --out the user never gave.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("out"), "a file in the way").unwrap();
    let text = refused(&average(elsewhere.path(), None, &[]), &["output folder", "out"]);
    assert!(!text.contains("--out"), "{text}");
}

#[test]
fn a_lock_never_outlives_its_process() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut child = spawn_slow(&out, 20);
    wait_for_checkpoint(&out);
    child.kill().unwrap();
    child.wait().unwrap();
    // What the dead process left: its lock file; and a pid file of an earlier version naming a live process (pid 1).
    assert!(staging(&out).join("owner.lock").is_file());
    std::fs::write(staging(&out).join("owner.pid"), "1").unwrap();

    // A live holder of the lock (this test) blocks both --resume and --force, by name.
    let held = std::fs::File::options().write(true).open(staging(&out).join("owner.lock")).unwrap();
    held.lock().unwrap();
    let resume = Command::new(env!("CARGO_BIN_EXE_dma")).args(["average", "--quiet", "--resume"]).arg(&out).output().unwrap();
    refused(&resume, &["--resume", "another dma process is still running it"]);
    refused(&average(tmp.path(), Some(&out), &["--force"]), &["another dma process is writing it"]);
    drop(held);

    // Once the holder is gone, the stopped run resumes.
    let resume = Command::new(env!("CARGO_BIN_EXE_dma")).args(["average", "--quiet", "--resume"]).arg(&out).output().unwrap();
    succeeded(&resume);
    assert!(out.join("prototype.png").is_file() && !staging(&out).exists());
    assert!(!out.join("owner.lock").exists(), "the lock is not an output");
}

#[test]
fn a_second_ctrl_c_sigterm_and_sighup_stop_at_once_and_say_what_was_kept() {
    let _turn = one_at_a_time();
    for (signals, status, name) in [(vec![libc::SIGINT, libc::SIGINT], 130, "Ctrl-C"), (vec![libc::SIGTERM], 143, "SIGTERM"), (vec![libc::SIGHUP], 129, "SIGHUP")] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let child = spawn_slow(&out, 100);
        wait_for_checkpoint(&out);
        for s in &signals {
            signal(&child, *s);
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = child.wait_with_output().unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(status), "{name}: {text}");
        assert!(!text.contains("panicked") && !text.contains("Invalid"), "{name}: {text}");
        assert!(text.contains(&format!("stopped by {name}; the last checkpoint is kept")) && text.contains("--resume"), "{name}: {text}");
        assert!(record_of(&out).is_file(), "{name}: the checkpoint is kept");
    }

    // Stopped before the first checkpoint: nothing to resume, so nothing is left behind and nothing is promised.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let child = spawn_slow(&out, 100);
    while !staging(&out).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(&child, libc::SIGTERM);
    let output = child.wait_with_output().unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(143), "{text}");
    if !text.contains("the last checkpoint is kept") {
        assert!(text.contains("before the first checkpoint; nothing was kept"), "{text}");
        assert!(!staging(&out).exists(), "a staging folder with nothing to resume is removed");
    }
}

#[test]
fn an_edited_checkpoint_record_is_refused() {
    let _turn = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let child = spawn_slow(&out, 20);
    wait_for_checkpoint(&out);
    signal(&child, libc::SIGTERM);
    child.wait_with_output().unwrap();
    let original = std::fs::read_to_string(record_of(&out)).unwrap();
    let record: serde_json::Value = serde_json::from_str(&original).unwrap();
    let step = record["next_step"].as_u64().unwrap();
    let edits: [(&str, serde_json::Value, &str); 4] = [
        ("next_step", 50.into(), "damaged or belongs to another run"),
        ("steps", 60.into(), "damaged or belongs to another run"),
        ("tensors", "../../../checkpoint.json".into(), "names the tensor file"),
        ("log", serde_json::json!([]), "logs aligned steps"),
    ];
    for (field, value, message) in edits {
        let mut edited = record.clone();
        edited[field] = value;
        std::fs::write(record_of(&out), serde_json::to_string(&edited).unwrap()).unwrap();
        let resume = Command::new(env!("CARGO_BIN_EXE_dma")).args(["average", "--quiet", "--resume"]).arg(&out).output().unwrap();
        refused(&resume, &[message]);
        assert!(!out.exists(), "{field}: nothing was written");
    }
    // A record one step ahead of its tensors names a file that is not there.
    let mut ahead = record.clone();
    ahead["next_step"] = (step + 1).into();
    std::fs::write(record_of(&out), serde_json::to_string(&ahead).unwrap()).unwrap();
    let resume = Command::new(env!("CARGO_BIN_EXE_dma")).args(["average", "--quiet", "--resume"]).arg(&out).output().unwrap();
    assert!(!resume.status.success(), "{}", stderr(&resume));
    // The original record still resumes.
    std::fs::write(record_of(&out), original).unwrap();
    let resume = Command::new(env!("CARGO_BIN_EXE_dma")).args(["average", "--quiet", "--resume"]).arg(&out).output().unwrap();
    succeeded(&resume);
}

#[test]
fn latents_that_cannot_fit_or_that_the_unet_cannot_take_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // 8 GB, whatever this machine has: the refusals below are about what the run needs.
    let run = |command: &str, args: &[&str]| {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_dma"))
            .env("DMA_MEMORY_LIMIT", "8e9")
            .current_dir(tmp.path())
            .args([command, "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a dog", "--steps", "2", "--quiet", "--out", "o"])
            .args(args)
            .output()
            .unwrap();
        // Refused before any work: no sampling, no allocation of the latents.
        assert!(started.elapsed() < Duration::from_secs(60), "{args:?} took {:?}", started.elapsed());
        output
    };
    refused(&run("average", &["--align-steps", "1", "--latents", "10000000"]), &["--latents 10000000", "GB", "free on cpu"]);
    refused(&run("average", &["--align-steps", "1", "--latents", "9223372036854775807"]), &["--latents 9223372036854775807", "free on cpu"]);
    refused(&run("sample", &["--num", "100000000"]), &["--num 100000000", "free on cpu"]);
    let write = |name: &str, shape: &[i64]| {
        let path = tmp.path().join(name);
        dma::weights::write_safetensors(&path, &[("latents", &tch::Tensor::zeros(shape, (tch::Kind::Float, tch::Device::Cpu)))]).unwrap();
        path.to_str().unwrap().to_string()
    };
    // The tiny UNet halves its input twice: sides must be multiples of 4.
    for shape in [[2, 4, 1, 1], [2, 4, 7, 7], [2, 4, 16, 6]] {
        let file = write("small.safetensors", &shape);
        refused(&run("average", &["--align-steps", "1", "--init-latents", &file]), &["--init-latents", "multiples of 4"]);
    }
    let file = write("large.safetensors", &[2, 4, 2048, 2048]);
    refused(&run("average", &["--align-steps", "1", "--init-latents", &file]), &["--init-latents", "[4, 2048, 2048]", "free on cpu"]);
    assert!(!tmp.path().join("o").exists() && !tmp.path().join(".o.partial").exists());
    // A size it can take, other than its own, runs.
    let file = write("wide.safetensors", &[1, 4, 16, 24]);
    succeeded(&run("sample", &["--init-latents", &file]));
}

#[test]
fn dma_sample_writes_every_sample_as_its_own_png() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("samples-run");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["sample", "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a photo of a dog", "--num", "3", "--steps", "2"])
        .args(["--seed", "7", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    succeeded(&output);
    let mut names: Vec<String> = std::fs::read_dir(out.join("samples")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["0000.png", "0001.png", "0002.png"]);
    let png = std::fs::read(out.join("samples/0002.png")).unwrap();
    for chunk in [&b"prompt\0a photo of a dog"[..], b"seed\x007", b"index\x002"] {
        assert!(png.windows(chunk.len()).any(|w| w == chunk), "the PNG's text names {:?}", String::from_utf8_lossy(chunk));
    }
    assert!(out.join("grid.png").is_file(), "the grid is still written");
    assert!(read_json(&out.join("run.json"))["outputs"].as_array().unwrap().contains(&"samples/".into()));
}
