//! DMA on the tiny SD 1-style fixture: alignment shrinks the spread of h, is deterministic, reduces to diffusers'
//! plain guided DDIM when switched off, and does not depend on how latents are batched.
mod common;
use common::{assert_close, fixture, max_abs_diff, reference_json, references};
use dma::method::{AlignSettings, HBranch};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::pipelines::DiffusionModel;
use tch::{Device, Kind, Tensor};

fn model() -> DiffusionModel {
    dma::loaders::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Float).unwrap()
}

fn settings(batch: i64) -> SamplingSettings {
    SamplingSettings { prompt: "a photo of a dog".into(), steps: 6, guidance: 7.0, seed: 3, batch, use_clipped_model_output: false, guidance_interval: None }
}

fn align() -> AlignSettings {
    AlignSettings { align_steps: 3, iters: 15, lr: 2e-2, tol: 0.0, window: 5, ..AlignSettings::paper(HBranch::Cond) }
}

#[test]
fn every_aligned_step_reduces_the_spread_of_h() {
    let _rng = common::global_rng();
    let model = model();
    let init = seeded_latents(&model, 6, 3);
    let result = run(&model, &settings(6), &init, Some(&align()), 2, &|_| {}).unwrap();
    assert_eq!(result.log.len(), 3, "one log entry per aligned step");
    common::assert_every_step_aligns(&result.log);
}

#[test]
fn the_same_seed_gives_the_same_result() {
    let _rng = common::global_rng();
    let model = model();
    let a = run(&model, &settings(4), &seeded_latents(&model, 4, 3), Some(&align()), 0, &|_| {}).unwrap();
    let b = run(&model, &settings(4), &seeded_latents(&model, 4, 3), Some(&align()), 0, &|_| {}).unwrap();
    // The same function on the same inputs in one process: the same ops in the same order, so exactly equal.
    assert_eq!(max_abs_diff(&a.latents, &b.latents), 0.0);
    let other = run(&model, &settings(4), &seeded_latents(&model, 4, 4), Some(&align()), 0, &|_| {}).unwrap();
    assert!(max_abs_diff(&a.latents, &other.latents) > 1e-3, "a different seed must give different latents");
}

/// Alignment switched off (align_steps 0) leaves plain guided DDIM, checked against diffusers' own
/// StableDiffusionPipeline run of the fixture (reference.safetensors, as in tests/pipeline_parity.rs) rather than
/// against another call of the same loop. The latent diffusers ran is sampled with a second one, so that an
/// alignment that ran anyway would move it (a lone latent is its own mean and would not move).
#[test]
fn zero_aligned_steps_is_plain_ddim() {
    let _rng = common::global_rng();
    let model = model();
    let (refs, json) = (references("tiny-sd1"), reference_json("tiny-sd1"));
    let settings = SamplingSettings {
        prompt: json["prompt"].as_str().unwrap().into(),
        steps: json["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: json["guidance_scale"].as_f64().unwrap(),
        seed: 0,
        batch: 2,
        use_clipped_model_output: false,
        guidance_interval: None,
    };
    let init = Tensor::cat(&[&refs["pipeline_init_latents"], &seeded_latents(&model, 1, 5)], 0);
    let no_align = AlignSettings { align_steps: 0, ..align() };
    let result = run(&model, &settings, &init, Some(&no_align), 0, &|_| {}).unwrap();
    // The tolerance of tests/pipeline_parity.rs: float32 rounding of ten guided UNet calls on another CPU, 1e-4 of
    // the largest magnitude; one Adam step of the alignment (lr 2e-2) would move the latent by far more.
    let first = result.latents.narrow(0, 0, 1);
    assert_close("align_steps 0 against diffusers' pipeline", &first, &refs["pipeline_final_latents"], 1e-4, 0.0);
    assert!(result.log.is_empty(), "no step is logged as aligned");
}

#[test]
fn more_latents_than_the_batch_gives_the_same_result_as_one_batch() {
    let _rng = common::global_rng();
    let model = model();
    let init = seeded_latents(&model, 5, 9);
    let one_batch = run(&model, &settings(5), &init, Some(&align()), 0, &|_| {}).unwrap();
    let batched = run(&model, &settings(2), &init, Some(&align()), 0, &|_| {}).unwrap();
    // Kernels sum in another order for another batch size (a GEMM's or a convolution's blocking follows its
    // shapes): float32 rounding of about 2e-6 of the magnitude per UNet call, which the 45 Adam iterations (whose
    // normalised steps do not damp it) carry on. Measured 2.5e-6 to 4.6e-6 of the latents' largest magnitude (22)
    // under several kernel paths (BENCHMARKS.md, "Parity tests: tolerances and margins"); 5e-5 is ten times that.
    assert_close("batches of 2 against one batch of 5", &batched.latents, &one_batch.latents, 5e-5, 0.0);
}

#[test]
fn early_stopping_stops_latents_whose_loss_has_stalled() {
    let _rng = common::global_rng();
    let model = model();
    let init = seeded_latents(&model, 4, 3);
    let patient = AlignSettings { iters: 60, tol: 0.5, window: 3, ..align() };
    let result = run(&model, &settings(4), &init, Some(&patient), 0, &|_| {}).unwrap();
    let step = &result.log[0];
    println!("{step:?}");
    assert!(step.iterations_max < 60, "a 50% improvement per 3 iterations cannot hold for 60 iterations");
    assert!(step.loss_after < step.loss_before);
}

#[test]
fn a_single_latent_is_its_own_mean_and_stops_at_once() {
    let _rng = common::global_rng();
    let model = model();
    let init = seeded_latents(&model, 1, 2);
    let early_stop = AlignSettings { iters: 100, tol: 0.01, window: 3, ..align() };
    let aligned = run(&model, &settings(1), &init, Some(&early_stop), 0, &|_| {}).unwrap();
    let plain = run(&model, &settings(1), &init, None, 0, &|_| {}).unwrap();
    for step in &aligned.log {
        assert_eq!(step.loss_before, 0.0);
        assert_eq!(step.iterations_max, 4, "a zero loss has stalled as soon as the window is full");
    }
    assert_eq!(max_abs_diff(&aligned.latents, &plain.latents), 0.0, "a zero gradient moves nothing");
}
