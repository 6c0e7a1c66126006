//! The VAE against diffusers' AutoencoderKL on the committed tiny SD 1- and SD 2-style fixtures.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::models::vae::{AutoencoderKL, VaeConfig};
use dma::weights::{read_safetensors, Weights};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// f32 on the CPU against diffusers in f32 on the CPU. With the same libtorch and the same ops the outputs agree
/// exactly (measured 0); the tolerance leaves room for another build's kernels.
const TOLERANCE: f64 = 1e-4;

fn load_vae(name: &str) -> AutoencoderKL {
    let dir = fixture(name).join("vae");
    let config = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let weights =
        Weights::from_files(&[dir.join("diffusion_pytorch_model.safetensors")], Device::Cpu, Kind::Float).unwrap();
    let vae = AutoencoderKL::load(&weights.root(), &config).unwrap();
    weights.check_all_used("").unwrap();
    vae
}

fn check_vae(name: &str) {
    let refs = references(name);
    let vae = load_vae(name);
    let decoded = tch::no_grad(|| vae.decode(&refs["vae_decode_in"]));
    let encoded = tch::no_grad(|| vae.encode_mean(&refs["vae_encode_in"]));
    assert_eq!(decoded.size(), refs["vae_decode_out"].size());
    assert_eq!(encoded.size(), refs["vae_encode_mean"].size());
    let decode_diff = max_abs_diff(&decoded, &refs["vae_decode_out"]);
    let encode_diff = max_abs_diff(&encoded, &refs["vae_encode_mean"]);
    println!("{name}: max |decode - ref| {decode_diff:.2e}, max |encode mean - ref| {encode_diff:.2e}");
    assert!(decode_diff < TOLERANCE, "{name}: decode differs from diffusers by {decode_diff}");
    assert!(encode_diff < TOLERANCE, "{name}: encode mean differs from diffusers by {encode_diff}");
}

#[test]
fn sd1_vae_matches_diffusers() {
    check_vae("tiny-sd1");
}

#[test]
fn sd2_vae_matches_diffusers() {
    check_vae("tiny-sd2");
}

#[test]
fn images_from_latents_matches_the_pipelines_image() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let refs = references(name);
        let vae = load_vae(name);
        let images = tch::no_grad(|| vae.images_from_latents(&refs["pipeline_final_latents"]));
        let diff = max_abs_diff(&images, &refs["pipeline_image"]);
        println!("{name}: max |images_from_latents(final latents) - pipeline image| {diff:.2e}");
        assert!(diff < TOLERANCE, "{name}: decoded image differs from the pipeline's by {diff}");
    }
}

#[test]
fn latents_from_images_is_the_scaled_encoder_mean() {
    let refs = references("tiny-sd1");
    let scaling_factor = reference_json("tiny-sd1")["scaling_factor"].as_f64().unwrap();
    let vae = load_vae("tiny-sd1");
    let latents = tch::no_grad(|| vae.latents_from_images(&(&refs["vae_encode_in"] / 2.0 + 0.5)));
    let diff = max_abs_diff(&latents, &(&refs["vae_encode_mean"] * scaling_factor));
    println!("max |latents_from_images - scaling_factor * encode mean| {diff:.2e}");
    assert!(diff < TOLERANCE);
}

#[test]
fn vae_is_differentiable() {
    let refs = references("tiny-sd1");
    let vae = load_vae("tiny-sd1");
    let images = (&refs["vae_encode_in"] / 2.0 + 0.5).set_requires_grad(true);
    let latents = vae.latents_from_images(&images);
    vae.images_from_latents(&latents).sum(Kind::Float).backward();
    let grad = images.grad();
    assert!(grad.isfinite().all().int64_value(&[]) == 1 && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn unsupported_block_type_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]}"#,
    )
    .unwrap();
    let err = format!("{:#}", VaeConfig::from_file(&path).unwrap_err());
    assert!(err.contains("config.json") && err.contains("AttnDownEncoderBlock2D"), "{err}");
    std::fs::write(&path, r#"{"act_fn": "gelu"}"#).unwrap();
    let err = format!("{:#}", VaeConfig::from_file(&path).unwrap_err());
    assert!(err.contains("config.json") && err.contains("gelu"), "{err}");
}

#[test]
fn pre_rename_attention_names_load_the_same_vae() {
    // Hub copies of SD 1.x VAEs name the mid-block attention's layers query/key/value/proj_attn.
    let dir = fixture("tiny-sd1").join("vae");
    let config = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let renamed: HashMap<String, Tensor> = read_safetensors(&dir.join("diffusion_pytorch_model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(key, tensor)| {
            let key = [("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")]
                .iter()
                .fold(key, |key, (new, old)| {
                    key.replace(&format!("attentions.0.{new}"), &format!("attentions.0.{old}"))
                });
            (key, tensor)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.ends_with("attentions.0.proj_attn.weight")));
    let weights = Weights::from_tensors(renamed, "renamed tiny-sd1 VAE".into(), Device::Cpu, Kind::Float);
    let vae = AutoencoderKL::load(&weights.root(), &config).unwrap();
    weights.check_all_used("").unwrap();
    let refs = references("tiny-sd1");
    let diff = max_abs_diff(&tch::no_grad(|| vae.decode(&refs["vae_decode_in"])), &refs["vae_decode_out"]);
    assert!(diff < TOLERANCE, "decode with pre-rename names differs by {diff}");
}
