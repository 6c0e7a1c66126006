//! The VAE against diffusers' AutoencoderKL on the committed tiny SD 1- and SD 2-style fixtures.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::models::vae::{AutoencoderKL, VaeConfig};
use dma::weights::Weights;
use tch::{Device, Kind};

/// f32 on the CPU against diffusers' f32 on the CPU: only summation order differs.
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

// SCRATCH: against /tmp/dma_ref (diffusers references made before the committed fixtures existed). Remove.
#[test]
fn scratch_against_tmp_refs() {
    use std::path::Path;
    let refs: std::collections::HashMap<_, _> =
        dma::weights::read_safetensors(Path::new("/tmp/dma_ref/refs.safetensors")).unwrap().into_iter().collect();
    for (name, cfg_dir) in [("vae_a", "vae_a"), ("vae_b", "vae_b"), ("vae_a", "vae_a_legacy")] {
        let config = VaeConfig::from_file(&Path::new("/tmp/dma_ref").join(name).join("config.json")).unwrap();
        let weights = Weights::from_files(
            &[Path::new("/tmp/dma_ref").join(cfg_dir).join("diffusion_pytorch_model.safetensors")],
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        let vae = AutoencoderKL::load(&weights.root(), &config).unwrap();
        weights.check_all_used("").unwrap();
        let r = |k: &str| &refs[&format!("{name}_{k}")];
        let d1 = max_abs_diff(&tch::no_grad(|| vae.encode_mean(r("encode_in"))), r("encode_mean"));
        let d2 = max_abs_diff(&tch::no_grad(|| vae.decode(r("decode_in"))), r("decode_out"));
        let d3 = max_abs_diff(
            &tch::no_grad(|| vae.latents_from_images(&(r("encode_in") / 2.0 + 0.5))),
            r("latents_from_images"),
        );
        let d4 = max_abs_diff(&tch::no_grad(|| vae.images_from_latents(r("decode_in"))), r("images_from_latents"));
        println!(
            "{cfg_dir}: enc {d1:.2e} dec {d2:.2e} l_from_i {d3:.2e} i_from_l {d4:.2e} (scale {:.2})",
            r("decode_out").abs().max().double_value(&[])
        );
    }
}
