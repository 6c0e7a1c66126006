//! A run that diverges stops at the step where it went wrong, naming the step and the latent, with a non-zero
//! exit and no output folder (issue "Long runs that survive").
mod common;
use common::fixture;
use dma::sampling::{ensure_finite, sample, NoHooks};
use dma::schedulers::ddim::{DdimConfig, DdimScheduler};
use std::process::Command;
use tch::{Device, Kind, Tensor};

#[test]
fn the_first_non_finite_latent_is_named() {
    let x = Tensor::zeros([4, 2, 3, 3], (Kind::Float, Device::Cpu));
    assert!(ensure_finite(&x, "latent", 3, 700).is_ok());
    let _ = x.get(2).get(1).get(0).get(0).fill_(f64::NAN);
    let _ = x.get(3).get(0).get(2).get(2).fill_(f64::INFINITY);
    let error = ensure_finite(&x, "latent", 3, 700).unwrap_err().to_string();
    assert!(error.contains("step 3") && error.contains("timestep 700") && error.contains("latent 2"), "{error}");
}

#[test]
fn sampling_stops_at_the_step_whose_output_is_not_finite() {
    let config = DdimConfig::from_file(&fixture("tiny-sd1").join("scheduler").join("scheduler_config.json")).unwrap();
    let scheduler = DdimScheduler::new(&config, 5).unwrap();
    let second = scheduler.timesteps()[2];
    let mut calls = Vec::new();
    let mut denoise = |x: &Tensor, t: i64| {
        calls.push(t);
        let out = x.zeros_like();
        if t == second {
            let _ = out.get(1).fill_(f64::NAN);
        }
        Ok(out)
    };
    let latents = Tensor::ones([3, 4, 2, 2], (Kind::Float, Device::Cpu));
    let error = sample(&scheduler, latents, &mut denoise, &mut NoHooks).unwrap_err().to_string();
    assert!(error.contains("step 2") && error.contains("latent 1"), "{error}");
    assert_eq!(calls.len(), 3, "nothing runs after the step that failed");
}

#[test]
fn an_alignment_that_diverges_fails_clearly_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-sd1");
    // An absurd learning rate sends the latents to infinity within a few Adam iterations.
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", "2", "--steps", "2"])
        .args(["--align-steps", "1", "--iters", "5", "--tol", "0", "--lr", "1e300", "--quiet", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists(), "{stderr}");
    assert!(stderr.contains("step 0") && stderr.contains("latent") && stderr.contains("not finite"), "{stderr}");
}

/// A run whose memory need clearly exceeds what the device has is refused before it starts, with a batch that fits
/// (the device's free memory set by DMA_MEMORY_LIMIT here; the CPU's MemAvailable or nvidia-smi otherwise).
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_with_a_batch_that_would() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = fixture("tiny-sd1");
    let run = |limit: &str, latents: &str, batch: &str| {
        Command::new(env!("CARGO_BIN_EXE_dma"))
            .env("DMA_MEMORY_LIMIT", limit)
            .args(["average", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", latents, "--steps", "2"])
            .args(["--align-steps", "1", "--iters", "2", "--batch", batch, "--quiet", "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // The tiny model's weights take about 0.8 MB and the runtime is counted as 0.5 GB; each latent of a batch about
    // 1 MB: 1 GB leaves room for a few hundred latents in a batch, not 4000.
    let output = run("1e9", "4000", "4000");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists(), "{stderr}");
    assert!(stderr.contains("--batch 4000 with --latents 4000 needs") && stderr.contains("would fit"), "{stderr}");
    let output = run("1e3", "4", "1");
    assert!(String::from_utf8_lossy(&output.stderr).contains("even --batch 1"), "nothing fits in 1 kB");
    assert!(run("100e9", "4", "4").status.success(), "a run that fits starts");

    // An adapter's training keeps the whole UNet's activations per sample: `dma modes --average` checks its batch.
    let clip = fixture("tiny-clip");
    let out = tmp.path().join("modes");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .env("DMA_MEMORY_LIMIT", "100e9")
        .args(["modes", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog"])
        .args(["--samples", "4", "--steps", "2", "--align-steps", "1", "--average", "--adapter-batch", "1000000000", "--quiet", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists(), "{stderr}");
    assert!(stderr.contains("--adapter-batch 1000000000 with --samples 4") && stderr.contains("needs") && stderr.contains("would fit"), "{stderr}");
}
