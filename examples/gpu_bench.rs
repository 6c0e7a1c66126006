//! DMA's speed on a device: alignment iterations per second (one latent's forward and backward through the UNet's
//! encoder half, and its Adam update) for each dtype and batch, then the wall time of one DMA run at the model's
//! defaults. On SD 1.5's configuration with random weights unless --model names a model folder. `bench/gpu.sh`
//! runs it.
//!
//! Run: `target/release/examples/gpu_bench [--device cuda] [--model DIR] [--dtypes f32,bf16,f16]
//! [--batches 1,2,4,8,16,32] [--iters 5] [--latents K]`
use anyhow::{Context, Result};
use clap::Parser;
use dma::device::{parse_device, parse_kind};
use dma::distributed::Ranks;
use dma::loaders::run_defaults;
use dma::method::{alignment::loss_and_gradient, HBranch};
use dma::models::clip_text::ClipTextModel;
use dma::models::denoiser::{Denoiser, Network};
use dma::models::unet::UNet2DConditionModel;
use dma::models::vae::AutoencoderKL;
use dma::optim::Adam;
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::mental_average::{mental_average_from, seeded_latents, SamplingSettings};
use dma::checkpoint::NoCheckpoints;
use dma::loaders::single_file::{Configs, Family};
use dma::pipelines::model::{Conditioner, ModelInfo};
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use dma::weights::Weights;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "cuda")]
    device: String,
    /// A model folder; default: SD 1.5's configuration with random weights.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,f16")]
    dtypes: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    batches: Vec<i64>,
    /// Timed alignment iterations per dtype and batch (after one untimed).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// K of the DMA run [default: the model's].
    #[arg(long)]
    latents: Option<i64>,
    /// The DMA run's sampling steps and Adam iterations per aligned step, at most [default: the model's].
    #[arg(long)]
    dma_steps: Option<usize>,
    #[arg(long)]
    dma_iters: Option<usize>,
}

/// Every weight of one component, created as PyTorch initialises its layers (seeded), on the CPU in f32.
fn random_weights(name: &str, build: impl Fn(&dma::weights::WeightPath) -> Result<()>) -> Result<HashMap<String, Tensor>> {
    let weights = Weights::initialise(format!("random {name}"), Device::Cpu, Kind::Float);
    weights.build(|p| build(p))?;
    Ok(weights.named_tensors().into_iter().map(|(k, t)| (k, t.detach())).collect())
}

/// The model at `device` in `kind`: the folder given, or SD 1.5 built from `random` (its random weights).
fn model(args: &Args, random: &Option<[HashMap<String, Tensor>; 3]>, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let Some([unet, text, vae]) = random else {
        let dir = args.model.clone().context("a model folder")?;
        return dma::loaders::load(&ModelSource::Folder(dir), device, kind);
    };
    let configs = Configs::builtin(Family::Sd1)?;
    let frozen = |tensors: &HashMap<String, Tensor>, name: &str| Weights::from_tensors(tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect(), name.into(), device, kind);
    Ok(DiffusionModel {
        conditioner: Conditioner::Text {
            tokenizer: configs.tokenizer,
            text_encoder: frozen(text, "text encoder").build(|p| ClipTextModel::load(p, &configs.text_encoder))?,
        },
        denoiser: Denoiser::new(Network::UNet(frozen(unet, "unet").build(|p| UNet2DConditionModel::load(p, &configs.unet))?)),
        vae: Some(frozen(vae, "vae").build(|p| AutoencoderKL::load(p, &configs.vae))?),
        scheduler: configs.scheduler,
        info: ModelInfo::new("SD 1.5 configuration, random weights".into(), Vec::new()),
        device,
        kind,
    })
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    let started = Instant::now();
    let random = match &args.model {
        Some(_) => None,
        None => {
            let configs = Configs::builtin(Family::Sd1)?;
            tch::manual_seed(0);
            let unet = random_weights("unet", |p| UNet2DConditionModel::load(p, &configs.unet).map(drop))?;
            let text = random_weights("text encoder", |p| ClipTextModel::load(p, &configs.text_encoder).map(drop))?;
            let vae = random_weights("vae", |p| AutoencoderKL::load(p, &configs.vae).map(drop))?;
            Some([unet, text, vae])
        }
    };
    let name = args.model.as_ref().map_or("SD 1.5 (random weights)".to_string(), |m| m.display().to_string());
    println!("{name} on {device:?}; weights ready in {:.1} s", started.elapsed().as_secs_f64());
    println!("\n| dtype | batch | seconds per iteration | latent-iterations per second |\n|---|---|---|---|");
    for dtype in &args.dtypes {
        let kind = parse_kind(dtype)?;
        let sd = model(&args, &random, device, kind)?;
        let [c, h, w] = sd.latent_shape();
        let context = sd.condition("a photo of a dog")?;
        for &batch in &args.batches {
            tch::manual_seed(1);
            let mut x = Tensor::randn([batch, c, h, w], (Kind::Float, device));
            let hspace = sd.hspace(context.shallow_clone(), batch);
            let target = hspace.h_all(&x, 500).mean_dim(0, true, Kind::Float) + 0.1;
            let mut adam = Adam::new(&x, 2e-2);
            let mut iteration = |x: &Tensor| {
                let (_, grad) = loss_and_gradient(&hspace, x, &target, 500);
                tch::no_grad(|| adam.update(x, &grad))
            };
            x = iteration(&x);
            synchronize(device);
            let start = Instant::now();
            for _ in 0..args.iters {
                x = iteration(&x);
            }
            synchronize(device);
            let seconds = start.elapsed().as_secs_f64() / args.iters as f64;
            println!("| {dtype} | {batch} | {seconds:.4} | {:.1} |", batch as f64 / seconds);
        }
    }
    let sd = model(&args, &random, device, Kind::Float)?;
    let defaults = match &args.model {
        Some(dir) => run_defaults(&ModelSource::Folder(dir.clone()))?,
        None => RunDefaults::default(),
    };
    let latents = args.latents.unwrap_or(defaults.latents);
    let settings = SamplingSettings { steps: args.dma_steps.unwrap_or(defaults.steps), ..defaults.sampling("a photo of a dog", 0) };
    let mut align = defaults.align(HBranch::Cond);
    align.iters = args.dma_iters.unwrap_or(align.iters);
    align.align_steps = align.align_steps.min(settings.steps);
    let start = Instant::now();
    let (result, _) = mental_average_from(&sd, &settings, &align, &seeded_latents(&sd, latents, 0), &|_| {}, ("dma", &mut NoCheckpoints), Ranks::alone())?;
    synchronize(device);
    println!(
        "\nOne DMA run at the defaults (f32, K {latents}, {} steps, {} aligned, at most {} Adam iterations, early stop {}): {:.1} s; passes {:?}",
        settings.steps,
        align.align_steps,
        align.iters,
        align.tol,
        start.elapsed().as_secs_f64(),
        result.passes
    );
    Ok(())
}
