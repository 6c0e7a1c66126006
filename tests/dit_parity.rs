//! The DiT against diffusers' DiTTransformer2DModel and DiTPipeline on the committed tiny random DiT fixture.
mod common;
use common::{assert_caught, closeness, fixture, fixture_with_edited_tensor, references, Closeness};
use dma::models::dit::{DiTConfig, DiTTransformer2DModel};
use dma::hub::component_weight_files;
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

/// Ten DiT calls in float32, guided (4 (cond - uncond) + uncond) and carried through the steps, then the VAE: the
/// tolerance of tests/pipeline_parity.rs, whose reasoning holds here.
const PIPELINE_RTOL: f64 = 1e-4;

/// DiTPipeline's 10-step guided DDIM run for classes 3 and 7, through the loader a user's folder goes through: each
/// class's latent run on its own, prompted by a name of its class, with guidance `guidance_factor` times the
/// reference's, against diffusers' final latents and images.
fn dit_pipeline_parity(guidance_factor: f64) -> Vec<Closeness> {
    let dir = fixture("tiny-dit");
    let refs = references(&dir);
    let json: serde_json::Value = common::reference_json(&dir);
    let source = dma::loaders::ModelSource::resolve(dir.to_str().unwrap()).unwrap();
    let model = dma::loaders::load(&source, Device::Cpu, Kind::Float).unwrap();
    let mut checks = Vec::new();
    for (row, prompt) in ["Egyptian cat", "UMBRELLA"].iter().enumerate() {
        let settings = dma::pipelines::mental_average::SamplingSettings {
            prompt: prompt.to_string(),
            steps: json["pipeline"]["num_inference_steps"].as_u64().unwrap() as usize,
            guidance: json["pipeline"]["guidance_scale"].as_f64().unwrap() * guidance_factor,
            seed: 0,
            batch: 1,
            use_clipped_model_output: false,
            guidance_interval: None,
        };
        let start = refs["pipeline_start_latents"].narrow(0, row as i64, 1);
        let result = dma::pipelines::mental_average::run(&model, &settings, &start, None, 0, &|_| {}).unwrap();
        let image = model.decode(&result.latents);
        checks.push(closeness(&format!("{prompt} final latents"), &result.latents, &refs["pipeline_final_latents"].narrow(0, row as i64, 1), PIPELINE_RTOL, 0.0));
        checks.push(closeness(&format!("{prompt} image"), &image, &refs["pipeline_images"].narrow(0, row as i64, 1), PIPELINE_RTOL, 0.0));
    }
    checks
}

#[test]
fn dit_pipeline_matches_diffusers() {
    for c in dit_pipeline_parity(1.0) {
        c.check();
    }
}

/// Guidance in the other convention (uncond + (w + 1)(cond - uncond)) fails the run by orders of magnitude.
#[test]
fn guidance_in_the_other_convention_fails_the_dit_pipeline_parity() {
    for c in dit_pipeline_parity(5.0 / 4.0) {
        assert_caught("guidance 5 for 4", &c, 100.0);
    }
}

/// Class names resolve as DiTPipeline.get_label_ids resolves them (whole names; here case-insensitive too), and
/// the errors a user meets name what is wrong.
#[test]
fn class_names_resolve_as_dit_pipeline_s_and_bad_ones_are_refused() {
    let dir = fixture("tiny-dit");
    let refs = references(&dir);
    let json: serde_json::Value = common::reference_json(&dir);
    let model = dma::loaders::load_folder(&dir, Device::Cpu, Kind::Float).unwrap();
    let names: Vec<&str> = json["label_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let want = Vec::<i64>::try_from(&refs["label_ids"]).unwrap();
    for (name, id) in names.iter().zip(want) {
        let dma::models::denoiser::Condition::Class(got) = model.condition(name).unwrap() else { panic!("a DiT's condition is a class") };
        assert_eq!(Vec::<i64>::try_from(&got).unwrap(), [id], "{name}");
    }
    let dma::models::denoiser::Condition::Class(null) = model.condition("").unwrap() else { panic!() };
    assert_eq!(Vec::<i64>::try_from(&null).unwrap(), [1000], "the empty prompt is DiTPipeline's null class");
    let err = model.check_prompt("umbrela").unwrap_err().to_string();
    assert!(err.contains("\"umbrella\" (class 7)"), "{err}");
    assert_eq!(model.class_prompt(5).unwrap(), "great white shark");
    assert_eq!(model.class_prompt(999).unwrap(), "class 999");
    assert!(model.class_prompt(1000).unwrap_err().to_string().contains("classes 0 to 999"));
    let Err(err) = model.text_encoders("Textual Inversion") else { panic!("a DiT has no text encoder") };
    assert!(err.to_string().contains("conditioned on class labels"), "{err}");
}

/// Runs `dma ARGS --quiet --out <tmp>/<out>`: whether it succeeded, its stderr, and the output folder.
fn dma(args: &[&str], tmp: &Path, out: &str) -> (bool, String, std::path::PathBuf) {
    let out = tmp.join(out);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dma")).args(args).arg("--quiet").arg("--out").arg(&out).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).to_string(), out)
}

/// The command line on a DiT folder: a class by name or by --class-id, h after another block, the run record; and
/// each bad input one error naming it, with nothing written.
#[test]
fn dma_average_runs_on_a_dit_folder_and_refuses_bad_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let dit = fixture("tiny-dit");
    let run = |args: &[&str], out: &str| dma(&[&["average", "--latents", "4", "--iters", "5"], args].concat(), tmp.path(), out);
    let model = dit.to_str().unwrap();
    let (ok, stderr, out) = run(&["--model", model, "--class-id", "7", "--hspace-block", "1"], "by-id");
    assert!(ok, "{stderr}");
    let record: serde_json::Value = common::read_json(&out.join("run.json"));
    assert_eq!(record["model"]["family"], "DiT");
    assert_eq!(record["model"]["hspace"], "transformer block 1");
    assert_eq!(record["sampling"]["prompt"], "class 7");
    assert_eq!(record["sampling"]["guidance"], 4.0, "a DiT folder samples with DiTPipeline's guidance by default");
    assert!(out.join("prototype.png").is_file());
    let (ok, stderr, _) = run(&["--model", model, "--prompt", "Umbrella"], "by-name");
    assert!(ok, "{stderr}");
    for (args, says) in [
        (vec!["--model", model, "--prompt", "white sharks"], "the nearest names: \"white shark\" (class 5)"),
        (vec!["--model", model, "--class-id", "1000"], "class 1000 does not exist: this model has classes 0 to 999"),
        (vec!["--model", model, "--prompt", "sandal", "--hspace-block", "3"], "--hspace-block 3: this model has 3 transformer blocks"),
        (vec!["--model", fixture("tiny-sd1").to_str().unwrap(), "--class-id", "3"], "--class-id 3: this model takes a text --prompt"),
    ] {
        let (ok, stderr, out) = run(&args, "bad");
        assert!(!ok && stderr.contains(says) && stderr.lines().count() == 1, "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}: the refused run left {}", out.display());
    }
}

/// `dma sample` on a DiT folder by class name; and a DiT folder without class names (no `id2label`, as a user's own
/// training may save it): a name is refused with the way out (--class-id), which then works.
#[test]
fn dma_sample_runs_on_a_dit_folder_and_one_without_class_names_takes_class_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = |model: &Path, class: [&str; 2], out: &str| {
        dma(&[&["sample", "--num", "2", "--steps", "2", "--model", model.to_str().unwrap()], &class[..]].concat(), tmp.path(), out)
    };
    let (ok, stderr, out) = sample(&fixture("tiny-dit"), ["--prompt", "UMBRELLA"], "named");
    assert!(ok, "{stderr}");
    let record: serde_json::Value = common::read_json(&out.join("run.json"));
    assert_eq!((record["model"]["family"].as_str(), record["sampling"]["prompt"].as_str()), (Some("DiT"), Some("UMBRELLA")));
    assert!(out.join("grid.png").is_file() && !out.join("prototype.png").exists(), "samples, no prototype");

    let unnamed = tmp.path().join("unnamed-dit");
    common::copy_dir(&fixture("tiny-dit"), &unnamed);
    let mut index: serde_json::Value = common::read_json(&unnamed.join("model_index.json"));
    index.as_object_mut().unwrap().remove("id2label").expect("the fixture names its classes");
    std::fs::write(unnamed.join("model_index.json"), serde_json::to_string(&index).unwrap()).unwrap();
    let (ok, stderr, out) = sample(&unnamed, ["--prompt", "umbrella"], "refused");
    assert!(!ok && stderr.contains("has no class names") && stderr.contains("--class-id N") && stderr.lines().count() == 1, "{stderr}");
    assert!(!out.exists(), "the refused run left {}", out.display());
    let (ok, stderr, out) = sample(&unnamed, ["--class-id", "7"], "by-id");
    assert!(ok, "{stderr}");
    assert_eq!(common::read_json(&out.join("run.json"))["sampling"]["prompt"], "class 7");
}
