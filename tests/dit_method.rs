//! DMA on the tiny random DiT fixture: the gradient of the h loss through the transformer blocks against finite
//! differences, alignment shrinking the spread of h (the last block's tokens) at every aligned step, and no
//! alignment being DiTPipeline's plain guided DDIM; guidance limited to an interval of timesteps.
mod common;
use common::{assert_close, fixture, reference_json, references};
use dma::method::hspace::distance_to;
use dma::method::{AlignSettings, HBranch};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::pipelines::DiffusionModel;
use dma::sampling::guidance::GuidanceInterval;
use tch::{Device, Kind, Tensor};

fn model(kind: Kind) -> DiffusionModel {
    dma::loaders::load_folder(&fixture("tiny-dit"), Device::Cpu, kind).unwrap()
}

#[test]
fn dit_hspace_loss_gradient_matches_finite_differences() {
    let _rng = common::global_rng();
    let mut model = model(Kind::Double);
    for block in [None, Some(0)] {
        model.denoiser.read_h_after(block).unwrap();
        let hspace = model.hspace(model.condition("umbrella").unwrap(), 4);
        tch::manual_seed(7);
        let x = Tensor::randn([2, 4, 8, 8], (Kind::Double, Device::Cpu));
        let timestep = 601;
        let target = tch::no_grad(|| hspace.h(&Tensor::randn([1, 4, 8, 8], (Kind::Double, Device::Cpu)), timestep));
        let leaf = x.set_requires_grad(true);
        let loss = || distance_to(&hspace.h(&leaf, timestep), &target).sum(Kind::Double);
        // As for the UNet (tests/gradient.rs): float64 central differences at 1e-5, 1e-6 relative.
        common::check_gradient(&[leaf.shallow_clone()], &loss, 1e-5, 1e-6);
    }
}

fn settings(prompt: &str, batch: i64) -> SamplingSettings {
    SamplingSettings { prompt: prompt.into(), steps: 6, guidance: 4.0, seed: 3, batch, use_clipped_model_output: false, guidance_interval: None }
}

#[test]
fn every_aligned_step_reduces_the_spread_of_dit_h() {
    let _rng = common::global_rng();
    let model = model(Kind::Float);
    let align = AlignSettings { align_steps: 3, iters: 15, lr: 2e-2, tol: 0.0, window: 5, ..AlignSettings::paper(HBranch::Cond) };
    let init = seeded_latents(&model, 6, 3);
    let result = run(&model, &settings("Egyptian cat", 6), &init, Some(&align), 2, &|_| {}).unwrap();
    assert_eq!(result.log.len(), 3, "one log entry per aligned step");
    common::assert_every_step_aligns(&result.log);
}

/// Alignment switched off leaves DiTPipeline's own run (reference.safetensors), with a second latent beside it so
/// that an alignment that ran anyway would move it.
#[test]
fn zero_aligned_dit_steps_is_dit_pipeline_s_plain_ddim() {
    let _rng = common::global_rng();
    let model = model(Kind::Float);
    let (refs, json) = (references("tiny-dit"), reference_json("tiny-dit"));
    let settings = SamplingSettings {
        steps: json["pipeline"]["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: json["pipeline"]["guidance_scale"].as_f64().unwrap(),
        ..settings("Egyptian cat", 2)
    };
    let init = Tensor::cat(&[&refs["pipeline_start_latents"].narrow(0, 0, 1), &seeded_latents(&model, 1, 5)], 0);
    let no_align = AlignSettings { align_steps: 0, ..AlignSettings::paper(HBranch::Cond) };
    let result = run(&model, &settings, &init, Some(&no_align), 0, &|_| {}).unwrap();
    // tests/dit_parity.rs's pipeline tolerance.
    assert_close("align_steps 0 against DiTPipeline", &result.latents.narrow(0, 0, 1), &refs["pipeline_final_latents"].narrow(0, 0, 1), 1e-4, 0.0);
    assert!(result.log.is_empty(), "no step is logged as aligned");
}

/// Guidance in an interval of timesteps (`--guidance-interval`, the embedded DiT's default): inside it the
/// prediction is the guided one, bit for bit; outside it the conditional prediction alone, from one pass.
#[test]
fn guidance_outside_its_interval_is_the_conditional_prediction() {
    let _rng = common::global_rng();
    let model = model(Kind::Float);
    let (cond, uncond) = model.guidance_conditions("Egyptian cat").unwrap();
    let interval = GuidanceInterval::new(0, 500).unwrap();
    let everywhere = model.guided(&cond, &uncond, 4.0, None, 4);
    let limited = model.guided(&cond, &uncond, 4.0, Some(interval), 4);
    tch::manual_seed(11);
    let x = Tensor::randn([3, 4, 8, 8], (Kind::Float, Device::Cpu));
    assert_eq!((limited.branches_at(500), limited.branches_at(501), everywhere.branches_at(999)), (2, 1, 2));
    assert!(limited.predict(&x, 401).equal(&everywhere.predict(&x, 401)), "inside the interval: guided");
    let t = Tensor::from(801);
    let conditional = tch::no_grad(|| model.denoiser.predict(&x, &t, &cond.repeat(3)).noise);
    assert_close("outside the interval: the conditional prediction", &limited.predict(&x, 801), &conditional, 1e-5, 1e-6);
    // The guided prediction differs from it by far more than that tolerance, so the check above can fail.
    let gap = (everywhere.predict(&x, 801) - &conditional).abs().max().double_value(&[]);
    assert!(gap > 1e-2, "guidance changes the prediction at 801 by {gap}");
}

/// A run with a guidance interval: an interval that holds every timestep is the plain run, bit for bit; a narrower
/// one changes the result and runs one pass instead of two per latent at each step outside it.
#[test]
fn a_guidance_interval_run_counts_one_pass_per_unguided_step() {
    let _rng = common::global_rng();
    let model = model(Kind::Float);
    let init = seeded_latents(&model, 3, 3);
    let base = settings("Egyptian cat", 2);
    let with = |interval: Option<GuidanceInterval>| run(&model, &SamplingSettings { guidance_interval: interval, ..base.clone() }, &init, None, 0, &|_| {}).unwrap();
    let (plain, all, limited) = (with(None), with(Some(GuidanceInterval::new(0, 999).unwrap())), with(Some(GuidanceInterval::new(0, 500).unwrap())));
    assert!(all.latents.equal(&plain.latents), "an interval over every timestep changes nothing");
    assert_eq!(all.passes.unet_forward, plain.passes.unet_forward);
    let timesteps = base.scheduler(&model).unwrap().timesteps().to_vec();
    let guided = timesteps.iter().filter(|&&t| t <= 500).count() as u64;
    assert!(guided > 0 && guided < timesteps.len() as u64, "the interval splits the steps: {timesteps:?}");
    assert_eq!(plain.passes.unet_forward, 3 * 2 * timesteps.len() as u64);
    assert_eq!(limited.passes.unet_forward, 3 * (2 * guided + (timesteps.len() as u64 - guided)));
    let moved = (&limited.latents - &plain.latents).abs().max().double_value(&[]);
    assert!(moved > 1e-3, "the interval changes the samples (by {moved})");
}
