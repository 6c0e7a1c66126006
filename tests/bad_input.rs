//! Bad input to the `dma` command: one clear error naming what is wrong, a non-zero exit, and no output folder.
mod common;
use common::fixture;
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A private copy of the tiny SD 1 fixture to break.
fn model_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("model");
    copy_dir(&fixture("tiny-sd1"), &dir);
    dir
}

/// Runs `dma average` with a small, valid configuration plus `extra`, expecting failure; returns stderr.
fn fails(model: &str, extra: &[&str], tmp: &Path) -> String {
    let out = tmp.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", model, "--prompt", "a photo of a dog", "--latents", "2", "--steps", "3"])
        .args(["--align-steps", "1", "--iters", "2", "--quiet", "--out"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!out.exists(), "a failed run left an output folder at {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(tmp).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".partial")).collect();
    assert!(leftovers.is_empty(), "a failed run left a staging folder behind");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line expected: {stderr}");
    stderr
}

fn assert_mentions(stderr: &str, parts: &[&str]) {
    for part in parts {
        assert!(stderr.contains(part), "the error should mention `{part}`: {stderr}");
    }
}

#[test]
fn a_valid_run_succeeds_and_writes_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let status = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a photo of a dog", "--latents", "3"])
        .args(["--steps", "3", "--align-steps", "2", "--iters", "3", "--batch", "2", "--quiet", "--save-latents", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    for file in ["prototype.png", "grid.png", "trajectory.png", "run.json", "latents.safetensors"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["steps"].as_array().unwrap().len(), 2, "one log entry per aligned step");
    assert_eq!(run["model"]["weight_files"].as_array().unwrap().len(), 3);
    let png = std::fs::read(out.join("prototype.png")).unwrap();
    assert!(png.windows(6).any(|w| w == b"prompt"), "the PNG carries the prompt in a text chunk");
    // A second run into the same folder must not overwrite it.
    let again = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a dog", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_mentions(&String::from_utf8_lossy(&again.stderr), &["--out", "the result of an earlier `dma average`", "--force"]);
    assert_eq!(std::fs::read(out.join("prototype.png")).unwrap(), png, "the earlier result is untouched");
}

#[test]
fn missing_model_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails("/no/such/model", &[], tmp.path());
    assert_mentions(&err, &["/no/such/model"]);
}

#[test]
fn model_folder_without_a_component() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    std::fs::remove_dir_all(model.join("text_encoder")).unwrap();
    let err = fails(model.to_str().unwrap(), &[], tmp.path());
    assert_mentions(&err, &["text_encoder"]);
}

#[test]
fn truncated_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let file = model.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(model.to_str().unwrap(), &[], tmp.path());
    assert_mentions(&err, &["unet/diffusion_pytorch_model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn garbage_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let file = model.join("vae/diffusion_pytorch_model.safetensors");
    std::fs::write(&file, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    let err = fails(model.to_str().unwrap(), &[], tmp.path());
    assert_mentions(&err, &["vae/diffusion_pytorch_model.safetensors"]);
}

fn edit_unet_config(model: &Path, from: &str, to: &str) {
    let path = model.join("unet/config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "fixture config lacks {from}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn unsupported_block_type() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_unet_config(&model, "\"DownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\"");
    let err = fails(model.to_str().unwrap(), &[], tmp.path());
    assert_mentions(&err, &["unet/config.json", "SimpleCrossAttnDownBlock2D"]);
}

#[test]
fn weight_shape_disagrees_with_config() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_unet_config(&model, "\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
    let err = fails(model.to_str().unwrap(), &[], tmp.path());
    assert_mentions(&err, &["unet/diffusion_pytorch_model.safetensors", "attn2.to_k.weight", "32]", "48]"]);
}

#[test]
fn nonsense_flag_values() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-sd1");
    let model = model.to_str().unwrap();
    for (flags, expected) in [
        (&["--latents", "0"][..], "--latents"),
        (&["--lr=-0.1"][..], "--lr"),
        (&["--align-steps", "9"][..], "--align-steps"),
        (&["--steps", "0"][..], "--steps"),
        (&["--dtype", "f8"][..], "--dtype"),
        (&["--device", "tpu"][..], "--device"),
        (&["--batch", "0"][..], "--batch"),
        (&["--guidance-interval", "600,0"][..], "--guidance-interval"),
        (&["--guidance-interval", "0-600"][..], "--guidance-interval"),
        (&["--guidance-interval", "0,six hundred"][..], "--guidance-interval"),
    ] {
        let err = fails(model, flags, tmp.path());
        assert_mentions(&err, &[expected]);
    }
}

#[test]
fn run_defaults_with_an_impossible_guidance_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    std::fs::write(model.join("dma_defaults.json"), r#"{"guidance_interval": [600, 0]}"#).unwrap();
    let err = fails(model.to_str().unwrap(), &[], tmp.path());
    assert_mentions(&err, &["dma_defaults.json", "guidance interval", "600,0"]);
}

#[test]
fn unwritable_out_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let out = blocker.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", fixture("tiny-sd1").to_str().unwrap(), "--prompt", "a dog", "--latents", "2", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_mentions(&err, &["--out", "a-file"]);
}

#[test]
fn init_latents_of_the_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("latents.safetensors");
    let wrong = tch::Tensor::zeros([2, 3, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
    dma::weights::write_safetensors(&file, &[("latents", &wrong)]).unwrap();
    let err = fails(fixture("tiny-sd1").to_str().unwrap(), &["--init-latents", file.to_str().unwrap()], tmp.path());
    assert_mentions(&err, &["--init-latents", "[2, 3, 16, 16]"]);
}
