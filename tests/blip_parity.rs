//! BLIP's models against their reference implementations, on the tiny random models the fixture scripts build:
//! transformers' BlipForQuestionAnswering and BlipImageProcessor (tests/fixtures/tiny-blip-vqa,
//! scripts/make_blip_vqa_fixture.py), the `image-reward` package's ImageReward (tests/fixtures/tiny-image-reward,
//! scripts/make_image_reward_fixture.py), and transformers' BertTokenizer (tests/fixtures/wordpiece-cases.json).
mod common;
use common::{assert_caught, closeness, fixture, reference_json, references, Closeness};
use dma::models::blip::image_reward::ImageReward;
use dma::models::blip::vqa::BlipVqa;
use dma::models::tokenizer::WordPieceTokenizer;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn vqa_dir() -> PathBuf {
    fixture("tiny-blip-vqa")
}

fn reward_dir() -> PathBuf {
    fixture("tiny-image-reward")
}

/// float32 through two-layer towers (matmuls of depth 32 to 64) and, for logits and scores, a softmax over the
/// vocabulary, against the reference in float32, relative to each output's largest magnitude: as for CLIP
/// (tests/clip_model_parity.rs), whose towers have the same depth, another CPU or BLAS moves a result by a few
/// ulps of its scale, a hundredth of this.
const RTOL: f64 = 1e-5;

/// PIL rounds each of its two bicubic resize passes to 8 bits, which the preprocessing here leaves out: at most
/// 1.25 grey levels (make_clip_fixture.py's bound for the same resize), divided by the smallest standard deviation
/// of OpenAI's normalisation.
const PREPROCESS_ATOL: f64 = 1.25 / 255.0 / 0.26130258;

#[test]
fn wordpiece_matches_bert_tokenizer() {
    let cases = common::read_json(&fixture("wordpiece-cases.json"));
    let vocab_file = vqa_dir().join("vocab.txt");
    let lines: Vec<String> = std::fs::read_to_string(&vocab_file).unwrap().lines().map(String::from).collect();
    let listed: Vec<String> = cases["vocab"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(lines, listed, "the cases were made with another vocabulary");
    let tok = WordPieceTokenizer::from_vocab_file(&vocab_file).unwrap();
    let all = cases["cases"].as_array().unwrap();
    for case in all {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(tok.encode(text), want, "{text:?}: tokens {}", case["tokens"]);
    }
    println!("{} cases tokenize as BertTokenizer does", all.len());
}

#[test]
fn a_vocabulary_without_bert_special_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vocab.txt");
    std::fs::write(&file, "[PAD]\n[CLS]\n[SEP]\nhello\n").unwrap();
    let err = format!("{:#}", WordPieceTokenizer::from_vocab_file(&file).err().unwrap());
    assert!(err.contains("[UNK]") && err.contains("vocab.txt"), "{err}");
}

/// The VQA model's parts in `kind` from the reference pixel values: image tokens, each question's states, each
/// answer's decoder logits and log-likelihood scores.
fn vqa_parity(dir: &Path, kind: Kind) -> Vec<Closeness> {
    let refs = references(dir);
    let info = reference_json(dir);
    let model = BlipVqa::load(dir, Device::Cpu, kind).unwrap();
    let label = |what: &str| format!("BLIP-VQA {kind:?} {what}");
    let mut out = Vec::new();
    let tokens = tch::no_grad(|| model.image_tokens(&refs["pixel_values"].to_kind(kind)));
    out.push(closeness(&label("vision last_hidden_state"), &tokens, &refs["vision_last_hidden_state"], RTOL, 0.0));
    for (q, question) in info["questions"].as_array().unwrap().iter().enumerate() {
        let ids = Tensor::from_slice(&model.tokenizer().encode(question.as_str().unwrap())).unsqueeze(0);
        assert_eq!(ids, refs[&format!("question_{q}_input_ids")], "question {q} tokenizes differently");
        let states = tch::no_grad(|| model.question_states(&ids, &tokens)).unwrap();
        out.push(closeness(&label(&format!("question {q} states")), &states, &refs[&format!("question_{q}_embeds")], RTOL, 0.0));
        let mut scores = Vec::new();
        for (i, answer) in info["answers"][q].as_array().unwrap().iter().enumerate() {
            let ids = Tensor::from_slice(&model.answer_ids(answer.as_str().unwrap()).unwrap()).unsqueeze(0);
            assert_eq!(ids, refs[&format!("answer_{q}_{i}_ids")], "answer {q}/{i} tokenizes differently");
            let ids = ids.expand([2, -1], false);
            let logits = tch::no_grad(|| model.decoder_logits(&ids, &states)).unwrap();
            out.push(closeness(&label(&format!("answer {q}/{i} logits")), &logits, &refs[&format!("answer_{q}_{i}_logits")], RTOL, 0.0));
            scores.push(dma::models::bert::sequence_log_likelihood(&logits, &ids));
        }
        out.push(closeness(&label(&format!("question {q} scores")), &Tensor::stack(&scores, 1), &refs[&format!("scores_{q}")], RTOL, 0.0));
    }
    out
}

#[test]
fn blip_vqa_matches_transformers() {
    for kind in [Kind::Float, Kind::Double] {
        for c in vqa_parity(&vqa_dir(), kind) {
            c.check();
        }
    }
}

#[test]
fn blip_vqa_preprocessing_matches_blip_image_processor() {
    let refs = references(vqa_dir());
    let model = BlipVqa::load(&vqa_dir(), Device::Cpu, Kind::Float).unwrap();
    closeness("BLIP-VQA preprocess", &model.preprocess(&refs["images"]).unwrap(), &refs["pixel_values"], 0.0, PREPROCESS_ATOL).check();
}

/// End to end from the raw images: each answer's score for each image, as `dma modes --grounding blip-vqa` asks.
/// The gap to the reference is PIL's 8-bit rounding (above) carried through the model; the ranking of the
/// answers, which is what grounding reads, must be the reference's.
#[test]
fn answer_scores_from_raw_images_rank_answers_as_the_reference() {
    let refs = references(vqa_dir());
    let info = reference_json(vqa_dir());
    let model = BlipVqa::load(&vqa_dir(), Device::Cpu, Kind::Float).unwrap();
    for (q, question) in info["questions"].as_array().unwrap().iter().enumerate() {
        let answers: Vec<String> = info["answers"][q].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        let scores = model.answer_log_likelihoods(&refs["images"], question.as_str().unwrap(), &answers, 1).unwrap();
        let want = &refs[&format!("scores_{q}")];
        let c = closeness(&format!("question {q} scores from raw images"), &scores, want, 0.0, 0.0);
        println!("{}: max |got - want| {:.2e} (scale {:.2e})", c.what, c.diff, c.scale);
        assert!(c.diff < 0.01 * c.scale, "{}: {:e} against a scale of {:e}", c.what, c.diff, c.scale);
        assert_eq!(scores.argsort(1, true), want.argsort(1, true), "question {q}: the answers rank differently");
    }
}

/// A copy of the VQA fixture with `text_encoder.encoder.layer.0.crossattention.self.key.weight` 1% larger fails
/// the question states by orders of magnitude, while the image tokens, which it does not touch, still pass.
#[test]
fn a_weight_one_percent_off_fails_the_blip_vqa_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "text_encoder.encoder.layer.0.crossattention.self.key.weight";
    let dir = common::fixture_with_edited_tensor(tmp.path(), "tiny-blip-vqa", "model.safetensors", key, |w| w * 1.01);
    let mut results = vqa_parity(&dir, Kind::Float).into_iter();
    results.next().unwrap().check();
    assert_caught(&format!("{key} x 1.01"), &results.next().unwrap(), 100.0);
}

#[test]
fn a_captioning_model_is_refused_as_a_vqa_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("captioner");
    common::copy_dir(&vqa_dir(), &dir);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.replace("BlipForQuestionAnswering", "BlipForConditionalGeneration")).unwrap();
    let err = format!("{:#}", BlipVqa::load(&dir, Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("BlipForConditionalGeneration") && err.contains("BlipForQuestionAnswering"), "{err}");
}

/// ImageReward's parts in `kind` from the reference pixel values: image tokens, the prompts' features and rewards.
fn reward_parity_of_file(file: &Path, kind: Kind) -> Vec<Closeness> {
    let refs = references(reward_dir());
    let info = reference_json(reward_dir());
    let model = ImageReward::load(file, Device::Cpu, kind).unwrap();
    let label = |what: &str| format!("ImageReward {kind:?} {what}");
    let tokens = tch::no_grad(|| model.image_tokens(&refs["pixel_values"].to_kind(kind)));
    let mut out = vec![closeness(&label("image tokens"), &tokens, &refs["image_embeds"], RTOL, 0.0)];
    let (mut features, mut rewards) = (Vec::new(), Vec::new());
    for (p, prompt) in info["prompts"].as_array().unwrap().iter().enumerate() {
        let (ids, mask) = model.prompt_tokens(prompt.as_str().unwrap()).unwrap();
        assert_eq!(ids, refs["input_ids"].narrow(0, p as i64, 1), "prompt {p} tokenizes differently");
        assert_eq!(mask, refs["attention_mask"].narrow(0, p as i64, 1), "prompt {p}'s attention mask differs");
        let f = tch::no_grad(|| model.text_features(&ids, &mask, &tokens)).unwrap();
        rewards.push(tch::no_grad(|| model.reward_of_features(&f)));
        features.push(f);
    }
    out.push(closeness(&label("text features"), &Tensor::stack(&features, 0), &refs["text_features"], RTOL, 0.0));
    out.push(closeness(&label("rewards"), &Tensor::stack(&rewards, 0), &refs["rewards"], RTOL, 0.0));
    out
}

#[test]
fn image_reward_matches_the_image_reward_package() {
    for kind in [Kind::Float, Kind::Double] {
        for c in reward_parity_of_file(&reward_dir().join("ImageReward.pt"), kind) {
            c.check();
        }
    }
}

#[test]
fn image_reward_preprocessing_matches_the_package_transform() {
    let refs = references(reward_dir());
    let model = ImageReward::load(&reward_dir(), Device::Cpu, Kind::Float).unwrap();
    closeness("ImageReward preprocess", &model.preprocess(&refs["images"]).unwrap(), &refs["pixel_values"], 0.0, PREPROCESS_ATOL).check();
}

/// `score` end to end from the raw images, as `dma eval --image-reward` calls it; the gap to the package's
/// `score(prompt, PIL image)` is PIL's 8-bit rounding (above) carried through the model.
#[test]
fn image_reward_scores_raw_images_as_the_package() {
    let refs = references(reward_dir());
    let info = reference_json(reward_dir());
    let model = ImageReward::load(&reward_dir(), Device::Cpu, Kind::Float).unwrap();
    for (p, prompt) in info["prompts"].as_array().unwrap().iter().enumerate() {
        let got = model.score(&refs["images"], prompt.as_str().unwrap(), 1).unwrap();
        let want = refs["rewards"].get(p as i64);
        let c = closeness(&format!("prompt {p} rewards from raw images"), &got, &want, 0.0, 0.0);
        println!("{}: max |got - want| {:.2e} (scale {:.2e})", c.what, c.diff, c.scale);
        assert!(c.diff < 0.01 * c.scale.max(1.0), "{}: {:e}", c.what, c.diff);
    }
}

/// ImageReward with the text encoder's first cross-attention key 1% larger (saved as safetensors beside copies of
/// med_config.json and vocab.txt) fails the rewards by orders of magnitude; the image tokens still pass.
#[test]
fn a_weight_one_percent_off_fails_the_image_reward_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight";
    let mut tensors = dma::weights::read_weight_file(&reward_dir().join("ImageReward.pt")).unwrap();
    let entry = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    entry.1 = (&entry.1 * 1.01).to_kind(entry.1.kind());
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    dma::weights::write_safetensors(&tmp.path().join("ImageReward.safetensors"), &named).unwrap();
    for file in ["med_config.json", "vocab.txt"] {
        std::fs::copy(reward_dir().join(file), tmp.path().join(file)).unwrap();
    }
    let model_file = tmp.path().join("ImageReward.safetensors");
    let mut results = reward_parity_of_file(&model_file, Kind::Float).into_iter();
    results.next().unwrap().check();
    let _features = results.next().unwrap();
    assert_caught(&format!("{key} x 1.01"), &results.next().unwrap(), 100.0);
}

#[test]
fn image_reward_bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    // No such file.
    let err = format!("{:#}", ImageReward::load(&tmp.path().join("missing.pt"), Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("missing.pt"), "{err}");
    // A truncated checkpoint.
    let bytes = std::fs::read(reward_dir().join("ImageReward.pt")).unwrap();
    for file in ["med_config.json", "vocab.txt"] {
        std::fs::copy(reward_dir().join(file), tmp.path().join(file)).unwrap();
    }
    std::fs::write(tmp.path().join("ImageReward.pt"), &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", ImageReward::load(tmp.path(), Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("ImageReward.pt"), "{err}");
    // Another model's weights: the BLIP-VQA fixture's.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(vqa_dir().join("model.safetensors"), other.join("ImageReward.safetensors")).unwrap();
    std::fs::copy(reward_dir().join("med_config.json"), other.join("med_config.json")).unwrap();
    let err = format!("{:#}", ImageReward::load(&other.join("ImageReward.safetensors"), Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("not an ImageReward checkpoint"), "{err}");
    // No med_config.json.
    std::fs::remove_file(tmp.path().join("med_config.json")).unwrap();
    std::fs::copy(reward_dir().join("ImageReward.pt"), tmp.path().join("ImageReward.pt")).unwrap();
    let err = format!("{:#}", ImageReward::load(tmp.path(), Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("med_config.json"), "{err}");
}
