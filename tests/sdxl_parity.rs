//! SDXL against diffusers' StableDiffusionXLPipeline, on the tiny random pipeline of tests/fixtures/tiny-sdxl (built
//! by scripts/make_sdxl_fixture.py), through the loader a user's folder goes through: the prompt embeddings of both
//! text encoders and the pooled projection, the size numbers, the UNet with its added conditioning and h, and a
//! 10-step CFG DDIM run; the same from a single-file checkpoint; Textual Inversion on both encoders.
mod common;
use common::{assert_caught, closeness, fixture, reference_json, references, Closeness};
use dma::adapters::textual_inversion::TextualInversion;
use dma::adapters::Adapter;
use dma::loaders::ModelSource;
use dma::models::denoiser::Condition;
use dma::pipelines::mental_average::{run, SamplingSettings};
use dma::pipelines::DiffusionModel;
use tch::{Device, Kind, Tensor};

/// As tests/unet_parity.rs and tests/clip_parity.rs: float32 through a few layers, relative to each output's
/// largest magnitude; another CPU or BLAS moves a result by a few ulps of its scale, a tenth of this at most.
const RTOL: f64 = 3e-5;
/// A 10-step guided run, as tests/pipeline_parity.rs: each step's rounding amplified by the guidance.
const RUN_RTOL: f64 = 1e-4;

fn load(kind: Kind) -> DiffusionModel {
    let source = ModelSource::resolve(fixture("tiny-sdxl").to_str().unwrap()).unwrap();
    dma::loaders::load(&source, Device::Cpu, kind).unwrap()
}

fn text_time(condition: Condition) -> (Tensor, Tensor, Tensor) {
    match condition {
        Condition::TextTime { states, pooled, time_ids } => (states, pooled, time_ids),
        _ => panic!("an SDXL model gives SDXL's condition"),
    }
}

/// The prompt's embeddings, the zeroed empty prompt, a non-empty negative, the size numbers; and the UNet's
/// output and h under the conditioning diffusers built (as Condition::TextTime).
fn parity(model: &DiffusionModel, kind: Kind) -> Vec<Closeness> {
    let refs = references(fixture("tiny-sdxl"));
    let json = reference_json(fixture("tiny-sdxl"));
    let label = |what: &str| format!("SDXL {kind:?} {what}");
    let mut out = Vec::new();
    let (states, pooled, time_ids) = text_time(model.condition(json["prompt"].as_str().unwrap()).unwrap());
    out.push(closeness(&label("prompt_embeds"), &states, &refs["prompt_embeds"], RTOL, 0.0));
    out.push(closeness(&label("pooled_prompt_embeds"), &pooled, &refs["pooled_prompt_embeds"], RTOL, 0.0));
    assert_eq!(time_ids.to_kind(Kind::Double), refs["add_time_ids"].to_kind(Kind::Double), "the default size numbers");
    let (neg_states, neg_pooled, _) = text_time(model.condition(json["negative_prompt_nonempty"].as_str().unwrap()).unwrap());
    out.push(closeness(&label("negative prompt_embeds"), &neg_states, &refs["neg_prompt_embeds"], RTOL, 0.0));
    out.push(closeness(&label("negative pooled"), &neg_pooled, &refs["neg_pooled_prompt_embeds"], RTOL, 0.0));
    let (empty_states, empty_pooled, _) = text_time(model.condition("").unwrap());
    assert!(empty_states.equal(&refs["negative_prompt_embeds"].to_kind(kind)) && empty_pooled.equal(&refs["negative_pooled_prompt_embeds"].to_kind(kind)), "the empty prompt is zeros");

    let condition = Condition::TextTime {
        states: Tensor::cat(&[&refs["negative_prompt_embeds"], &refs["prompt_embeds"]], 0).to_kind(kind),
        pooled: refs["unet_text_embeds"].to_kind(kind),
        time_ids: refs["unet_time_ids"].shallow_clone(),
    };
    let t = Tensor::from(json["unet_timestep"].as_i64().unwrap());
    let prediction = tch::no_grad(|| model.denoiser.predict(&refs["unet_sample"].to_kind(kind), &t, &condition));
    out.push(closeness(&label("unet_out"), &prediction.noise, &refs["unet_out"], RTOL, 0.0));
    out.push(closeness(&label("h (mid block)"), &prediction.h, &refs["unet_mid"], RTOL, 0.0));
    let h_only = tch::no_grad(|| model.denoiser.encode_h(&refs["unet_sample"].to_kind(kind), &t, &condition));
    assert!(h_only.equal(&prediction.h), "the encoder-only path gives the full pass's h");
    out
}

#[test]
fn sdxl_conditioning_and_unet_match_diffusers() {
    for kind in [Kind::Float, Kind::Double] {
        for c in parity(&load(kind), kind) {
            c.check();
        }
    }
}

/// The added conditioning matters: with the size numbers of another crop the UNet's output moves by orders of
/// magnitude more than the tolerance.
#[test]
fn other_size_numbers_fail_the_unet_parity() {
    let refs = references(fixture("tiny-sdxl"));
    let model = load(Kind::Float);
    let condition = Condition::TextTime {
        states: Tensor::cat(&[&refs["negative_prompt_embeds"], &refs["prompt_embeds"]], 0),
        pooled: refs["unet_text_embeds"].shallow_clone(),
        time_ids: refs["add_time_ids_custom"].repeat([2, 1]),
    };
    let prediction = tch::no_grad(|| model.denoiser.predict(&refs["unet_sample"], &Tensor::from(500), &condition));
    assert_caught("size numbers of another crop", &closeness("SDXL unet_out", &prediction.noise, &refs["unet_out"], RTOL, 0.0), 100.0);
}

/// The whole guided DDIM run, as StableDiffusionXLPipeline samples with output_type="latent", and its image.
#[test]
fn sdxl_pipeline_matches_diffusers() {
    let refs = references(fixture("tiny-sdxl"));
    let json = reference_json(fixture("tiny-sdxl"));
    let model = load(Kind::Float);
    let settings = SamplingSettings {
        prompt: json["prompt"].as_str().unwrap().to_string(),
        steps: json["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: json["guidance_scale"].as_f64().unwrap(),
        seed: 0,
        batch: 1,
        use_clipped_model_output: false,
        guidance_interval: None,
    };
    let result = run(&model, &settings, &refs["ddim_init_latents"], None, 0, &|_| {}).unwrap();
    closeness("SDXL final latents", &result.latents, &refs["ddim_latents"], RUN_RTOL, 0.0).check();
    closeness("SDXL decoded image", &model.decode(&result.latents), &refs["pipeline_image"], RUN_RTOL, 0.0).check();
}

#[test]
fn sdxl_vae_decodes_in_f32_in_a_half_precision_model() {
    let model = load(Kind::Half);
    assert_eq!(model.vae_kind(), Kind::Float, "SDXL's VAE says force_upcast");
    let refs = references(fixture("tiny-sdxl"));
    let image = model.decode(&(&refs["vae_decode_in"] * 0.13025));
    let want = (&refs["vae_decode_out"] / 2.0 + 0.5).clamp(0.0, 1.0);
    closeness("SDXL f16 model's decode", &image, &want, RTOL, 0.0).check();
}

/// A single-file SDXL checkpoint (tests/fixtures/tiny-sdxl/ldm.safetensors: the folder's weights in Stability's
/// layout, written by scripts/make_sdxl_single_file_fixture.py and checked there with diffusers'
/// `StableDiffusionXLPipeline.from_single_file`), with the folder's configs: the same parity as the folder.
#[test]
fn sdxl_single_file_matches_diffusers() {
    let dir = fixture("tiny-sdxl");
    let file = dir.join("ldm.safetensors");
    let model = dma::loaders::single_file::load_with_configs(&file, &dir, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.conditioning_name(), "sdxl");
    assert_eq!(model.info.weight_files, vec![file]);
    for c in parity(&model, Kind::Float) {
        c.check();
    }
}

/// An SDXL Textual Inversion embedding (tests/fixtures/adapters/ti-sdxl, scripts/make_sdxl_ti_fixture.py) read
/// from `file` and applied: both tokenizers' ids, the prompt embeddings and the pooled projection against diffusers'
/// after `load_textual_inversion` on each encoder. The new token's id is above the end token's, so the pooled
/// output is taken at the token (transformers' argmax rule for SDXL's configs), as the reference records.
fn ti_parity(adapter: Adapter) -> Vec<Closeness> {
    let refs = references("adapters/ti-sdxl");
    let json = reference_json("adapters/ti-sdxl");
    let mut model = load(Kind::Float);
    let (plain_states, plain_pooled, _) = text_time(model.condition(json["plain_prompt"].as_str().unwrap()).unwrap());
    let prompt = json["prompt"].as_str().unwrap();
    adapter.check_prompt(prompt).unwrap();
    adapter.apply(&mut model).unwrap();
    for (i, (tokenizer, _)) in model.text_encoders("the test").unwrap().into_iter().enumerate() {
        let ids = Tensor::from_slice(&tokenizer.encode(prompt).unwrap()).unsqueeze(0);
        assert_eq!(ids, refs[&format!("ids_{}", i + 1)], "tokenizer {}'s ids with the token", i + 1);
    }
    let (states, pooled, _) = text_time(model.condition(prompt).unwrap());
    vec![
        closeness("SDXL prompt_embeds with the learned token", &states, &refs["prompt_embeds"], RTOL, 0.0),
        closeness("SDXL pooled_prompt_embeds with the learned token", &pooled, &refs["pooled_prompt_embeds"], RTOL, 0.0),
        closeness("SDXL prompt_embeds without the token", &plain_states, &refs["plain_prompt_embeds"], RTOL, 0.0),
        closeness("SDXL pooled without the token", &plain_pooled, &refs["plain_pooled_prompt_embeds"], RTOL, 0.0),
    ]
}

#[test]
fn sdxl_textual_inversion_matches_diffusers_in_both_layouts() {
    let shared = Adapter::read(&fixture("adapters/ti-sdxl/learned_embeds_sdxl.safetensors")).unwrap();
    let pair = Adapter::read(&fixture("adapters/ti-sdxl/pair/learned_embeds.safetensors")).unwrap();
    for adapter in [shared, pair] {
        let Adapter::TextualInversion(ti) = &adapter else { panic!("an embedding reads as another kind") };
        assert_eq!(ti.token, "<tiny-xl>");
        for c in ti_parity(adapter) {
            c.check();
        }
    }
}

/// The second encoder's vector 5% off fails the pooled embedding by orders of magnitude; written and read back,
/// an embedding is the same bits, token included.
#[test]
fn a_wrong_sdxl_embedding_fails_and_a_written_one_reads_back() {
    let Adapter::TextualInversion(ti) = Adapter::read(&fixture("adapters/ti-sdxl/learned_embeds_sdxl.safetensors")).unwrap() else { panic!() };
    let off = TextualInversion { token: ti.token.clone(), embeddings: vec![ti.embeddings[0].shallow_clone(), &ti.embeddings[1] * 1.05] };
    assert_caught("clip_g x 1.05", &ti_parity(Adapter::TextualInversion(off))[1], 100.0);

    let dir = tempfile::tempdir().unwrap();
    let written = Adapter::TextualInversion(ti).write_into(dir.path()).unwrap();
    assert_eq!(written.file_name().unwrap(), "learned_embeds_sdxl.safetensors");
    let Adapter::TextualInversion(back) = Adapter::read(&written).unwrap() else { panic!() };
    let Adapter::TextualInversion(ti) = Adapter::read(&fixture("adapters/ti-sdxl/learned_embeds_sdxl.safetensors")).unwrap() else { panic!() };
    assert_eq!(back.token, ti.token);
    assert!(back.embeddings.iter().zip(&ti.embeddings).all(|(a, b)| a.equal(b)));
}
