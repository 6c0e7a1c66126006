//! The gradient DMA follows, d loss / d latent through the UNet's encoder half, against central finite
//! differences in f64.
mod common;
use common::fixture;
use dma::method::hspace::distance_to;
use tch::{Device, Kind, Tensor};

#[test]
fn hspace_loss_gradient_matches_finite_differences() {
    let _rng = common::global_rng();
    let model = dma::loaders::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Double).unwrap();
    let context = model.condition("a photo of a dog").unwrap();
    let hspace = model.hspace(context, 4);
    tch::manual_seed(7);
    let x = Tensor::randn([2, 4, 16, 16], (Kind::Double, Device::Cpu));
    let timestep = 601;
    let target = tch::no_grad(|| hspace.h(&Tensor::randn([1, 4, 16, 16], (Kind::Double, Device::Cpu)), timestep));
    let loss = |x: &Tensor| distance_to(&hspace.h(x, timestep), &target).sum(Kind::Double);

    let leaf = x.set_requires_grad(true);
    // float64 central differences at step 1e-5: truncation error ~1e-10 relative, rounding ~1e-16 / 1e-5 of the
    // loss; 1e-6 holds on any machine, and a wrong term in the gradient is off by far more.
    common::check_gradient(&[leaf.shallow_clone()], &|| loss(&leaf), 1e-5, 1e-6);
}

#[test]
fn alignment_computes_no_weight_gradients() {
    let _rng = common::global_rng();
    let model = dma::loaders::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Float).unwrap();
    let context = model.condition("a photo of a dog").unwrap();
    let hspace = model.hspace(context, 4);
    let x = Tensor::randn([1, 4, 16, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let loss = hspace.h(&x, 500).square().mean(Kind::Float);
    loss.backward();
    assert!(x.grad().defined(), "the latent gets a gradient");
    let weight = &common::unet_of(&model).conv_in.weight;
    assert!(!weight.requires_grad(), "weights must not require gradients");
    assert!(!weight.grad().defined(), "no gradient may be accumulated into a weight");
}
