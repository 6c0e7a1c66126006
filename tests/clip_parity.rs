//! The CLIP tokenizer and text encoder against transformers' CLIPTokenizer and CLIPTextModel: the full OpenAI
//! vocabulary on committed cases, and the tiny SD 1- and SD 2-style pipelines (quick_gelu and pad `<|endoftext|>`;
//! gelu and pad `!`) on the prompt and the empty prompt.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::models::clip_text::{ClipTextConfig, ClipTextModel};
use dma::models::tokenizer::ClipTokenizer;
use dma::weights::Weights;
use tch::{Device, Kind, Tensor};

#[test]
fn openai_vocabulary_matches_transformers_on_every_case() {
    let tok = ClipTokenizer::openai_default().unwrap();
    let path = fixture("clip_tokenizer_cases.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(tok.vocab_size() as i64, json["vocab_size"].as_i64().unwrap());
    assert_eq!(tok.max_length() as i64, json["model_max_length"].as_i64().unwrap());
    let cases = json["cases"].as_array().unwrap();
    assert!(cases.len() > 20, "the fixture has only {} cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(tok.encode(text), want, "ids differ for {text:?}");
    }
}

fn load_text_encoder(name: &str, kind: Kind) -> ClipTextModel {
    let dir = fixture(name).join("text_encoder");
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::from_files(&[dir.join("model.safetensors")], Device::Cpu, kind).unwrap();
    let model = ClipTextModel::load(&weights.root(), &cfg).unwrap();
    weights.check_all_used("").unwrap();
    model
}

/// Ids equal exactly; the last hidden state within `tolerance` (max abs difference) of transformers' f32 output.
fn check_pipeline(name: &str, kind: Kind, tolerance: f64) {
    let refs = references(name);
    let info = reference_json(name);
    let tok = ClipTokenizer::from_folder(&fixture(name).join("tokenizer")).unwrap();
    assert_eq!(tok.token_id(info["pad_token"].as_str().unwrap()), info["pad_token_id"].as_i64());
    let model = load_text_encoder(name, kind);
    for (which, text) in [("cond", &info["prompt"]), ("uncond", &info["negative_prompt"])] {
        let ids = Tensor::from_slice(&tok.encode(text.as_str().unwrap())).unsqueeze(0);
        assert_eq!(ids, refs[&format!("{which}_ids")], "{name}: {which} ids differ");
        let hidden = tch::no_grad(|| model.forward(&ids));
        assert_eq!(hidden.kind(), kind);
        let diff = max_abs_diff(&hidden, &refs[&format!("{which}_embeddings")]);
        println!("{name} {kind:?} {which}: max |hidden - transformers| {diff:.2e}");
        assert!(diff < tolerance, "{name} {kind:?}: {which} embeddings differ from transformers by {diff}");
    }
}

#[test]
fn sd1_text_encoder_matches_transformers() {
    check_pipeline("tiny-sd1", Kind::Float, 1e-5);
}

#[test]
fn sd2_text_encoder_matches_transformers() {
    check_pipeline("tiny-sd2", Kind::Float, 1e-5);
}

#[test]
fn text_encoder_in_f64_matches_within_f32_rounding() {
    check_pipeline("tiny-sd1", Kind::Double, 1e-5);
    check_pipeline("tiny-sd2", Kind::Double, 1e-5);
}

#[test]
fn half_precision_runs_close_to_f32() {
    let refs = references("tiny-sd1");
    for kind in [Kind::Half, Kind::BFloat16] {
        let model = load_text_encoder("tiny-sd1", kind);
        let hidden = tch::no_grad(|| model.forward(&refs["cond_ids"]));
        let diff = max_abs_diff(&hidden, &refs["cond_embeddings"]);
        println!("{kind:?}: max |hidden - transformers f32| {diff:.2e}");
        // The outputs are layer-normed (unit scale); bf16 keeps 8 bits of mantissa.
        assert!(diff < 0.1, "{kind:?} output off by {diff}");
    }
}

#[test]
fn token_embeddings_path_equals_ids_path() {
    let refs = references("tiny-sd2");
    let model = load_text_encoder("tiny-sd2", Kind::Float);
    let ids = &refs["cond_ids"];
    let via_embeds = tch::no_grad(|| model.forward_embeds(&model.embed_tokens(ids)));
    assert_eq!(max_abs_diff(&via_embeds, &model.forward(ids)), 0.0);
}

#[test]
fn pooled_takes_the_first_end_token() {
    let refs = references("tiny-sd1");
    let model = load_text_encoder("tiny-sd1", Kind::Float);
    // The empty prompt is padded with the end token itself: the pooled state is at position 1, not the last.
    let ids = Tensor::cat(&[&refs["cond_ids"], &refs["uncond_ids"]], 0);
    let hidden = tch::no_grad(|| model.forward(&ids));
    let pooled = model.pooled(&hidden, &ids);
    assert_eq!(pooled.size(), [2, 32]);
    let eos = reference_json("tiny-sd1")["pad_token_id"].as_i64().unwrap();
    let cond_end = Vec::<i64>::try_from(refs["cond_ids"].get(0)).unwrap().iter().position(|&i| i == eos).unwrap();
    assert_eq!(max_abs_diff(&pooled.get(0), &hidden.get(0).get(cond_end as i64)), 0.0);
    assert_eq!(max_abs_diff(&pooled.get(1), &hidden.get(1).get(1)), 0.0);
}

#[test]
fn loads_keys_without_the_text_model_prefix_and_with_position_ids() {
    let dir = fixture("tiny-sd1").join("text_encoder");
    let cfg = ClipTextConfig::from_file(&dir.join("config.json")).unwrap();
    let mut tensors: std::collections::HashMap<String, Tensor> =
        dma::weights::read_safetensors(&dir.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("text_model.").unwrap().to_string(), v))
            .collect();
    // Older checkpoints carry this buffer; it must be accepted and count as used.
    tensors.insert("embeddings.position_ids".into(), Tensor::arange(77, (Kind::Int64, Device::Cpu)).unsqueeze(0));
    let weights = Weights::from_tensors(tensors, "prefix-less".into(), Device::Cpu, Kind::Float);
    let model = ClipTextModel::load(&weights.root(), &cfg).unwrap();
    weights.check_all_used("").unwrap();
    let refs = references("tiny-sd1");
    let diff = max_abs_diff(&tch::no_grad(|| model.forward(&refs["cond_ids"])), &refs["cond_embeddings"]);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"hidden_act": "relu", "hidden_size": 32, "num_attention_heads": 4}"#).unwrap();
    let err = format!("{:#}", ClipTextConfig::from_file(&path).unwrap_err());
    assert!(err.contains("config.json") && err.contains("hidden_act `relu`"), "{err}");
    // A full CLIPModel config: the text part is taken.
    std::fs::write(&path, r#"{"text_config": {"hidden_size": 64, "hidden_act": "gelu"}, "vision_config": {}}"#)
        .unwrap();
    let cfg = ClipTextConfig::from_file(&path).unwrap();
    assert_eq!((cfg.hidden_size, cfg.hidden_act.as_str(), cfg.max_position_embeddings), (64, "gelu", 77));
}
