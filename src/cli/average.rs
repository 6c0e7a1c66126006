//! `dma average` and `dma sample`: the same guided DDIM sampler, with and without DMA's alignment.
use super::common::{progress_bar, ModelArgs};
use super::report::{write_outputs, RunOutputs};
use anyhow::{bail, Context, Result};
use clap::Args;
use dma::method::{AlignSettings, HBranch};
use dma::output::OutDir;
use dma::pipelines::mental_average::{check_latents, prototype_index, run, seeded_latents, SamplingSettings};
use dma::weights::read_safetensors;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// Options shared by `average` and `sample`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The concept, as a text prompt.
    #[arg(long)]
    pub prompt: String,
    /// DDIM steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.0)]
    pub guidance: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Latents per UNet call; lower it when memory runs short (results do not depend on it).
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Output folder (must not exist or be empty); default out/<command>-<prompt>-<time>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start from these latents (a safetensors file with a tensor `latents` [K,C,H,W]) instead of seeded noise.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Also write the final latents to latents.safetensors.
    #[arg(long)]
    pub save_latents: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct AverageArgs {
    #[command(flatten)]
    pub common: SamplingArgs,
    /// Number of latents K whose trajectories are aligned (the paper uses 1000).
    #[arg(long, default_value_t = 32)]
    pub latents: i64,
    /// Steps aligned, counted from the first (the paper's t_stop).
    #[arg(long, default_value_t = 10)]
    pub align_steps: usize,
    /// Adam iterations per aligned step, at most.
    #[arg(long, default_value_t = 300)]
    pub iters: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-2)]
    pub lr: f64,
    /// Early stop: a latent stops when its loss improved by less than this fraction over --window iterations
    /// (0: always run --iters, as the paper does).
    #[arg(long, default_value_t = 0.01)]
    pub tol: f64,
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Which guidance branch h is read from.
    #[arg(long, value_enum, default_value_t = HBranch::Cond)]
    pub hspace_branch: HBranch,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub common: SamplingArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    pub num: i64,
}

impl SamplingArgs {
    fn settings(&self) -> SamplingSettings {
        SamplingSettings { prompt: self.prompt.clone(), steps: self.steps, guidance: self.guidance, seed: self.seed, batch: self.batch }
    }

    /// Checks every value that needs no model, so nonsense fails before anything is loaded.
    fn validate(&self, count_flag: &str, count: i64) -> Result<()> {
        if self.init_latents.is_none() && count < 1 {
            bail!("{count_flag} must be at least 1, got {count}");
        }
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if !self.guidance.is_finite() {
            bail!("--guidance must be a number, got {}", self.guidance);
        }
        if self.batch < 1 {
            bail!("--batch must be at least 1, got {}", self.batch);
        }
        Ok(())
    }

    fn out_dir(&self, command: &str) -> Result<OutDir> {
        let path = match &self.out {
            Some(p) => p.clone(),
            None => {
                let slug: String = self.prompt.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
                let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                PathBuf::from("out").join(format!("{command}-{}-{stamp}", slug.trim_matches('-')))
            }
        };
        OutDir::create(&path)
    }
}

/// The initial latents: from --init-latents, or `count` seeded ones.
fn initial_latents(args: &SamplingArgs, model: &dma::pipelines::StableDiffusion, count: i64) -> Result<Tensor> {
    match &args.init_latents {
        Some(path) => {
            let latents = read_latents(path)?;
            check_latents(model, &latents, &format!("--init-latents {}", path.display()))?;
            Ok(latents)
        }
        None => Ok(seeded_latents(model, count, args.seed)),
    }
}

fn read_latents(path: &Path) -> Result<Tensor> {
    let tensors = read_safetensors(path).with_context(|| format!("--init-latents {}", path.display()))?;
    let (_, latents) = tensors
        .into_iter()
        .find(|(name, _)| name == "latents")
        .with_context(|| format!("--init-latents {}: no tensor named `latents`", path.display()))?;
    Ok(latents.to_kind(tch::Kind::Float))
}

pub fn average(args: AverageArgs) -> Result<()> {
    let common = &args.common;
    common.validate("--latents", args.latents)?;
    let align = AlignSettings {
        align_steps: args.align_steps,
        iters: args.iters,
        lr: args.lr,
        tol: args.tol,
        window: args.window,
        branch: args.hspace_branch,
    };
    align.validate(common.steps)?;
    let out = common.out_dir("average")?;
    let started = Instant::now();
    let (source, model) = common.model.load()?;
    let load_seconds = started.elapsed().as_secs_f64();
    let init = initial_latents(common, &model, args.latents)?;
    let k = init.size()[0];
    let batches = (k + common.batch - 1) / common.batch;
    let bar = progress_bar(align.align_steps as u64 * batches as u64 * align.iters as u64 + common.steps as u64, common.quiet);
    bar.set_message("aligning");
    let settings = common.settings();
    let sampling_start = Instant::now();
    let result = run(&model, &settings, &init, Some(&align), 4, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let prototype = prototype_index(&model, &settings, align.branch, &result.latents)?;
    let sampling_seconds = sampling_start.elapsed().as_secs_f64();
    write_outputs(RunOutputs {
        command: "average",
        source: &source,
        model: &model,
        model_args: &common.model,
        settings: &settings,
        align: Some(&align),
        init_latents: common.init_latents.as_deref(),
        save_latents: common.save_latents,
        result: &result,
        prototype: Some(prototype),
        seconds: [load_seconds, sampling_seconds, started.elapsed().as_secs_f64()],
        out,
    })
}

pub fn sample(args: SampleArgs) -> Result<()> {
    let common = &args.common;
    common.validate("--num", args.num)?;
    let out = common.out_dir("sample")?;
    let started = Instant::now();
    let (source, model) = common.model.load()?;
    let load_seconds = started.elapsed().as_secs_f64();
    let init = initial_latents(common, &model, args.num)?;
    let bar = progress_bar(common.steps as u64, common.quiet);
    bar.set_message("sampling");
    let settings = common.settings();
    let sampling_start = Instant::now();
    let result = run(&model, &settings, &init, None, 4, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let sampling_seconds = sampling_start.elapsed().as_secs_f64();
    write_outputs(RunOutputs {
        command: "sample",
        source: &source,
        model: &model,
        model_args: &common.model,
        settings: &settings,
        align: None,
        init_latents: common.init_latents.as_deref(),
        save_latents: common.save_latents,
        result: &result,
        prototype: None,
        seconds: [load_seconds, sampling_seconds, started.elapsed().as_secs_f64()],
        out,
    })
}
