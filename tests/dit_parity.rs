//! The DiT against diffusers' DiTTransformer2DModel and DiTPipeline on the committed tiny random DiT fixture.
mod common;
use common::{assert_caught, closeness, fixture, fixture_with_edited_tensor, references, Closeness};
use dma::models::dit::{DiTConfig, DiTTransformer2DModel};
use dma::loaders::source::component_weight_files;
use dma::weights::Weights;
use std::path::Path;
use tch::{Device, Kind};

/// float32 through three blocks of attention, MLPs and modulated norms against diffusers in float32: the same
/// reasoning and figure as the UNet's (tests/unet_parity.rs), a few ulps of rounding per layer on any CPU.
const RTOL: f64 = 3e-5;

fn load_dit(dir: &Path, config_file: &str, kind: Kind) -> DiTTransformer2DModel {
    let config = DiTConfig::from_file(&dir.join(config_file)).unwrap();
    let files = component_weight_files(&dir.join("transformer"), "diffusion_pytorch_model").unwrap();
    let weights = Weights::from_files(&files, Device::Cpu, kind).unwrap();
    let dit = DiTTransformer2DModel::load(&weights.root(), &config).unwrap();
    weights.check_all_used("").unwrap();
    dit
}

/// The transformer's output, every block's output as h (`h_block`) and the encoder-only h, against diffusers.
fn dit_parity(dir: &Path, config_file: &str, kind: Kind) -> Vec<Closeness> {
    let refs = references(dir);
    let dit = load_dit(dir, config_file, kind);
    let (sample, t, labels) = (refs["transformer_sample"].to_kind(kind), &refs["transformer_timesteps"], &refs["transformer_class_labels"]);
    let out = tch::no_grad(|| dit.forward(&sample, t, labels, None));
    let last = dit.transformer_blocks.len() - 1;
    let mut checks = vec![
        closeness(&format!("{kind:?} DiT output"), &out.sample, &refs["transformer_out"], RTOL, 0.0),
        closeness(&format!("{kind:?} h (last block)"), &out.h, &refs[&format!("block_outputs_{last}")], RTOL, 0.0),
    ];
    for block in 0..=last {
        let h = tch::no_grad(|| dit.encode_h(&sample, t, labels, Some(block)));
        checks.push(closeness(&format!("{kind:?} encoder-only h after block {block}"), &h, &refs[&format!("block_outputs_{block}")], RTOL, 0.0));
        let full = tch::no_grad(|| dit.forward(&sample, t, labels, Some(block)));
        checks.push(closeness(&format!("{kind:?} output with h after block {block}"), &full.sample, &refs["transformer_out"], RTOL, 0.0));
    }
    checks
}

#[test]
fn dit_matches_diffusers() {
    for c in dit_parity(&fixture("tiny-dit"), "transformer/config.json", Kind::Float) {
        c.check();
    }
}

#[test]
fn dit_in_f64_matches_diffusers_f32_within_f32_rounding() {
    for c in dit_parity(&fixture("tiny-dit"), "transformer/config.json", Kind::Double) {
        c.check();
    }
}

/// Older DiT folders call the class Transformer2DModel, with its extra keys (checked in the fixture script to load
/// into diffusers' Transformer2DModel with the same output).
#[test]
fn a_legacy_transformer2dmodel_config_loads_the_same_dit() {
    for c in dit_parity(&fixture("tiny-dit"), "legacy_transformer_config.json", Kind::Float) {
        c.check();
    }
}

/// The tolerance catches a slightly wrong weight: the patch projection 1% too large, or one class's row of one
/// block's label table 1% off (only the samples of that class move).
#[test]
fn a_weight_one_percent_off_fails_the_dit_parity_by_orders_of_magnitude() {
    let tmp = tempfile::tempdir().unwrap();
    let file = "transformer/diffusion_pytorch_model.safetensors";
    let dir = fixture_with_edited_tensor(tmp.path(), "tiny-dit", file, "pos_embed.proj.weight", |w| w * 1.01);
    for c in dit_parity(&dir, "transformer/config.json", Kind::Float) {
        assert_caught("pos_embed.proj.weight x 1.01", &c, 100.0);
    }
    let table = "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight";
    let dir = fixture_with_edited_tensor(&tmp.path().join("row"), "tiny-dit", file, table, |w| {
        let w = w.copy();
        let _ = w.get(7).g_mul_scalar_(1.01);
        w
    });
    let checks = dit_parity(&dir, "transformer/config.json", Kind::Float);
    assert_caught("class 7's label row x 1.01", &checks[0], 100.0);
}

#[test]
fn config_settings_a_dit_cannot_honour_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let original: serde_json::Value = common::read_json(&fixture("tiny-dit").join("transformer/config.json"));
    for (key, value, says) in [
        ("norm_type", serde_json::json!("ada_norm"), "norm_type"),
        ("out_channels", serde_json::json!(5), "out_channels"),
        ("cross_attention_dim", serde_json::json!(32), "cross_attention_dim"),
        ("_class_name", serde_json::json!("UNet2DConditionModel"), "_class_name"),
        ("num_embeds_ada_norm", serde_json::Value::Null, "num_embeds_ada_norm"),
        ("sample_size", serde_json::json!(7), "sample_size"),
    ] {
        let mut config = original.clone();
        config[key] = value;
        let path = tmp.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let err = format!("{:#}", DiTConfig::from_file(&path).unwrap_err());
        assert!(err.contains(says) && err.contains("config.json"), "{key}: {err}");
    }
}
