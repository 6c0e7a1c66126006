//! The gradient DMA follows, d loss / d latent through the UNet's encoder half, against central finite
//! differences in f64.
mod common;
use common::fixture;
use dma::method::hspace::{distance_to, HSpace};
use dma::pipelines::StableDiffusion;
use tch::{Device, Kind, Tensor};

#[test]
fn hspace_loss_gradient_matches_finite_differences() {
    let _rng = common::global_rng();
    let model = StableDiffusion::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Double).unwrap();
    let context = model.encode_prompt("a photo of a dog").unwrap();
    let hspace = HSpace { unet: &model.unet, context, batch: 4 };
    tch::manual_seed(7);
    let x = Tensor::randn([2, 4, 16, 16], (Kind::Double, Device::Cpu));
    let timestep = 601;
    let target = tch::no_grad(|| hspace.h(&Tensor::randn([1, 4, 16, 16], (Kind::Double, Device::Cpu)), timestep));
    let loss = |x: &Tensor| distance_to(&hspace.h(x, timestep), &target).sum(Kind::Double);

    let leaf = x.set_requires_grad(true);
    let grad = Tensor::run_backward(&[loss(&leaf)], &[&leaf], false, false).pop().unwrap();
    let x = leaf.detach();
    let eps = 1e-5;
    for seed in 0..4 {
        tch::manual_seed(100 + seed);
        let direction = Tensor::randn_like(&x);
        let analytic = (&grad * &direction).sum(Kind::Double).double_value(&[]);
        let numeric = tch::no_grad(|| {
            (loss(&(&x + &direction * eps)) - loss(&(&x - &direction * eps))).double_value(&[]) / (2.0 * eps)
        });
        let relative = (analytic - numeric).abs() / numeric.abs().max(1e-12);
        println!("direction {seed}: autograd {analytic:.10e}, finite differences {numeric:.10e}, relative error {relative:.2e}");
        assert!(relative < 1e-6, "gradient disagrees with finite differences: {analytic} vs {numeric}");
    }
}

#[test]
fn alignment_computes_no_weight_gradients() {
    let _rng = common::global_rng();
    let model = StableDiffusion::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Float).unwrap();
    let context = model.encode_prompt("a photo of a dog").unwrap();
    let hspace = HSpace { unet: &model.unet, context, batch: 4 };
    let x = Tensor::randn([1, 4, 16, 16], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let loss = hspace.h(&x, 500).square().mean(Kind::Float);
    loss.backward();
    assert!(x.grad().defined(), "the latent gets a gradient");
    let weight = &model.unet.conv_in.weight;
    assert!(!weight.requires_grad(), "weights must not require gradients");
    assert!(!weight.grad().defined(), "no gradient may be accumulated into a weight");
}
