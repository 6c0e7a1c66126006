//! Why are DMA's prototypes smoother than samples? Measures, step by step, how the latents DMA's alignment hands to
//! the sampler differ from those of plain sampling from the same noise: their RMS (Gaussian noise and the sampler's
//! unaligned latents sit on a shell of known radius), per-channel standard deviation, and high-frequency energy
//! (variance of the Laplacian of each channel); then the sharpness of the final images.
//!
//! Run: `cargo run --release --example latent_drift -- [MODEL] [PROMPT,PROMPT,...] [K] [SEEDS] [keep-norm]`
//! (defaults: the embedded model, "footwear,a bag,a sneaker", 16, 3); other settings are the model's defaults.
use dma::evaluation::sharpness::laplacian_variance;
use dma::loaders::run_defaults;
use dma::method::{Alignment, HBranch};
use dma::pipelines::mental_average::seeded_latents;
use dma::loaders::ModelSource;
use dma::sampling::{sample, StepHooks};
use tch::{Device, Kind, Tensor};

/// Per step: (RMS, per-channel std averaged over channels, Laplacian variance per channel averaged), each the mean
/// over latents, of the latents the sampler's step receives.
#[derive(Default)]
struct Statistics(Vec<[f64; 3]>);

impl StepHooks for Statistics {
    fn before_step(&mut self, _: usize, _: i64, latents: Tensor) -> anyhow::Result<Tensor> {
        let [k, c, h, w] = latents.size()[..] else { anyhow::bail!("latents [K,C,H,W]") };
        let rms = latents.square().flatten(1, -1).mean_dim(1, false, Kind::Float).sqrt().mean(Kind::Float).double_value(&[]);
        let std = latents.flatten(2, -1).std_dim(2, false, false).mean(Kind::Float).double_value(&[]);
        let channels = latents.reshape([k * c, 1, h, w]);
        let high = laplacian_variance(&channels).iter().sum::<f64>() / (k * c) as f64;
        self.0.push([rms, std, high]);
        Ok(latents)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_spec = args.get(1).cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded").into());
    let prompts: Vec<String> = args.get(2).map_or("footwear,a bag,a sneaker", |s| s.as_str()).split(',').map(String::from).collect();
    let k: i64 = args.get(3).map_or(Ok(16), |s| s.parse())?;
    let seeds: u64 = args.get(4).map_or(Ok(3), |s| s.parse())?;
    let keep_norm = args.get(5).is_some_and(|s| s == "keep-norm");
    let source = ModelSource::resolve(&model_spec)?;
    let defaults = run_defaults(&source)?;
    let model = dma::loaders::load(&source, Device::Cpu, Kind::Float)?;
    let align = dma::method::AlignSettings { keep_norm, ..defaults.align(HBranch::Cond) };
    println!("model {model_spec}, K {k}, {seeds} seeds, {align:?}");
    for prompt in &prompts {
        let (mut plain_steps, mut dma_steps) = (Vec::new(), Vec::new());
        let (mut plain_sharp, mut dma_sharp) = (Vec::new(), Vec::new());
        for seed in 0..seeds {
            let settings = defaults.sampling(prompt, seed);
            let scheduler = settings.scheduler(&model)?;
            let (cond, uncond) = model.guidance_conditions(prompt)?;
            let denoiser = model.guided(&cond, &uncond, settings.guidance, settings.guidance_interval, settings.batch);
            let mut denoise = |x: &Tensor, t: i64| Ok(denoiser.predict(x, t));
            let init = seeded_latents(&model, k, seed);
            let mut plain = Statistics::default();
            let plain_latents = sample(&scheduler, init.shallow_clone(), &mut denoise, &mut plain)?;
            let alignment = Alignment::new(model.hspace(cond.shallow_clone(), settings.batch), align.clone(), &|_| {});
            let mut hooks = (alignment, Statistics::default());
            let dma_latents = sample(&scheduler, init, &mut denoise, &mut hooks)?;
            plain_steps.push(plain.0);
            dma_steps.push(hooks.1 .0);
            plain_sharp.extend(laplacian_variance(&model.decode(&plain_latents)));
            dma_sharp.extend(laplacian_variance(&model.decode(&dma_latents)));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!("\n{prompt:?}: final image sharpness, plain samples {:.4}, DMA's K latents {:.4} (ratio {:.3})", mean(&plain_sharp), mean(&dma_sharp), mean(&dma_sharp) / mean(&plain_sharp));
        println!("| step | RMS plain / DMA | channel std plain / DMA | high-frequency energy plain / DMA (ratio) |");
        println!("|---|---|---|---|");
        for step in 0..plain_steps[0].len() {
            let figure = |runs: &[Vec<[f64; 3]>], i: usize| mean(&runs.iter().map(|r| r[step][i]).collect::<Vec<_>>());
            let (p, d) = (|i| figure(&plain_steps, i), |i| figure(&dma_steps, i));
            println!("| {step} | {:.4} / {:.4} | {:.4} / {:.4} | {:.4} / {:.4} ({:.3}) |", p(0), d(0), p(1), d(1), p(2), d(2), d(2) / p(2));
        }
    }
    Ok(())
}
