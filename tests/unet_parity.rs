//! The UNet against diffusers' UNet2DConditionModel on the committed tiny SD 1- and SD 2-style fixtures.
mod common;
use common::{assert_caught, closeness, fixture, fixture_with_edited_tensor, reference_json, references, Closeness};
use dma::models::unet::{UNet2DConditionModel, UNetConfig};
use dma::hub::component_weight_files;
use dma::weights::Weights;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// float32 through the UNet's ~40 convolutions, matmuls, attentions and norms, against diffusers in float32.
/// Another CPU or build (MKL's sgemm and oneDNN's convolutions block their sums by the CPU's vector width, fuse
/// multiply-adds or not) rounds each layer's sums differently, about eps_f32 * sqrt(depth) of the layer's magnitude
/// each. Measured: the reference's own float32 rounding (a float64 run against it) is 8e-7 of the output's largest
/// magnitude, and other kernel paths on one CPU (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA,
/// one thread) move it by at most 1.8e-6 of it. 3e-5 of the largest magnitude (250 ulps) is 16 times that.
const RTOL: f64 = 3e-5;

fn load_unet(dir: &Path, kind: Kind) -> (UNet2DConditionModel, Weights) {
    let dir = dir.join("unet");
    let config = UNetConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&component_weight_files(&dir, "diffusion_pytorch_model").unwrap(), Device::Cpu, kind).unwrap();
    let unet = UNet2DConditionModel::load(&weights.root(), &config).unwrap();
    weights.check_all_used("").unwrap();
    (unet, weights)
}

/// The UNet of the fixture folder `dir` in `kind`, against diffusers' output, mid-block output (h) and h alone.
fn unet_parity(dir: &Path, kind: Kind) -> Vec<Closeness> {
    let refs = references(dir);
    let timestep = reference_json(dir)["unet_timestep"].as_i64().unwrap();
    let (unet, _) = load_unet(dir, kind);
    let sample = refs["unet_sample"].to_kind(kind);
    let context = refs["unet_encoder_hidden_states"].to_kind(kind);
    let t = Tensor::from(timestep);
    let out = tch::no_grad(|| unet.forward(&sample, &t, &context, None, None));
    let h_only = tch::no_grad(|| unet.encode_h(&sample, &t, &context, None, None));
    let name = dir.file_name().unwrap().to_string_lossy();
    vec![
        closeness(&format!("{name} {kind:?} UNet output"), &out.sample, &refs["unet_out"], RTOL, 0.0),
        closeness(&format!("{name} {kind:?} mid-block output (h)"), &out.h, &refs["unet_mid"], RTOL, 0.0),
        closeness(&format!("{name} {kind:?} encoder-only h"), &h_only, &refs["unet_mid"], RTOL, 0.0),
    ]
}

fn check_unet(name: &str, kind: Kind) {
    for c in unet_parity(&fixture(name), kind) {
        c.check();
    }
}

#[test]
fn sd1_unet_matches_diffusers() {
    check_unet("tiny-sd1", Kind::Float);
}

#[test]
fn sd2_unet_matches_diffusers() {
    check_unet("tiny-sd2", Kind::Float);
}

#[test]
fn unet_in_f64_matches_diffusers_f32_within_f32_rounding() {
    check_unet("tiny-sd1", Kind::Double);
}

/// The tolerance still catches a slightly wrong weight: the input convolution 1% too large fails the output and h
/// by two orders of magnitude or more (BENCHMARKS.md, "Parity tests: tolerances and margins").
#[test]
fn a_weight_one_percent_off_fails_the_unet_parity_by_orders_of_magnitude() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-sd1", "tiny-sd2"] {
        let file = "unet/diffusion_pytorch_model.safetensors";
        let dir = fixture_with_edited_tensor(tmp.path(), name, file, "conv_in.weight", |w| w * 1.01);
        for c in unet_parity(&dir, Kind::Float) {
            assert_caught("conv_in.weight x 1.01", &c, 100.0);
        }
    }
}

#[test]
fn unet_runs_in_half_precision_close_to_f32() {
    // bfloat16 rounds every weight and activation to 8 significant bits (2^-9 relative each): over the UNet's
    // layers that is measured at 2.9% of the output's largest magnitude. Whether a CPU has native bfloat16 dot
    // products (AVX512-BF16, AMX) or widens to float32 changes which sums are rounded, not how coarsely; 10% of the
    // scale holds that with room, and a wrong kernel would be off by the whole scale.
    let refs = references("tiny-sd1");
    let (unet, _) = load_unet(&fixture("tiny-sd1"), Kind::BFloat16);
    let out = tch::no_grad(|| unet.forward(&refs["unet_sample"].to_kind(Kind::BFloat16), &Tensor::from(500), &refs["unet_encoder_hidden_states"].to_kind(Kind::BFloat16), None, None));
    common::assert_close("bf16 UNet output", &out.sample, &refs["unet_out"], 0.1, 0.0);
}

/// h read after a down block (`--hspace-block`): the encoder path stops there and gives what the full pass saw at
/// that point (down block i's output: its width, at the latent's size halved after each block but the last), and
/// the full pass's output is unchanged by where h is read.
#[test]
fn h_after_a_down_block_is_that_block_s_output_on_both_paths() {
    let dir = fixture("tiny-sd1");
    let refs = references(&dir);
    let (unet, _) = load_unet(&dir, Kind::Float);
    let (sample, context) = (&refs["unet_sample"], &refs["unet_encoder_hidden_states"]);
    let t = Tensor::from(reference_json(&dir)["unet_timestep"].as_i64().unwrap());
    let (b, _, side, _) = sample.size4().unwrap();
    let levels = unet.config.block_out_channels.len();
    let mut shapes = Vec::new();
    for block in 0..levels {
        let encoder = tch::no_grad(|| unet.encode_h(sample, &t, context, None, Some(block)));
        let full = tch::no_grad(|| unet.forward(sample, &t, context, None, Some(block)));
        assert!(encoder.equal(&full.h), "block {block}: the encoder path's h differs from the full pass's");
        assert!(full.sample.equal(&tch::no_grad(|| unet.forward(sample, &t, context, None, None)).sample), "block {block}: the output changed");
        let halvings = block.min(levels - 2) as i64 + 1;
        let side = side >> halvings.min(levels as i64 - 1);
        assert_eq!(encoder.size(), [b, unet.config.block_out_channels[block], side, side], "block {block}");
        // What memory estimates count per latent (`pipelines/memory.rs`) is what the block gives.
        assert_eq!(unet.config.h_elements([sample.size()[2], sample.size()[3]], Some(block)), (encoder.numel() as i64 / b) as f64, "block {block}");
        shapes.push(encoder.size());
    }
    assert_ne!(shapes[0], shapes[levels - 1]);
    let mid = tch::no_grad(|| unet.encode_h(sample, &t, context, None, None));
    assert_eq!(unet.config.h_elements([side, side], None), (mid.numel() as i64 / b) as f64, "the mid block");
}
