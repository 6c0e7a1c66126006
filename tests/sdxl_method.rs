//! DMA on the tiny random SDXL fixture: the gradient of the h loss (the mid block's output, under SDXL's added
//! conditioning) against finite differences, and alignment shrinking the spread of h at every aligned step.
mod common;
use common::fixture;
use dma::method::hspace::distance_to;
use dma::method::{AlignSettings, HBranch};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::pipelines::DiffusionModel;
use tch::{Device, Kind, Tensor};

fn model(kind: Kind) -> DiffusionModel {
    dma::loaders::load_folder(&fixture("tiny-sdxl"), Device::Cpu, kind).unwrap()
}

#[test]
fn sdxl_hspace_loss_gradient_matches_finite_differences() {
    let _rng = common::global_rng();
    let model = model(Kind::Double);
    let hspace = model.hspace(model.condition("a photo of a dog").unwrap(), 4);
    tch::manual_seed(11);
    let x = Tensor::randn([2, 4, 16, 16], (Kind::Double, Device::Cpu));
    let timestep = 601;
    let target = tch::no_grad(|| hspace.h(&Tensor::randn([1, 4, 16, 16], (Kind::Double, Device::Cpu)), timestep));
    let leaf = x.set_requires_grad(true);
    let loss = || distance_to(&hspace.h(&leaf, timestep), &target).sum(Kind::Double);
    // As for SD's UNet (tests/gradient.rs): float64 central differences at 1e-5, 1e-6 relative.
    common::check_gradient(&[leaf.shallow_clone()], &loss, 1e-5, 1e-6);
}

#[test]
fn every_aligned_step_reduces_the_spread_of_sdxl_h() {
    let _rng = common::global_rng();
    let model = model(Kind::Float);
    let settings = SamplingSettings { prompt: "a photo of a dog".into(), steps: 6, guidance: 5.0, seed: 3, batch: 6, use_clipped_model_output: false };
    let align = AlignSettings { align_steps: 3, iters: 15, lr: 2e-2, tol: 0.0, window: 5, ..AlignSettings::paper(HBranch::Cond) };
    let init = seeded_latents(&model, 6, 3);
    let result = run(&model, &settings, &init, Some(&align), 2, &|_| {}).unwrap();
    assert_eq!(result.log.len(), 3, "one log entry per aligned step");
    common::assert_every_step_aligns(&result.log);
}
