//! `dma average` and `dma sample`: the same guided DDIM sampler, with and without DMA's alignment.
use super::common::{check_class_ids, check_prompt, class_prompt, out_dir, progress_bar, ModelArgs};
use super::job::agree;
use super::run::{Resumed, Run};
use dma::checkpoint::sampling::share_start;
use dma::distributed::{Ranks, Share};
use dma::loaders::ModelSource;
use tch::Tensor;
use super::report::{write_outputs, RunOutputs};
use super::resume::Resumable;
use dma::checkpoint::sampling::Start;
use dma::checkpoint::Checkpoints;
use dma::loaders::run_defaults;
use dma::pipelines::memory::{self, Work};
use serde_json::json;
use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args};
use serde::{Deserialize, Serialize};
use dma::adapters::{Adapter, AdapterKind};
use dma::method::{AlignSettings, HBranch, Schedule};
use dma::output::OutDir;
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::mental_average::{prototype_index, read_latents, run_from, seeded_latents, SamplingResult, SamplingSettings};
use dma::pipelines::mental_average::work_until;
use dma::pipelines::DiffusionModel;
use std::path::PathBuf;
use std::time::Instant;

/// Options shared by `average` and `sample`.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct SamplingArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The concept, as a text prompt; for a class-conditional model (DiT), one of its class names (required, except
    /// with --resume or --class-id).
    #[arg(long)]
    pub prompt: Option<String>,
    /// For a class-conditional model (DiT): the class by its id instead of --prompt (the prompt `class N`).
    #[arg(long, conflicts_with = "prompt")]
    #[serde(default)]
    pub class_id: Option<i64>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (must not exist or be empty); default out/<command>-<prompt>-<time>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start from these latents (a safetensors file with a tensor `latents` [K,C,H,W]) instead of seeded noise.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Replace the result already in --out (by default an --out that holds files is refused), or start an
    /// unfinished run there over.
    #[arg(long)]
    pub force: bool,
    /// Also write the final latents to latents.safetensors.
    #[arg(long)]
    pub save_latents: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The sampler's options, shared by every command that samples.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct SamplerArgs {
    /// DDIM steps [default: 20, or the model's dma_defaults.json].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale [default: 7, or the model's].
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Latents per network call; lower it when memory runs short (results do not depend on it) [default: 8, or the
    /// model's].
    #[arg(long)]
    pub batch: Option<i64>,
    /// DDIM re-derives the noise from the clipped prediction of x0 (diffusers' use_clipped_model_output; only
    /// matters for schedulers with clip_sample, i.e. pixel-space models) [default: false, or the model's].
    #[arg(long)]
    pub use_clipped_model_output: Option<bool>,
    /// Guidance only at the timesteps FROM..=TO of the model's training schedule (e.g. 0,600 of 0..999; the
    /// conditional prediction alone elsewhere, one pass instead of two), or `all` [default: all, or the model's].
    #[arg(long, value_name = "FROM,TO|all")]
    pub guidance_interval: Option<String>,
}

impl SamplerArgs {
    /// The flags over the model's defaults for `prompt` from `seed`, checked before anything is loaded so
    /// nonsense fails at once.
    pub fn settings(&self, defaults: &RunDefaults, prompt: &str, seed: u64) -> Result<SamplingSettings> {
        let defaults = defaults.sampling(prompt, seed);
        let settings = SamplingSettings {
            steps: self.steps.unwrap_or(defaults.steps),
            guidance: self.guidance.unwrap_or(defaults.guidance),
            batch: self.batch.unwrap_or(defaults.batch),
            use_clipped_model_output: self.use_clipped_model_output.unwrap_or(defaults.use_clipped_model_output),
            guidance_interval: match self.guidance_interval.as_deref() {
                None => defaults.guidance_interval,
                Some("all") => None,
                Some(text) => Some(text.parse().context("--guidance-interval")?),
            },
            ..defaults
        };
        if settings.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if !settings.guidance.is_finite() {
            bail!("--guidance must be a number, got {}", settings.guidance);
        }
        if settings.batch < 1 {
            bail!("--batch must be at least 1, got {}", settings.batch);
        }
        Ok(settings)
    }
}

/// DMA's alignment options, shared by `average` and `modes --average`.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct AlignArgs {
    /// Number of latents K whose trajectories are aligned (the paper uses 1000) [default: 32, or the model's].
    #[arg(long)]
    pub latents: Option<i64>,
    /// Steps aligned, counted from the first (the paper's t_stop) [default: 10, or the model's].
    #[arg(long)]
    pub align_steps: Option<usize>,
    /// Adam iterations per aligned step, at most [default: 300, or the model's].
    #[arg(long)]
    pub iters: Option<usize>,
    /// Adam learning rate [default: 0.02, or the model's].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Early stop: a latent stops when its loss improved by less than this fraction over --window iterations
    /// (0: always run --iters, as the paper does) [default: 0.01, or the model's].
    #[arg(long)]
    pub tol: Option<f64>,
    /// [default: 20, or the model's]
    #[arg(long)]
    pub window: Option<usize>,
    /// Which guidance branch h is read from.
    #[arg(long, value_enum, default_value_t = HBranch::Cond)]
    pub hspace_branch: HBranch,
    /// The alignment schedule the other flags start from: the model's defaults, or the paper's recipe (10 aligned
    /// steps x 300 Adam iterations, no early stop; K is --latents) [default: default].
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Adam iterations of every aligned step after the first, at most [default: --iters].
    #[arg(long)]
    pub later_iters: Option<usize>,
    /// "Mean of many, align few": optimise only this many of the K latents; the others are sampled unaligned and
    /// only move the target (forward passes) [default: all K].
    #[arg(long)]
    pub optimise: Option<i64>,
    /// With --optimise: the aligned steps, from the first, whose target is the mean h of all K latents; later
    /// steps' target is the optimised latents' mean [default: every aligned step].
    #[arg(long)]
    pub wide_target_steps: Option<usize>,
    /// End the alignment after the first aligned step whose spread of h fell to more than this fraction of its
    /// start (the trajectories have met) [default: align every --align-steps step].
    #[arg(long)]
    pub settle: Option<f64>,
    /// Rescale each latent after every Adam iteration to the norm it had before the step (`--keep-norm` alone:
    /// true) [default: false, or the model's].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(default)]
    pub keep_norm: Option<bool>,
}

impl AlignArgs {
    /// K: --latents or the model's default, checked.
    pub fn latents(&self, defaults: &RunDefaults) -> Result<i64> {
        let latents = self.latents.unwrap_or(defaults.latents);
        if latents < 1 {
            bail!("--latents must be at least 1, got {latents}");
        }
        Ok(latents)
    }

    /// The flags over the schedule (the model's defaults unless --schedule says otherwise), checked against the
    /// sampling steps.
    pub fn settings(&self, defaults: &RunDefaults, steps: usize) -> Result<AlignSettings> {
        let schedule = self.schedule.unwrap_or(Schedule::Default).settings(defaults.align(self.hspace_branch));
        let align_steps = self.align_steps.unwrap_or(schedule.align_steps);
        let align = AlignSettings {
            align_steps,
            iters: self.iters.unwrap_or(schedule.iters),
            lr: self.lr.unwrap_or(schedule.lr),
            tol: self.tol.unwrap_or(schedule.tol),
            window: self.window.unwrap_or(schedule.window),
            later_iters: self.later_iters.or(schedule.later_iters),
            // A model's defaults are capped at what the run has (a run of fewer latents optimises them all; one of
            // fewer aligned steps widens its target on those it has); flags are checked instead (`validate_for`).
            optimised: self.optimise.or(schedule.optimised.map(|m| m.min(self.latents(defaults).unwrap_or(m)))),
            wide_target_steps: self.wide_target_steps.or(schedule.wide_target_steps.filter(|_| align_steps > 0).map(|w| w.min(align_steps))),
            settle: self.settle.or(schedule.settle),
            keep_norm: self.keep_norm.unwrap_or(schedule.keep_norm),
            ..schedule
        };
        align.validate(steps)?;
        Ok(align)
    }
}

#[derive(Args, Debug, Serialize, Deserialize)]
pub struct AverageArgs {
    #[command(flatten)]
    pub common: SamplingArgs,
    #[command(flatten)]
    pub align: AlignArgs,
    /// Run with an adapter: a Textual Inversion embedding (learned_embeds.safetensors; the prompt must contain its
    /// token) or a UNet LoRA (pytorch_lora_weights.safetensors, peft key names), e.g. one that `dma modes
    /// --average` learned. Under LoRA the guidance defaults to the model's LoRA guidance (3 for SD).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Continue the stopped run that was writing to DIR (its --out), from its last finished step, with the same
    /// settings; the result is the one the run would have given uninterrupted.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

#[derive(Args, Debug, Serialize, Deserialize)]
pub struct SampleArgs {
    #[command(flatten)]
    pub common: SamplingArgs,
    /// Number of samples.
    #[arg(long, default_value_t = 16)]
    pub num: i64,
    /// Continue the stopped run that was writing to DIR (its --out), from its last finished step.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

impl SamplingArgs {
    /// The flags over the model's defaults, with `count` (the latents or samples `count_flag` asks for) checked.
    pub fn settings(&self, defaults: &RunDefaults, count_flag: &str, count: i64) -> Result<SamplingSettings> {
        let settings = self.sampler.settings(defaults, &self.prompt()?, self.seed)?;
        if self.init_latents.is_none() && count < 1 {
            bail!("{count_flag} must be at least 1, got {count}");
        }
        Ok(settings)
    }

    pub fn prompt(&self) -> Result<String> {
        match (&self.prompt, self.class_id) {
            (_, Some(id)) => Ok(class_prompt(id)),
            (Some(prompt), None) => Ok(prompt.clone()),
            (None, None) => bail!("--prompt is required: the concept, as a text prompt (or, for a DiT, --class-id N)"),
        }
    }

    pub fn out_dir(&self, command: &str) -> Result<OutDir> {
        out_dir(self.out.as_deref(), command, &self.prompt()?, self.force)
    }

    /// The recorded options of a run resumed into `dir`, shown as `given` asks.
    pub fn resumed(self, given: &SamplingArgs, dir: PathBuf) -> Self {
        Self { quiet: given.quiet, out: Some(dir), ..self }
    }
}

impl Resumable for AverageArgs {
    fn resume_dir(&self) -> Option<PathBuf> {
        self.resume.clone()
    }
    fn resumed(self, given: &Self, dir: PathBuf) -> Self {
        Self { common: self.common.resumed(&given.common, dir), resume: None, ..self }
    }
}

impl Resumable for SampleArgs {
    fn resume_dir(&self) -> Option<PathBuf> {
        self.resume.clone()
    }
    fn resumed(self, given: &Self, dir: PathBuf) -> Self {
        Self { common: self.common.resumed(&given.common, dir), resume: None, ..self }
    }
}

/// What `average` and `sample` set up before sampling, on every rank: the run, the model, its source, the
/// settings and the run's record of them.
struct Setup {
    run: Run,
    source: ModelSource,
    model: DiffusionModel,
    settings: SamplingSettings,
    load_seconds: f64,
}

/// The run opened (`Run::open`) and the model loaded on every rank, made ready by `prepare`.
fn set_up(
    (ranks, resumed): (Ranks, Resumed),
    (command, args): (&'static str, &impl Serialize),
    common: &SamplingArgs,
    (source, settings, resolved): (ModelSource, SamplingSettings, serde_json::Value),
    prepare: impl FnOnce(&mut DiffusionModel) -> Result<()>,
) -> Result<Setup> {
    let run = Run::open(ranks, command, resumed, args, &resolved, || common.out_dir(command))?;
    let model = run.load_model(&common.model, &source, &resolved, |model| {
        prepare(model)?;
        check_class_ids(model, common.class_id.as_slice())?;
        check_prompt(model, &common.prompt()?, None)
    })?;
    let load_seconds = run.seconds();
    Ok(Setup { run, source, model, settings, load_seconds })
}

pub fn average(args: AverageArgs, matches: &ArgMatches, ranks: Ranks) -> Result<()> {
    let (resumed, args) = Run::arguments("average", args, matches, ranks)?;
    let common = &args.common;
    let resolve = || -> Result<_> {
        let source = common.model.source()?;
        let mut defaults = run_defaults(&source)?;
        // An adapter is read and checked against the prompt before anything long starts.
        let adapter = args.adapter.as_deref().map(|path| -> Result<Adapter> {
            let adapter = Adapter::read(path)?;
            adapter.check_prompt(&common.prompt()?).with_context(|| format!("--adapter {}", path.display()))?;
            Ok(adapter)
        });
        let adapter = adapter.transpose()?;
        if adapter.as_ref().is_some_and(|a| a.kind() == AdapterKind::Lora) {
            defaults.guidance = defaults.lora_guidance;
        }
        let count = args.align.latents(&defaults)?;
        let settings = common.settings(&defaults, "--latents", count)?;
        let align = args.align.settings(&defaults, settings.steps)?;
        Ok((source, adapter, count, settings, align))
    };
    let (source, adapter, count, settings, align) = agree(ranks, resolve())?;
    let resolved = json!({ "sampling": settings, "alignment": align });
    let apply_adapter = |model: &mut DiffusionModel| -> Result<()> {
        if let (Some(adapter), Some(path)) = (&adapter, &args.adapter) {
            adapter.apply(model).with_context(|| format!("--adapter {}", path.display()))?;
        }
        Ok(())
    };
    let mut setup = set_up((ranks, resumed), ("average", &args), common, (source, settings, resolved), apply_adapter)?;
    let sampling_start = Instant::now();
    let (mut result, at_step) = sample_resumably(&mut setup, common, Some(&align), ("--latents", count))?;
    let prototype = prototype_index(&setup.model, &setup.settings, &align, &mut result, ranks)?;
    finish(setup, common, RunKind { command: "average", align: Some(&align), adapter: args.adapter.as_deref(), prototype: Some(prototype) }, (result, at_step), sampling_start)
}

pub fn sample(args: SampleArgs, matches: &ArgMatches, ranks: Ranks) -> Result<()> {
    let (resumed, args) = Run::arguments("sample", args, matches, ranks)?;
    let common = &args.common;
    let resolve = || -> Result<_> {
        let source = common.model.source()?;
        let settings = common.settings(&run_defaults(&source)?, "--num", args.num)?;
        Ok((source, settings))
    };
    let (source, settings) = agree(ranks, resolve())?;
    let resolved = json!({ "sampling": settings });
    let mut setup = set_up((ranks, resumed), ("sample", &args), common, (source, settings, resolved), |_| Ok(()))?;
    let sampling_start = Instant::now();
    let result = sample_resumably(&mut setup, common, None, ("--num", args.num))?;
    finish(setup, common, RunKind { command: "sample", align: None, adapter: None, prototype: None }, result, sampling_start)
}

/// What distinguishes an `average` run's outputs from a `sample` run's.
struct RunKind<'a> {
    command: &'static str,
    align: Option<&'a AlignSettings>,
    adapter: Option<&'a std::path::Path>,
    prototype: Option<i64>,
}

/// Rank 0 writes every output, with what each rank did; then every rank learns whether that worked.
/// `at_step` is the step a resumed run took up, which its record of the resumption gains.
fn finish(setup: Setup, common: &SamplingArgs, kind: RunKind, (result, at_step): (SamplingResult, usize), sampling_start: Instant) -> Result<()> {
    let sampling_seconds = sampling_start.elapsed().as_secs_f64();
    let Setup { run, source, model, settings, load_seconds } = setup;
    let device = common.model.device_on_rank(run.ranks);
    run.finish(&device, json!({ "load_seconds": load_seconds, "sampling_seconds": sampling_seconds }), |out, mut resumed, ranks| {
        if resumed.is_object() {
            resumed["at_step"] = json!(at_step);
        }
        write_outputs(RunOutputs {
            command: kind.command,
            source: &source,
            model: &model,
            model_args: &common.model,
            settings: &settings,
            align: kind.align,
            init_latents: common.init_latents.as_deref(),
            adapter: kind.adapter,
            save_latents: common.save_latents,
            result: &result,
            prototype: kind.prototype,
            resumed,
            ranks,
            seconds: [load_seconds, sampling_seconds, load_seconds + sampling_seconds],
            out,
        })
    })
}

/// Where a run of `dma average` or `dma sample` starts, decided by rank 0 and given to every rank: the checkpoint
/// of its stage when it is resumed (--init-latents is then not read again), else the latents of --init-latents,
/// else `count` seeded ones (`count` set by its flag). Each rank's share of the latents is checked against its
/// device's memory before seeded ones are drawn.
fn start_of(setup: &mut Setup, common: &SamplingArgs, (flag, count): (&str, i64)) -> Result<Start> {
    let ranks = setup.run.ranks;
    let checkpoints = setup.run.checkpoints().map(|c| &*c);
    let model = &setup.model;
    let stage = checkpoints.map_or("sampling", |c| c.command());
    let steps = setup.settings.steps;
    let decided = checkpoints.map(|checkpoints| -> Result<(Option<Start>, Option<Tensor>)> {
        let resumed = checkpoints.sampling_start(stage, steps)?;
        let given = match (&resumed, &common.init_latents) {
            (None, Some(path)) => Some(read_latents(path, model)?),
            _ => None,
        };
        // Seeded latents are `count`; latents from a file are whatever it held (`run_from` checks the rest).
        if let (Some(start), None) = (&resumed, &common.init_latents) {
            if start.run_latents != count {
                bail!("the checkpoint of {stage} is of a run of {} latents, but the run has {flag} {count}", start.run_latents);
            }
        }
        Ok((resumed, given))
    });
    let (resumed, given) = agree(ranks, decided.transpose())?.unwrap_or((None, None));
    // The latents the run holds (none yet when they are to be seeded), and what set their count, for the messages.
    let held = resumed.as_ref().map(|s| s.latents.size()).or(given.as_ref().map(|l| l.size()));
    let held = ranks.from_root(|| Ok(held))?;
    let shape = held.unwrap_or_else(|| [count].into_iter().chain(model.latent_shape()).collect());
    let count_text = match &common.init_latents {
        Some(path) => format!("{} latents of {:?} from --init-latents {}", shape[0], &shape[1..], path.display()),
        None => format!("{flag} {count}"),
    };
    let mut shape: [i64; 4] = shape.try_into().map_err(|s| anyhow::anyhow!("the checkpoint of {stage} holds latents of shape {s:?}, not [K, C, H, W]"))?;
    let share = Share::new(setup.settings.batch, ranks.rank(), ranks.size());
    agree(ranks, share.check(shape[0], flag))?;
    shape[0] = share.count(shape[0]);
    agree(ranks, memory::check_fits(model, Work::Alignment, setup.settings.batch, shape, &count_text, &common.model.device_on_rank(ranks)))?;
    let start = ranks.is_root().then(|| match (resumed, given) {
        (Some(start), _) => start,
        (None, Some(latents)) => Start::fresh(&latents),
        (None, None) => Start::fresh(&seeded_latents(model, count, common.seed)),
    });
    share_start(ranks, start)
}

/// The sampling of `dma average` (aligned) or `dma sample`, with a progress bar on rank 0 and a checkpoint after
/// every step (its stage named as the command), from `start_of`; with the step it started at.
fn sample_resumably(setup: &mut Setup, common: &SamplingArgs, align: Option<&AlignSettings>, count: (&str, i64)) -> Result<(SamplingResult, usize)> {
    let start = start_of(setup, common, count)?;
    let ranks = setup.run.ranks;
    let settings = &setup.settings;
    let latents = Share::new(settings.batch, ranks.rank(), ranks.size()).count(start.latents.size()[0]);
    let bar = progress_bar(work_until(align, settings, latents, settings.steps), common.quiet || !ranks.is_root());
    bar.set_message(if align.is_some() { "aligning" } else { "sampling" });
    bar.set_position(work_until(align, settings, latents, start.first_step));
    let first_step = start.first_step;
    let mut checkpoints = setup.run.checkpoints();
    let stage = checkpoints.as_ref().map_or("sampling", |c| c.command());
    let result = run_from(&setup.model, settings, start, align, 4, &|n| bar.inc(n), ranks, &mut |state| match checkpoints.as_mut() {
        Some(checkpoints) => checkpoints.after_sampling_step(stage, state),
        None => Ok(()),
    });
    let result = result.map_err(|e| setup.run.explain(e))?;
    bar.finish_and_clear();
    Ok((result, first_step))
}
