//! The embedded model as a user meets it: `dma average` with no --model, the prototype of its class, and clear
//! errors for words it does not know and for a broken model folder.
mod common;
use dma::distributed::Ranks;
use dma::data::captions::class_captions;
use dma::data::class_names;
use dma::evaluation::zero_shot::ZeroShot;
use dma::loaders::run_defaults;
use dma::method::{AlignSettings, HBranch};
use dma::pipelines::mental_average::{prototype_index, run, seeded_latents, SamplingSettings};
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use dma::training::embedded::Network;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind};

fn embedded_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join("embedded")
}

/// DMA on the embedded model for `class`'s first caption at the model's sampling defaults (8 latents, 6 aligned
/// steps of at most 15 iterations):
/// the spread of h shrinks at every aligned step; returns the prototype image.
fn embedded_prototype(model: &DiffusionModel, dir: &Path, class: usize) -> tch::Tensor {
    let prompt = class_captions(class)[0].clone();
    let defaults = run_defaults(&ModelSource::Folder(dir.to_path_buf())).unwrap();
    let settings = SamplingSettings { batch: 8, ..defaults.sampling(&prompt, 0) };
    let align = AlignSettings { align_steps: 6, iters: 15, lr: 2e-2, tol: 0.01, window: 5, ..AlignSettings::paper(HBranch::Cond) };
    let mut result = run(model, &settings, &seeded_latents(model, 8, 0), Some(&align), 0, &|_| {}).unwrap();
    assert_eq!(result.log.len(), 6);
    for step in &result.log {
        assert!(step.spread_after < step.spread_before, "{prompt}: step {} did not shrink the spread of h: {step:?}", step.step);
    }
    let index = prototype_index(model, &settings, &align, &mut result, Ranks::alone()).unwrap();
    model.decode(&result.latents.narrow(0, index, 1))
}

/// The embedded DiT, trained on the same images with the classes and broad concepts as its labels.
fn embedded_dit_dir() -> PathBuf {
    embedded_dir().join("dit")
}

fn load(dir: &Path) -> DiffusionModel {
    dma::loaders::load(&ModelSource::Folder(dir.to_path_buf()), Device::Cpu, Kind::Float).unwrap()
}

/// DMA on the model in `dir` gives, for a sneaker and a seven, a prototype the embedded CLIP puts in that class
/// (and the spread of h falls at each aligned step).
fn assert_prototypes_have_their_class(dir: &Path) {
    let model = load(dir);
    let classifier = ZeroShot::embedded(&embedded_dir().join("clip"), Device::Cpu).unwrap();
    let names = class_names();
    for class in [7, 17] {
        let predicted = classifier.classify(&embedded_prototype(&model, dir, class)).unwrap()[0];
        assert_eq!(names[predicted], names[class], "{}: the prototype of class {} looks like a {}", dir.display(), names[class], names[predicted]);
    }
}

#[test]
fn the_embedded_prototype_has_the_prompts_class() {
    let _rng = common::global_rng();
    assert_prototypes_have_their_class(&embedded_dir());
}

#[test]
fn the_embedded_dit_prototype_has_the_prompts_class() {
    let _rng = common::global_rng();
    assert_prototypes_have_their_class(&embedded_dit_dir());
}

/// `dma average --prompt footwear` with `model_flag` (none, or e.g. `--model embedded-dit`) runs on the binary's
/// own copy of the embedded model folder `dir` (unpacked into the cache) with that folder's defaults; `weights` is
/// the network's weight file inside `dir`.
fn assert_main_command_runs_on(model_flag: &[&str], dir: &Path, weights: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--prompt", "footwear", "--latents", "4", "--iters", "5", "--quiet", "--out"])
        .arg(&out)
        .args(model_flag)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run = common::read_json(&out.join("run.json"));
    assert!(run["model"]["source"].as_str().unwrap().contains("embedded-model-"), "{}", run["model"]["source"]);
    let shipped: Vec<String> = run["model"]["weight_files"].as_array().unwrap().iter().map(|f| f["sha256"].as_str().unwrap().to_string()).collect();
    let network = dma::pipelines::model::sha256_file(&dir.join(weights)).unwrap();
    assert!(shipped.contains(&network), "the run used the repository's {weights} in {}", dir.display());
    let defaults = run_defaults(&ModelSource::Folder(dir.to_path_buf())).unwrap();
    assert_eq!(run["sampling"]["guidance"], defaults.guidance, "the embedded model's own defaults apply");
    assert_eq!(run["sampling"]["guidance_interval"], serde_json::to_value(defaults.guidance_interval).unwrap());
    assert_eq!(run["sampling"]["use_clipped_model_output"], true);
    assert!(out.join("prototype.png").is_file());
}

#[test]
fn the_main_command_runs_without_a_model_argument() {
    let _rng = common::global_rng();
    assert_main_command_runs_on(&[], &embedded_dir(), "unet/diffusion_pytorch_model.safetensors");
}

#[test]
fn the_embedded_dit_runs_by_name() {
    let _rng = common::global_rng();
    assert_main_command_runs_on(&["--model", "embedded-dit"], &embedded_dit_dir(), "transformer/diffusion_pytorch_model.safetensors");
}

/// `compare --models embedded,embedded-dit`: the two shipped families side by side, each from the binary's own copy.
#[test]
fn the_two_embedded_models_compare_by_name() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["compare", "--models", "embedded,embedded-dit", "--prompt", "a sneaker", "--seeds", "1", "--samples", "4", "--latents", "4", "--iters", "2", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run = common::read_json(&out.join("run.json"));
    let models = run["models"].as_array().unwrap();
    let families: Vec<&str> = models.iter().map(|m| m["model"]["family"].as_str().unwrap()).collect();
    assert_eq!(families, ["UNet", "DiT"]);
    let sources: Vec<&str> = models.iter().map(|m| m["model"]["source"].as_str().unwrap()).collect();
    assert!(sources.iter().all(|s| s.contains("embedded-model-")) && sources[1].ends_with("dit"), "{sources:?}");
}

#[test]
fn an_unknown_word_is_an_error_listing_the_vocabulary() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--prompt", "a photo of a giraffe", "--quiet", "--out"])
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("giraffe") && err.contains("sneaker") && err.contains("footwear"), "{err}");
    assert!(!tmp.path().join("out").exists());
}

/// A copy of the embedded model (links to its parts) whose unet folder holds its config and, when given,
/// `weights` as its safetensors file; `dma sample` on it must fail: returns its stderr.
fn sample_with_unet_weights(weights: Option<&[u8]>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(model.join("unet")).unwrap();
    for entry in std::fs::read_dir(embedded_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "unet" {
            std::os::unix::fs::symlink(entry.path(), model.join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(embedded_dir().join("unet/config.json"), model.join("unet/config.json")).unwrap();
    if let Some(bytes) = weights {
        std::fs::write(model.join("unet/diffusion_pytorch_model.safetensors"), bytes).unwrap();
    }
    let out = tmp.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["sample", "--model", model.to_str().unwrap(), "--prompt", "a sneaker", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(!out.exists(), "a failed run left an output folder");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_embedded_model_folder_without_weights_fails_clearly() {
    let _rng = common::global_rng();
    let err = sample_with_unet_weights(None);
    assert!(err.contains("unet") && err.contains("no weights found"), "{err}");
}

#[test]
fn an_embedded_model_folder_with_a_corrupt_weights_file_fails_clearly() {
    let _rng = common::global_rng();
    let weights = std::fs::read(embedded_dir().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    for corrupt in [&weights[..weights.len() / 3], &b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"[..]] {
        let err = sample_with_unet_weights(Some(corrupt));
        assert!(err.contains("unet/diffusion_pytorch_model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    }
}

/// `dma train` writes dma_defaults.json from the recipe; the committed files must say the same.
#[test]
fn the_committed_run_defaults_are_the_recipe_s() {
    for (dir, network) in [(embedded_dir(), Network::Unet), (embedded_dit_dir(), Network::Dit)] {
        let committed = run_defaults(&ModelSource::Folder(dir.clone())).unwrap();
        assert_eq!(committed, dma::training::embedded::run_defaults(network), "{}", dir.display());
    }
}
