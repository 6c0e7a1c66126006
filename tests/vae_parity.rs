//! The VAE against diffusers' AutoencoderKL on the committed tiny SD 1- and SD 2-style fixtures.
mod common;
use common::{assert_caught, assert_close, closeness, fixture, fixture_with_edited_tensor, reference_json, references, Closeness};
use dma::models::vae::{AutoencoderKL, VaeConfig};
use dma::weights::{read_safetensors, Weights};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// float32 on the CPU against diffusers in float32 on the CPU, relative to the output's largest magnitude. Another
/// CPU or build rounds the convolutions' and the attention's sums in another order (oneDNN and MKL block them by
/// the vector width), eps_f32 * sqrt(depth) of each layer's magnitude. Measured: the same libtorch on the same CPU
/// agrees exactly; other kernel paths here (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA, one
/// thread) move the decoded image by at most RTOL / 16 (BENCHMARKS.md, "Parity tests: tolerances and margins").
const RTOL: f64 = 3e-5;

fn load_vae(dir: &Path) -> AutoencoderKL {
    let dir = dir.join("vae");
    let config = VaeConfig::from_file(&dir.join("config.json")).unwrap();
    let weights =
        Weights::from_files(&[dir.join("diffusion_pytorch_model.safetensors")], Device::Cpu, Kind::Float).unwrap();
    let vae = AutoencoderKL::load(&weights.root(), &config).unwrap();
    weights.check_all_used("").unwrap();
    vae
}

/// The VAE of the fixture folder `dir` against diffusers' decode and encoder mean.
fn vae_parity(dir: &Path) -> Vec<Closeness> {
    let refs = references(dir);
    let vae = load_vae(dir);
    let decoded = tch::no_grad(|| vae.decode(&refs["vae_decode_in"]));
    let encoded = tch::no_grad(|| vae.encode_mean(&refs["vae_encode_in"]));
    let name = dir.file_name().unwrap().to_string_lossy();
    vec![
        closeness(&format!("{name} decode"), &decoded, &refs["vae_decode_out"], RTOL, 0.0),
        closeness(&format!("{name} encoder mean"), &encoded, &refs["vae_encode_mean"], RTOL, 0.0),
    ]
}

fn check_vae(name: &str) {
    for c in vae_parity(&fixture(name)) {
        c.check();
    }
}

#[test]
fn sd1_vae_matches_diffusers() {
    check_vae("tiny-sd1");
}

#[test]
fn sd2_vae_matches_diffusers() {
    check_vae("tiny-sd2");
}

/// The tolerance still catches a slightly wrong weight: each half's input convolution 1% too large fails decode
/// and encode by orders of magnitude (BENCHMARKS.md, "Parity tests: tolerances and margins").
#[test]
fn a_weight_one_percent_off_fails_the_vae_parity_by_orders_of_magnitude() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-sd1", "tiny-sd2"] {
        for (i, key) in ["decoder.conv_in.weight", "encoder.conv_in.weight"].into_iter().enumerate() {
            let file = "vae/diffusion_pytorch_model.safetensors";
            let dir = fixture_with_edited_tensor(&tmp.path().join(i.to_string()), name, file, key, |w| w * 1.01);
            let c = &vae_parity(&dir)[i];
            assert_caught(&format!("{key} x 1.01"), c, 100.0);
        }
    }
}

#[test]
fn images_from_latents_matches_the_pipelines_image() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let refs = references(name);
        let vae = load_vae(&fixture(name));
        let images = tch::no_grad(|| vae.images_from_latents(&refs["pipeline_final_latents"]));
        assert_close(&format!("{name} images_from_latents(final latents)"), &images, &refs["pipeline_image"], RTOL, 0.0);
    }
}

#[test]
fn latents_from_images_is_the_scaled_encoder_mean() {
    let refs = references("tiny-sd1");
    let scaling_factor = reference_json("tiny-sd1")["scaling_factor"].as_f64().unwrap();
    let vae = load_vae(&fixture("tiny-sd1"));
    let latents = tch::no_grad(|| vae.latents_from_images(&(&refs["vae_encode_in"] / 2.0 + 0.5)));
    // The image's [0, 1] -> [-1, 1] mapping and the scaling are two more float32 roundings than the encoder.
    assert_close("latents_from_images", &latents, &(&refs["vae_encode_mean"] * scaling_factor), RTOL, 0.0);
}

#[test]
fn vae_is_differentiable() {
    let refs = references("tiny-sd1");
    let vae = load_vae(&fixture("tiny-sd1"));
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
    let decoded = tch::no_grad(|| vae.decode(&refs["vae_decode_in"]));
    assert_close("decode with pre-rename names", &decoded, &refs["vae_decode_out"], RTOL, 0.0);
}
