//! The UNet against diffusers' UNet2DConditionModel on the committed tiny SD 1- and SD 2-style fixtures.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::models::unet::{UNet2DConditionModel, UNetConfig};
use dma::pipelines::source::component_weight_files;
use dma::weights::Weights;
use tch::{Device, Kind, Tensor};

fn load_unet(name: &str, kind: Kind) -> (UNet2DConditionModel, Weights) {
    let dir = fixture(name).join("unet");
    let config = UNetConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&component_weight_files(&dir, "diffusion_pytorch_model").unwrap(), Device::Cpu, kind).unwrap();
    let unet = UNet2DConditionModel::load(&weights.root(), &config).unwrap();
    weights.check_all_used("").unwrap();
    (unet, weights)
}

fn check_unet(name: &str, kind: Kind, tolerance: f64) {
    let refs = references(name);
    let timestep = reference_json(name)["unet_timestep"].as_i64().unwrap();
    let (unet, _) = load_unet(name, kind);
    let sample = refs["unet_sample"].to_kind(kind);
    let context = refs["unet_encoder_hidden_states"].to_kind(kind);
    let t = Tensor::from(timestep);
    let out = tch::no_grad(|| unet.forward(&sample, &t, &context));
    let out_diff = max_abs_diff(&out.sample, &refs["unet_out"]);
    let mid_diff = max_abs_diff(&out.h, &refs["unet_mid"]);
    let h_only = tch::no_grad(|| unet.encode_h(&sample, &t, &context));
    let h_diff = max_abs_diff(&h_only, &refs["unet_mid"]);
    println!("{name} {kind:?}: max |out - ref| {out_diff:.2e}, |mid - ref| {mid_diff:.2e}, |encode_h - ref| {h_diff:.2e}");
    assert!(out_diff < tolerance, "{name}: UNet output differs from diffusers by {out_diff}");
    assert!(mid_diff < tolerance, "{name}: mid-block output differs from diffusers by {mid_diff}");
    assert!(h_diff < tolerance, "{name}: encoder-only h differs from diffusers by {h_diff}");
}

#[test]
fn sd1_unet_matches_diffusers() {
    check_unet("tiny-sd1", Kind::Float, 1e-4);
}

#[test]
fn sd2_unet_matches_diffusers() {
    check_unet("tiny-sd2", Kind::Float, 1e-4);
}

#[test]
fn unet_in_f64_matches_diffusers_f32_within_f32_rounding() {
    check_unet("tiny-sd1", Kind::Double, 1e-4);
}

#[test]
fn unet_runs_in_half_precision_close_to_f32() {
    // bf16 keeps 8 bits of mantissa; the check is that the half-precision path runs and stays near the reference.
    let refs = references("tiny-sd1");
    let (unet, _) = load_unet("tiny-sd1", Kind::BFloat16);
    let out = tch::no_grad(|| unet.forward(&refs["unet_sample"].to_kind(Kind::BFloat16), &Tensor::from(500), &refs["unet_encoder_hidden_states"].to_kind(Kind::BFloat16)));
    let scale = refs["unet_out"].abs().max().double_value(&[]);
    let diff = max_abs_diff(&out.sample, &refs["unet_out"]);
    println!("bf16: max |out - ref| {diff:.3e} (output scale {scale:.3})");
    assert!(diff < 0.05 * scale, "bf16 output off by {diff} (scale {scale})");
}
