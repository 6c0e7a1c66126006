//! The CLIP model (both towers, projections, zero-shot) and its image preprocessing against transformers' CLIPModel
//! and CLIPImageProcessor, on the tiny RGB and grayscale models of tests/fixtures/tiny-clip (built by
//! scripts/make_clip_fixture.py).
mod common;
use common::{assert_caught, closeness, fixture, fixture_with_edited_tensor, max_abs_diff, reference_json, references, Closeness, EPS_F32};
use dma::models::clip::{ClipConfig, ClipModel};
use dma::models::clip_vision::{ClipVisionConfig, ClipVisionTransformer};
use dma::models::tokenizer::ClipTokenizer;
use dma::weights::{read_safetensors, Weights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn rgb() -> PathBuf {
    fixture("tiny-clip")
}

fn gray() -> PathBuf {
    fixture("tiny-clip").join("grayscale")
}

/// The model's input: the processor outputs named in reference.json, concatenated along the batch.
fn pixel_values(dir: &Path) -> Tensor {
    let refs = references(dir);
    let names = reference_json(dir)["model_inputs"].as_array().unwrap().clone();
    Tensor::cat(&names.iter().map(|n| &refs[&format!("{}_pixel_values", n.as_str().unwrap())]).collect::<Vec<_>>(), 0)
}

/// float32 through both towers (2 layers each, matmuls of depth 16 to 64), the projections and the scaled cosine
/// logits, against transformers in float32, relative to each output's largest magnitude (the logits carry
/// exp(logit_scale) = 20 in it). Another CPU or BLAS rounds the sums in another order; measured: the reference's
/// own float32 rounding (a float64 run against it) is at most 3e-7 of the scale, other kernel paths on one CPU
/// move it by at most RTOL / 16 (BENCHMARKS.md, "Parity tests: tolerances and margins").
const RTOL: f64 = 1e-5;

fn check(name: &str, got: &Tensor, want: &Tensor) {
    closeness(name, got, want, RTOL, 0.0).check();
}

/// Both towers, the projections and the logits of the model folder `dir` in `kind`, against transformers (which
/// ran in float32).
fn model_parity(dir: &Path, label: &str, kind: Kind) -> Vec<Closeness> {
    let refs = references(dir);
    let pixels = pixel_values(dir);
    let ids = &refs["input_ids"];
    let model = ClipModel::load(dir, Device::Cpu, kind).unwrap();
    let (image, text, logits) =
        tch::no_grad(|| (model.image_embeds(&pixels), model.text_embeds(ids), model.logits_per_image(&pixels, ids)));
    assert_eq!(image.kind(), kind);
    vec![
        closeness(&format!("{label} {kind:?} image_embeds"), &image, &refs["image_embeds"], RTOL, 0.0),
        closeness(&format!("{label} {kind:?} text_embeds"), &text, &refs["text_embeds"], RTOL, 0.0),
        closeness(&format!("{label} {kind:?} logits_per_image"), &logits, &refs["logits_per_image"], RTOL, 0.0),
    ]
}

/// In float32 and float64.
fn check_model(dir: &Path, label: &str) {
    for kind in [Kind::Float, Kind::Double] {
        for c in model_parity(dir, label, kind) {
            c.check();
        }
    }
}

/// The vision tower alone, from the CLIPModel checkpoint (keys under `vision_model.`, with `position_ids`).
fn check_vision_tower(dir: &Path, label: &str) {
    let refs = references(dir);
    let cfg = ClipVisionConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&[dir.join("model.safetensors")], Device::Cpu, Kind::Float).unwrap();
    let vision = ClipVisionTransformer::load(&weights.root(), &cfg).unwrap();
    weights.check_all_used("vision_model.").unwrap();
    let hidden = tch::no_grad(|| vision.forward(&pixel_values(dir)));
    check(&format!("{label} vision last_hidden_state"), &hidden, &refs["vision_last_hidden_state"]);
    check(&format!("{label} vision pooled"), &vision.pooled(&hidden), &refs["vision_pooled"]);
}

/// Every raw image through `preprocess` against CLIPImageProcessor (PIL backend). The gap is PIL's 8-bit rounding
/// of its two resize passes, which the Rust code leaves out: at most `preprocess_tolerance_grey_levels` of 1/255
/// before normalisation (see scripts/make_clip_fixture.py). That rounding is fixed by the fixture; this side's
/// float32 arithmetic varies between machines by about 1e-6, a thousandth of the room left (measured gap 1.5e-2 to
/// 1.6e-2 against 1.9e-2 to 2.0e-2).
fn check_preprocess(dir: &Path, label: &str, min_std: f64) {
    let refs = references(dir);
    let info = reference_json(dir);
    let tolerance = info["preprocess_tolerance_grey_levels"].as_f64().unwrap() / 255.0 / min_std;
    let model = ClipModel::load(dir, Device::Cpu, Kind::Float).unwrap();
    for (name, gap) in info["preprocess_gap"].as_object().unwrap() {
        let out = model.preprocess(&refs[&format!("{name}_raw")]).unwrap();
        let want = &refs[&format!("{name}_pixel_values")];
        let recorded = gap["max_abs_diff"].as_f64().unwrap();
        println!("{label} preprocess {name}: libtorch emulation in the fixture script was {recorded:.2e} from PIL");
        closeness(&format!("{label} preprocess {name}"), &out, want, 0.0, tolerance).check();
    }
}

#[test]
fn rgb_model_matches_transformers() {
    check_model(&rgb(), "rgb");
}

#[test]
fn grayscale_model_matches_transformers() {
    check_model(&gray(), "gray");
}

/// The tolerance still catches a slightly wrong weight: the vision tower's first query projection 1% too large
/// fails the image embeddings and the logits by orders of magnitude (BENCHMARKS.md, "Parity tests: tolerances and
/// margins"); the text embeddings, which it does not touch, still pass. (A uniform error in a projection would not
/// do: the embeddings are normalised.)
/// The tolerance still catches a slightly wrong weight: the vision tower's first MLP projection 1% too large
/// fails the image embeddings and the logits by orders of magnitude (BENCHMARKS.md, "Parity tests: tolerances and
/// margins"); the text embeddings, which it does not touch, still pass. (A uniform error in the final projection
/// would not do: the embeddings are normalised.)
#[test]
fn a_weight_one_percent_off_fails_the_clip_model_parity_by_orders_of_magnitude() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "vision_model.encoder.layers.0.mlp.fc1.weight";
    for (name, label) in [("tiny-clip", "rgb"), ("tiny-clip/grayscale", "gray")] {
        let dir = fixture_with_edited_tensor(tmp.path(), name, "model.safetensors", key, |w| w * 1.01);
        let [image, text, logits] = <[Closeness; 3]>::try_from(model_parity(&dir, label, Kind::Float)).unwrap();
        assert_caught(&format!("{key} x 1.01"), &image, 100.0);
        assert_caught(&format!("{key} x 1.01"), &logits, 100.0);
        text.check();
    }
}

#[test]
fn vision_towers_match_transformers() {
    check_vision_tower(&rgb(), "rgb");
    check_vision_tower(&gray(), "gray");
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    // OpenAI's std (transformers 5 preprocessor_config.json); 0.25 (older plain-number style, one channel).
    check_preprocess(&rgb(), "rgb", 0.26130258);
    check_preprocess(&gray(), "gray", 0.25);
}

#[test]
fn prompts_tokenize_as_in_the_fixture() {
    let tok = ClipTokenizer::from_folder(&rgb().join("tokenizer")).unwrap();
    let prompts = reference_json(&rgb())["prompts"].as_array().unwrap().clone();
    let ids: Vec<Tensor> = prompts.iter().map(|p| Tensor::from_slice(&tok.encode(p.as_str().unwrap()))).collect();
    assert_eq!(Tensor::stack(&ids, 0), references(&rgb())["input_ids"]);
}

#[test]
fn zero_shot_probabilities_are_the_softmax_of_the_logits() {
    for dir in [rgb(), gray()] {
        let refs = references(&dir);
        let model = ClipModel::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let probs = tch::no_grad(|| model.zero_shot(&pixel_values(&dir), &refs["input_ids"]));
        let sums = probs.sum_dim_intlist(-1, false, Kind::Double);
        let off = (sums - 1.0).abs().max().double_value(&[]);
        println!("{}: rows of zero_shot sum to 1 within {off:.1e}", dir.display());
        // Each float32 probability is rounded a few times (exp, sum, division): 8 ulps of 1 for the row's sum.
        assert!(off < 8.0 * EPS_F32, "probabilities do not sum to 1: off by {off}");
        check("zero_shot", &probs, &refs["logits_per_image"].softmax(-1, Kind::Float));
    }
}

#[test]
fn grayscale_and_rgb_images_convert_to_the_model_channels() {
    let refs = references(&gray());
    let model = ClipModel::load(&gray(), Device::Cpu, Kind::Float).unwrap();
    // RGB into the grayscale model: PIL's luma, then as a grayscale image.
    let gray_raw = refs["downscale_raw"].narrow(0, 0, 1);
    let tint = Tensor::from_slice(&[1.0f32, 0.9, 0.7]).view([1, 3, 1, 1]);
    let rgb_raw = &gray_raw * &tint;
    let luma = (&gray_raw * (0.299 * 1.0 + 0.587 * 0.9 + 0.114 * 0.7)).to_kind(Kind::Float);
    // The model's weighted sum of the channels and the test's, each rounded to float32, then resized and divided
    // by the std (0.25): a few ulps of the normalised values.
    let (converted, gray_input) = (model.preprocess(&rgb_raw).unwrap(), model.preprocess(&luma).unwrap());
    check("RGB converted to gray", &converted, &gray_input);
    // Other channel counts are refused.
    let err = format!("{:#}", model.preprocess(&Tensor::zeros([1, 4, 32, 32], (Kind::Float, Device::Cpu))).unwrap_err());
    assert!(err.contains("4-channel"), "{err}");
}

#[test]
fn vision_tower_loads_keys_without_the_prefix() {
    // transformers >= 5.6 saves a lone CLIPVisionModel without `vision_model.`.
    let dir = rgb();
    let tensors: HashMap<String, Tensor> = read_safetensors(&dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("vision_model.").map(|k| (k.to_string(), v)))
        .collect();
    let weights = Weights::from_tensors(tensors, "prefix-less".into(), Device::Cpu, Kind::Float);
    let vision = ClipVisionTransformer::load(&weights.root(), &ClipVisionConfig::from_file(&dir.join("config.json")).unwrap())
        .unwrap();
    weights.check_all_used("").unwrap();
    let pooled = tch::no_grad(|| vision.pooled(&vision.forward(&pixel_values(&dir))));
    check("prefix-less vision pooled", &pooled, &references(&dir)["vision_pooled"]);
}

/// A copy of the RGB fixture's model files in a temporary folder, with config.json and preprocessor_config.json
/// edited by `edit`.
fn edited_copy(edit: impl Fn(&mut serde_json::Value, &mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| serde_json::from_str(&std::fs::read_to_string(rgb().join(name)).unwrap()).unwrap();
    let (mut config, mut processor) = (read("config.json"), read("preprocessor_config.json"));
    edit(&mut config, &mut processor);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.path().join("preprocessor_config.json"), processor.to_string()).unwrap();
    std::fs::copy(rgb().join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    format!("{:#}", ClipModel::load(dir, Device::Cpu, Kind::Float).err().expect("loading should fail"))
}

#[test]
fn bad_folders_fail_clearly() {
    // A lone text encoder's config is not a CLIPModel config.
    let dir = edited_copy(|config, _| {
        config.as_object_mut().unwrap().remove("vision_config");
    });
    let err = load_error(dir.path());
    assert!(err.contains("config.json") && err.contains("vision_config"), "{err}");

    // A config describing fewer layers than the weights hold.
    let dir = edited_copy(|config, _| config["vision_config"]["num_hidden_layers"] = 1.into());
    let err = load_error(dir.path());
    assert!(err.contains("vision_model.encoder.layers.1"), "{err}");

    // A mean per channel, for a model with another channel count.
    let dir = edited_copy(|_, processor| processor["image_mean"] = serde_json::json!([0.5]));
    let err = load_error(dir.path());
    assert!(err.contains("preprocessor_config.json") && err.contains("image_mean has 1 values"), "{err}");

    // A crop the model cannot take.
    let dir = edited_copy(|_, processor| processor["crop_size"] = serde_json::json!({"height": 24, "width": 24}));
    let err = load_error(dir.path());
    assert!(err.contains("24x24") && err.contains("32x32"), "{err}");

    // No weights.
    let dir = edited_copy(|_, _| ());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(load_error(dir.path()).contains("has no model.safetensors"));
}

#[test]
fn without_a_preprocessor_config_openai_defaults_apply() {
    let dir = edited_copy(|_, _| ());
    std::fs::remove_file(dir.path().join("preprocessor_config.json")).unwrap();
    // The fixture's preprocessor_config.json holds exactly the defaults (OpenAI's mean and std, the model's size).
    let refs = references(&rgb());
    let model = ClipModel::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let reference = ClipModel::load(&rgb(), Device::Cpu, Kind::Float).unwrap();
    let raw = &refs["downscale_raw"];
    // The same preprocessing with the same numbers (the defaults are the fixture's values exactly): exactly equal.
    assert_eq!(max_abs_diff(&model.preprocess(raw).unwrap(), &reference.preprocess(raw).unwrap()), 0.0);
    // A grayscale model has no such default: OpenAI's mean and std are for RGB.
    let gray_dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(gray().join(name), gray_dir.path().join(name)).unwrap();
    }
    let err = load_error(gray_dir.path());
    assert!(err.contains("no ") && err.contains("preprocessor_config.json") && err.contains("image_mean"), "{err}");
    let cfg = ClipConfig::from_file(&gray().join("config.json")).unwrap();
    assert_eq!((cfg.vision_config.num_channels, cfg.projection_dim), (1, 8));
}
