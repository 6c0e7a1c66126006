//! DMA on the tiny random DiT fixture: the gradient of the h loss through the transformer blocks against finite
//! differences, alignment shrinking the spread of h (the last block's tokens) at every aligned step, and no
//! alignment being DiTPipeline's plain guided DDIM.
mod common;
use common::{assert_close, fixture, reference_json, references};
use dma::method::hspace::distance_to;
use dma::method::{AlignSettings, HBranch};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::pipelines::DiffusionModel;
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
    SamplingSettings { prompt: prompt.into(), steps: 6, guidance: 4.0, seed: 3, batch, use_clipped_model_output: false }
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
