//! How well the alignment gradient survives half precision: the gradient of one alignment iteration with respect
//! to the latent, with the UNet in f16 and in bf16, against the same gradient with the UNet in f32 (cosine
//! similarity), on a UNet with seeded random weights built from a diffusers config (default: SD 1.5's, 64x64
//! latents, h 1280x8x8; SDXL base's, `assets/configs/sdxl/unet/config.json`, has 128x128 latents and h 1280x32x32,
//! 16 times the elements, with a random pooled embedding and the size numbers of a 1024 px image).
//!
//! The weights are rounded to values f16 and bf16 both hold exactly (`exact_in_half`), so every precision runs the
//! same model and only the arithmetic differs; the `weights` line says how much rounding an f32 checkpoint's
//! weights to bf16 changes the gradient by itself.
//!
//! Two points: the start of a step (the target is the mean f32 h of `--latents` latents) and a point where the
//! loss is 100x lower (the target moved 90% of the way to the latent's own f32 h, so the f32 gradient is a tenth
//! of the start's). Two ways to get the half-precision gradient: `before` backpropagates the loss of the UNet's
//! own h as it is (the alignment before loss scaling and the f32 residual); `after` is `loss_and_gradient`, what
//! the alignment does now.
//!
//! ```text
//! cargo run --release --example half_gradients -- [--config assets/configs/sd15/unet/config.json] \
//!     [--kinds f16,bf16] [--latents 2] [--seed 0] [--timestep 951] [--threads N] [--device cpu|cuda]
//! ```
//! Prints one JSON line for f32, one for the weights' rounding and one per half precision.
use anyhow::{bail, Result};
use clap::Parser;
use dma::method::alignment::loss_and_gradient;
use dma::method::hspace::{distance_to, HSpace};
use dma::models::denoiser::{Condition, Denoiser, Network};
use dma::models::unet::config::TIME_IDS;
use dma::models::unet::{UNet2DConditionModel, UNetConfig};
use dma::weights::Weights;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "Cosine of half-precision alignment gradients against f32 on a random-weight UNet")]
struct Args {
    /// A diffusers UNet config.json.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/configs/sd15/unet/config.json"))]
    config: PathBuf,
    /// Comma-separated: f16, bf16.
    #[arg(long, value_delimiter = ',', default_value = "f16,bf16")]
    kinds: Vec<String>,
    /// Latents whose mean h is the step's target.
    #[arg(long, default_value_t = 2)]
    latents: i64,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// The first aligned step of 20 DDIM steps.
    #[arg(long, default_value_t = 951)]
    timestep: i64,
    #[arg(long)]
    threads: Option<i32>,
    /// cpu, cuda or cuda:N (f16 on a CPU is slow: SD 1.5's batch of 2 took 13-32 minutes on 2 cores).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `w` rounded to bf16, with magnitudes below f16's smallest normal (6.1e-5) set to zero: values with bf16's 8
/// significant bits in f16's normal range, which both formats hold exactly.
fn exact_in_half(w: &Tensor) -> Tensor {
    let rounded = w.to_kind(Kind::BFloat16).to_kind(Kind::Float);
    rounded.where_scalarother(&rounded.abs().ge(6.103515625e-5), 0.0)
}

/// The gradient as the alignment computed it before this fix (the summed loss of the UNet's own h backpropagated
/// as it is), and that h.
fn gradient_before(hspace: &HSpace, x: &Tensor, target: &Tensor, timestep: i64) -> (Tensor, Tensor) {
    let leaf = x.detach().set_requires_grad(true);
    let h = hspace.h(&leaf, timestep);
    let losses = distance_to(&h, target);
    (Tensor::run_backward(&[losses.sum(losses.kind())], &[&leaf], false, false).pop().unwrap(), h.detach())
}

/// Cosine similarity of each row of `a` with the same row of `b`, in f64.
fn row_cosines(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (a, b) = (a.flatten(1, -1).to_kind(Kind::Double), b.flatten(1, -1).to_kind(Kind::Double));
    let dot = (&a * &b).sum_dim_intlist(1, false, Kind::Double);
    let norms = a.norm_scalaropt_dim(2, [1], false) * b.norm_scalaropt_dim(2, [1], false);
    Vec::<f64>::try_from(dot / norms).unwrap()
}

/// Share of each row's elements that are exactly zero (a gradient lost to underflow).
fn row_zero_shares(g: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(g.flatten(1, -1).eq(0.0).to_kind(Kind::Double).mean_dim(1, false, Kind::Double)).unwrap()
}

/// The two points' values as JSON.
fn points(v: &[f64]) -> serde_json::Value {
    json!({"start": v[0], "100x_lower": v[1]})
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let kinds: Vec<(String, Kind)> = args
        .kinds
        .iter()
        .map(|k| match k.as_str() {
            "f16" => Ok((k.clone(), Kind::Half)),
            "bf16" => Ok((k.clone(), Kind::BFloat16)),
            other => bail!("--kinds: unknown `{other}` (expected f16 or bf16)"),
        })
        .collect::<Result<_>>()?;
    let config = UNetConfig::from_file(&args.config)?;
    let size = config.sample_size.unwrap_or(64);
    let t = args.timestep;
    let device = dma::device::parse_device(&args.device)?;

    let start = Instant::now();
    tch::manual_seed(args.seed);
    let fresh = Weights::initialise("random UNet".into(), device, Kind::Float);
    UNet2DConditionModel::load(&fresh.root(), &config)?;
    let original: HashMap<String, Tensor> = fresh.named_tensors().into_iter().map(|(k, w)| (k, w.detach())).collect();
    drop(fresh);
    let exact: HashMap<String, Tensor> = original.iter().map(|(k, w)| (k.clone(), exact_in_half(w))).collect();
    let model = |weights: &HashMap<String, Tensor>, kind: Kind| {
        let shared = weights.iter().map(|(k, w)| (k.clone(), w.shallow_clone())).collect();
        UNet2DConditionModel::load(&Weights::from_tensors(shared, "random UNet".into(), device, kind).root(), &config).map(|u| Denoiser::new(Network::UNet(u)))
    };
    let build_s = start.elapsed().as_secs_f64();

    let latents = Tensor::randn([args.latents, config.in_channels, size, size], (Kind::Float, Device::Cpu)).to_device(device);
    let states = exact_in_half(&Tensor::randn([1, 77, config.cross_attention_dim], (Kind::Float, Device::Cpu))).to_device(device);
    // SDXL: a pooled text embedding and the size numbers of a whole image of the latent's size (VAE factor 8).
    let added = config.text_time.map(|tt| {
        let pooled = exact_in_half(&Tensor::randn([1, tt.input_dim - TIME_IDS * tt.time_embed_dim], (Kind::Float, Device::Cpu))).to_device(device);
        let px = size * 8;
        (pooled, Tensor::from_slice(&[px, px, 0, 0, px, px]).to_kind(Kind::Float).unsqueeze(0).to_device(device))
    });
    let condition = |kind: Kind| match &added {
        None => Condition::Text(states.to_kind(kind)),
        Some((pooled, time_ids)) => Condition::TextTime { states: states.to_kind(kind), pooled: pooled.to_kind(kind), time_ids: time_ids.shallow_clone() },
    };
    // Row 0: the start of a step; row 1: the target 90% of the way to latent 0's h, so its loss is 100x lower.
    let x = latents.narrow(0, 0, 1).repeat([2, 1, 1, 1]);
    let (targets, h32, losses32, grad32, f32_s) = {
        let unet = model(&exact, Kind::Float)?;
        let hspace = HSpace::new(&unet, condition(Kind::Float), Kind::Float, args.latents);
        let h = hspace.h_all(&latents, t);
        let target = h.mean_dim(0, true, Kind::Float);
        let own = h.narrow(0, 0, 1);
        let targets = Tensor::cat(&[&target, &(&own + (&target - &own) * 0.1)], 0);
        let t0 = Instant::now();
        let (losses, grad) = loss_and_gradient(&hspace, &x, &targets, t);
        (targets, own, losses, grad, t0.elapsed().as_secs_f64())
    };
    let rms = |g: &Tensor| Vec::<f64>::try_from(g.flatten(1, -1).square().mean_dim(1, false, Kind::Double).sqrt()).unwrap();
    let h_numel = h32.numel() as f64;
    let h_rms = h32.square().mean(Kind::Double).sqrt().double_value(&[]);
    let h_grad_rms: Vec<f64> = losses32.iter().map(|l| 2.0 * l.sqrt() / h_numel).collect();
    println!(
        "{}",
        json!({"kind": "f32", "config": args.config, "device": args.device, "latent_shape": &x.size()[1..], "h_elements": h32.numel(), "h_rms": h_rms,
            "build_s": build_s, "seconds": f32_s, "loss": points(&losses32), "h_grad_rms": points(&h_grad_rms),
            "latent_grad_rms": points(&rms(&grad32))})
    );
    {
        let unet = model(&original, Kind::Float)?;
        let hspace = HSpace::new(&unet, condition(Kind::Float), Kind::Float, 2);
        let (_, grad) = loss_and_gradient(&hspace, &x, &targets, t);
        println!("{}", json!({"weights": "f32 as initialised vs rounded (exact_in_half)", "cosine": points(&row_cosines(&grad, &grad32))}));
    }
    drop(original);

    for (name, kind) in kinds {
        let unet = model(&exact, kind)?;
        let hspace = HSpace::new(&unet, condition(kind), kind, 2);
        let t0 = Instant::now();
        let (before, h) = gradient_before(&hspace, &x, &targets, t);
        // Rounding noise of this precision's own h (row 0, latent 0 as in f32), relative to h's RMS.
        let noise = (h.narrow(0, 0, 1) - &h32).square().mean(Kind::Double).sqrt().double_value(&[]) / h_rms;
        let before_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let (losses, after) = loss_and_gradient(&hspace, &x, &targets, t);
        let after_s = t0.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({"kind": name, "loss": points(&losses), "h_noise_relative_rms": noise,
                "cosine_vs_f32": {"before": points(&row_cosines(&before, &grad32)), "after": points(&row_cosines(&after, &grad32))},
                "zero_share": {"before": points(&row_zero_shares(&before)), "after": points(&row_zero_shares(&after))},
                "seconds": {"before": before_s, "after": after_s}})
        );
    }
    Ok(())
}
