//! DMA on the tiny random SDXL fixture: the gradient of the h loss (the mid block's output, under SDXL's added
//! conditioning) and of Textual Inversion's loss (through both text encoders) against finite differences, and
//! alignment shrinking the spread of h at every aligned step.
mod common;
use common::fixture;
use dma::method::hspace::distance_to;
use dma::method::{AlignSettings, HBranch};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::pipelines::DiffusionModel;
use dma::schedulers::ddim::DdimScheduler;
use dma::training::diffusion::noise_prediction_loss;
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
    let settings = SamplingSettings { prompt: "a photo of a dog".into(), steps: 6, guidance: 5.0, seed: 3, batch: 6, use_clipped_model_output: false, guidance_interval: None };
    let align = AlignSettings { align_steps: 3, iters: 15, lr: 2e-2, tol: 0.0, window: 5, ..AlignSettings::paper(HBranch::Cond) };
    let init = seeded_latents(&model, 6, 3);
    let result = run(&model, &settings, &init, Some(&align), 2, &|_| {}).unwrap();
    assert_eq!(result.log.len(), 3, "one log entry per aligned step");
    common::assert_every_step_aligns(&result.log);
}

#[test]
fn sdxl_textual_inversion_gradient_matches_finite_differences() {
    let _rng = common::global_rng();
    let mut model = model(Kind::Double);
    let scheduler = DdimScheduler::new(&model.scheduler, 1).unwrap();
    tch::manual_seed(5);
    // One row per encoder (widths 32 and 40): the loss reaches each through its encoder, the first only through
    // the states, the second through the states and the pooled projection.
    let rows: Vec<Tensor> = [32, 40].iter().map(|&d| (Tensor::randn([d], (Kind::Double, Device::Cpu)) * 0.1).set_requires_grad(true)).collect();
    model.add_token("<fd-token>", &rows).unwrap();
    let x0 = Tensor::randn([2, 4, 16, 16], (Kind::Double, Device::Cpu));
    let loss = || {
        tch::manual_seed(9);
        let condition = model.trainable_condition("a photo of <fd-token>").unwrap();
        noise_prediction_loss(&model.denoiser, &scheduler, &x0, &condition).to_kind(Kind::Double)
    };
    let grads = Tensor::run_backward(&[loss()], &rows, false, false);
    for (row, grad) in rows.iter().zip(&grads) {
        assert!(grad.abs().max().double_value(&[]) > 0.0, "no gradient reaches the row of width {}", row.size()[0]);
    }
    // As for SD's Textual Inversion (tests/adapters.rs).
    common::check_gradient(&rows, &loss, 1e-6, 1e-5);
}
