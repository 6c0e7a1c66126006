//! `dma sweep` as a user runs it on the embedded model: a grid of settings, each scored and costed, written as
//! tables, a frontier plot that renders, and prototypes; bad axes refused before anything runs.
mod common;
use common::{read_json, render, without_seconds};
use std::path::Path;
use std::process::{Command, Output};

/// A small sweep on the embedded model from the paper's plain schedule (so the hand counts below do not depend on
/// the cheaper schedule the model's defaults choose), its flags over it.
fn dma_sweep(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["sweep", "--schedule", "paper", "--prompt", "a sneaker", "--prompt", "a digit", "--steps", "4", "--align-steps", "2", "--tol", "0"])
        .args(["--seeds", "2", "--samples", "3", "--quiet", "--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_sweep_writes_each_setting_s_scores_and_counted_cost_and_a_frontier_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = dma_sweep(&out, &["--sweep", "latents=2,3", "--sweep", "iters=1,2"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let column = |name: &str| rows[0].iter().position(|c| *c == name).unwrap_or_else(|| panic!("no column {name}: {csv}"));
    assert_eq!(rows.len(), 1 + 2 * 4, "2 concepts x 4 settings: {csv}");
    let labels: Vec<&str> = rows[1..5].iter().map(|r| r[column("setting")]).collect();
    assert_eq!(labels, ["latents=2 iters=1", "latents=2 iters=2", "latents=3 iters=1", "latents=3 iters=2"], "the first axis varies slowest");
    // Hand counts per run (4 steps, 2 aligned, every iteration run): each aligned step K forward passes for the
    // target, K x iters forward+backward, K forward after it; K forward to choose the prototype; the sampler 4 steps
    // x K x 2 guidance branches through the whole UNet.
    for row in &rows[1..] {
        let (k, iters): (f64, f64) = (row[column("K")].parse().unwrap(), row[column("iters")].parse().unwrap());
        let figure = |name: &str| row[column(name)].parse::<f64>().unwrap();
        assert_eq!(figure("encoder_forward"), 2.0 * 2.0 * k + k, "{row:?}");
        assert_eq!(figure("encoder_backward"), 2.0 * k * iters, "{row:?}");
        assert_eq!(figure("unet_forward"), 4.0 * k * 2.0, "{row:?}");
        for name in ["consistency", "representativeness", "sharpness_vs_samples", "alignment_seconds"] {
            assert!(figure(name).is_finite() && figure(name) >= 0.0, "{name} in {row:?}");
        }
        assert_eq!(row[column("classes")].split(' ').count(), 2, "a zero-shot class per seed: {row:?}");
    }
    let markdown = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(markdown.contains("## Mean over 2 concepts") && markdown.contains("| latents=3 iters=2 | 3 |"), "{markdown}");
    let run = read_json(&out.join("run.json"));
    for file in run["outputs"].as_array().unwrap() {
        assert!(out.join(file.as_str().unwrap()).is_file(), "{file} is listed and written");
    }
    assert!(out.join("a-digit/setting-3-seed1.png").is_file());
    // 2 concepts x 4 settings x 2 seeds of prototypes; one frontier curve per concept, through its 4 settings.
    assert_eq!(render(&out.join("report.html")), (16, 16, 2));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<circle").count(), 8, "a point per concept and setting");
}

#[test]
fn points_beside_a_grid_run_with_their_own_settings_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = dma_sweep(&out, &["--prompt", "footwear", "--iters", "3", "--point", "latents=2", "--point", "latents=4 optimise=2 wide-target-steps=1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let column = |name: &str| rows[0].iter().position(|c| *c == name).unwrap_or_else(|| panic!("no column {name}: {csv}"));
    assert_eq!(rows.len(), 1 + 3 * 2, "3 concepts x 2 points: {csv}");
    assert_eq!((rows[1][column("optimised")], rows[2][column("optimised")]), ("", "2"), "what each point resolved to");
    // The second point by hand: 4 latents in the first step's target (4 + 2 forward), 2 optimised (3 iterations x
    // 2 aligned steps), the other two dropped before the second step (2 + 2 forward), 2 forward for the prototype;
    // the sampler ran 4 latents for the first step and 2 for the other three, 2 guidance branches each.
    let figure = |row: usize, name: &str| rows[row][column(name)].parse::<f64>().unwrap();
    assert_eq!([figure(2, "encoder_forward"), figure(2, "encoder_backward"), figure(2, "unet_forward")], [12.0, 12.0, 20.0], "{csv}");
}

#[test]
fn a_bad_axis_is_refused_by_name_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    for (axis, says) in [
        ("colour=red", "the setting \"colour=red\": \"colour\" is not a setting a sweep can vary"),
        ("latents", "expected KEY=V1,V2"),
        ("latents=2,", "an empty value"),
        ("latents=two", "\"two\" is not a valid value for --latents"),
        ("latents=0", "--latents must be at least 1"),
        ("schedule=fastest", "not a schedule"),
        ("optimise=0", "--optimise must be at least 1"),
        ("settle=2", "--settle must be a fraction"),
    ] {
        let out = tmp.path().join("out");
        let output = dma_sweep(&out, &["--sweep", axis]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "--sweep {axis}: {stderr}");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{stderr}");
        assert!(!out.exists(), "--sweep {axis} left an output folder");
    }
    for (point, says) in [
        ("latents=2,3", "needs one value"),
        ("latents", "is not KEY=VALUE"),
        ("", "empty"),
        ("iters=2 wide-target-steps=1", "needs --optimise"),
        ("latents=two", "the setting \"latents=two\": \"two\" is not a valid value for --latents"),
        ("latents=4 optimise=8", "--optimise 8 is more than the run's 4 latents"),
    ] {
        let out = tmp.path().join("out");
        let output = dma_sweep(&out, &["--point", point]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "--point {point:?}: {stderr}");
        assert!(!out.exists(), "--point {point:?} left an output folder");
    }
}

#[test]
fn a_sweep_killed_midway_resumes_from_its_finished_items_to_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = ["--sweep", "latents=2,3", "--sweep", "iters=4,8"];
    let reference = tmp.path().join("reference");
    assert!(dma_sweep(&reference, &grid).status.success());
    let out = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["sweep", "--schedule", "paper", "--prompt", "a sneaker", "--prompt", "a digit", "--steps", "4", "--align-steps", "2", "--tol", "0"])
        .args(["--seeds", "2", "--samples", "3", "--quiet", "--out", out.to_str().unwrap()])
        .args(grid)
        .spawn()
        .unwrap();
    // The first setting's first run is kept once it is finished (after every concept's samples).
    let kept = tmp.path().join(".killed.partial/checkpoints/concept-0/point-0/seed-0/outcome.safetensors");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !kept.is_file() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(kept.is_file() && !out.exists(), "killed with an item kept and the sweep unfinished");
    let resumed = Command::new(env!("CARGO_BIN_EXE_dma")).args(["sweep", "--resume", out.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let (a, b) = (read_json(&out.join("results.json")), read_json(&reference.join("results.json")));
    assert_eq!(without_seconds(&a), without_seconds(&b), "resumed = uninterrupted");
    assert!(std::fs::read(out.join("a-digit/setting-3-seed1.png")).unwrap() == std::fs::read(reference.join("a-digit/setting-3-seed1.png")).unwrap());
}
