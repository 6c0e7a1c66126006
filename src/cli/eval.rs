//! `dma eval` and `dma compare`: every method on every concept (or every model on one concept), over several
//! seeds, with results.csv, results.json, a markdown table in the shape of the paper's Table 1, and report.html.
use super::average::{AlignArgs, SamplerArgs};
use super::common::{check_class_ids, check_clip, check_prompt, class_prompt, clip_dir, out_dir, progress_bar, ModelArgs};
use super::job::agree;
use super::report::{model_record, png_text, subject_folder, write_samples};
use super::resume::Resumable;
use super::run::{Item, Run};
use dma::distributed::{Ranks, Share};
use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args};
use serde::{Deserialize, Serialize};
use dma::data::class_names;
use dma::evaluation::clip_embedder::ClipEmbedder;
use dma::evaluation::zero_shot::ZeroShot;
use dma::files::{write_atomic, write_json};
use dma::loaders::run_defaults;
use dma::output::images::png_bytes;
use dma::output::report_html::{report_html, Section};
use dma::output::tables::{results_csv, results_markdown};
use dma::output::OutDir;
use dma::pipelines::baselines::BaselineSettings;
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::memory::{self, Work};
use dma::pipelines::evaluation::{draw_samples, evaluate_seed, score, ConceptScores, EvalSettings, Instruments, Method, Protocol, SeedOutcome};
use dma::models::blip::image_reward::ImageReward;
use dma::models::dreamsim::DreamSim;
use dma::loaders::ModelSource;
use dma::pipelines::mental_average::SamplingSettings;
use dma::pipelines::DiffusionModel;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// How prototypes are judged, shared by `eval`, `compare` and `sweep`: the seeds they are made from, the samples
/// they are judged against, the metrics' CLIP, and where the results go.
#[derive(Args, Debug, Serialize, Deserialize)]
pub struct JudgingArgs {
    /// Repetitions (the paper's Table 1: 10); consistency is measured across them. In `eval` and `compare` (Table
    /// 1's protocol) the samples come from --seed and the repetitions from seeds --seed + 1, ...; with
    /// --fresh-samples, and in `sweep`, every repetition draws its own samples from seeds --seed, --seed + 1, ...
    #[arg(long = "repeats", visible_alias = "seeds", default_value_t = 5)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples drawn per concept (per repetition with --fresh-samples and in `sweep`): what representativeness and sharpness
    /// are judged against, and the set every baseline is computed from (the paper: 1000) [default: 100, or the
    /// model's].
    #[arg(long)]
    pub samples: Option<i64>,
    /// A CLIP model folder in transformers' layout for the metrics (e.g. openai/clip-vit-large-patch14)
    /// [default: the embedded model's small CLIP, which also gives zero-shot classes].
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Output folder (must not exist or be empty); default out/<command>-<label>-<time>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the result already in --out.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Continue the stopped run that was writing to DIR (its --out) from its last checkpoint (each seed's samples
    /// and mental averages after every step), with the same settings.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

impl JudgingArgs {
    /// The recorded arguments of a run resumed into `dir`, shown as `given` asks.
    pub(super) fn resumed(self, given: &JudgingArgs, dir: PathBuf) -> Self {
        Self { quiet: given.quiet, out: Some(dir), resume: None, ..self }
    }

    /// The repetitions' seeds, checked: `shared` samples take --seed, and the repetitions the seeds after it;
    /// otherwise the repetitions start at --seed.
    pub(super) fn seeds(&self, shared: bool) -> Result<Vec<u64>> {
        if self.seeds == 0 {
            bail!("--repeats must be at least 1 (2 or more to measure consistency)");
        }
        let first = match shared {
            true => self.seed.checked_add(1).context("--seed is the largest seed; the repetitions need the seeds after it")?,
            false => self.seed,
        };
        Ok((first..).take(self.seeds as usize).collect())
    }

    /// Samples per seed with these defaults, checked.
    pub(super) fn samples(&self, defaults: &RunDefaults) -> Result<i64> {
        let samples = self.samples.unwrap_or(defaults.mode_samples);
        if samples < 1 {
            bail!("--samples must be at least 1, got {samples}");
        }
        Ok(samples)
    }
}

/// What `eval` and `compare` share: the sampler, DMA, the baselines, and how they are judged.
#[derive(Args, Debug, Serialize, Deserialize)]
pub struct EvalCommon {
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub align: AlignArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub judging: JudgingArgs,
    /// Every repetition draws its own samples and computes every method from them, instead of the paper's Table 1
    /// protocol (one set of samples per concept shared by every repetition, which then varies only each method's
    /// own randomness: a deterministic average has consistency 0). It answers another question: how much a
    /// prototype varies with everything redrawn.
    #[arg(long)]
    #[serde(default)]
    pub fresh_samples: bool,
    /// DreamSim for a second consistency (the paper's Table 1): the folder the `dreamsim` package caches its
    /// default "ensemble" model in (its cache_dir, ./models by default), holding checkpoints/
    /// dino_vitbase16_pretrain.pth, clip_vitb16_pretrain.pth.tar, open_clip_vitb16_pretrain.pth.tar and
    /// ensemble_lora/.
    #[arg(long, value_name = "DIR")]
    #[serde(default)]
    pub dreamsim: Option<PathBuf>,
    /// ImageReward for the prototypes' quality (the paper's Table 1): the `image-reward` package's ImageReward.pt,
    /// or the folder holding it (~/.cache/ImageReward), with med_config.json beside it and BERT's vocab.txt beside it
    /// or bert-base-uncased in the Hugging Face cache. Scores every prototype and sample against its prompt.
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub image_reward: Option<PathBuf>,
    /// The methods, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub methods: Option<Vec<Method>>,
    /// D4M: the fraction of the schedule the latent centre is noised to before image-to-image.
    #[arg(long, default_value_t = 0.7)]
    pub d4m_strength: f64,
    /// D4M: the image-to-image guidance.
    #[arg(long, default_value_t = 8.0)]
    pub d4m_guidance: f64,
    /// MGD3: the mode guidance scale.
    #[arg(long, default_value_t = 0.1)]
    pub mgd3_scale: f64,
    /// MGD3: the fraction of the steps (from the first) guided toward the mode.
    #[arg(long, default_value_t = 0.5)]
    pub mgd3_fraction: f64,
}

impl EvalCommon {
    /// The recorded arguments of a run resumed into `dir`, shown as `given` asks.
    fn resumed(self, given: &EvalCommon, dir: PathBuf) -> Self {
        Self { judging: self.judging.resumed(&given.judging, dir), ..self }
    }

    /// The optional judges' paths on rank 0, which alone scores; other ranks load none (their errors, if rank 0's
    /// load fails, come from `agree`).
    fn judge_paths(&self, ranks: Ranks) -> JudgePaths<'_> {
        match ranks.is_root() {
            true => JudgePaths { dreamsim: self.dreamsim.as_deref(), image_reward: self.image_reward.as_deref() },
            false => JudgePaths::default(),
        }
    }
}

#[derive(Args, Debug, Serialize, Deserialize)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub concepts: ConceptArgs,
    #[command(flatten)]
    pub common: EvalCommon,
}

#[derive(Args, Debug, Serialize, Deserialize)]
pub struct CompareArgs {
    /// The models, comma-separated (diffusers folders, Hugging Face repo ids in the local cache, or single-file
    /// checkpoints; `embedded` and `embedded-dit` for the embedded models).
    #[arg(long, value_delimiter = ',', required_unless_present = "resume")]
    pub models: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Where h is read in every model: after this block instead of its family's default (as for `average`).
    #[arg(long)]
    #[serde(default)]
    pub hspace_block: Option<usize>,
    /// The concept (required, except with --resume or --class-id).
    #[arg(long, required_unless_present_any = ["resume", "class_id"])]
    pub prompt: Option<String>,
    /// For class-conditional models (DiT): the class by its id instead of --prompt (the prompt `class N`).
    #[arg(long, conflicts_with = "prompt")]
    #[serde(default)]
    pub class_id: Option<i64>,
    #[command(flatten)]
    pub common: EvalCommon,
}

impl Resumable for EvalArgs {
    fn resume_dir(&self) -> Option<PathBuf> {
        self.common.judging.resume.clone()
    }
    fn resumed(self, given: &Self, dir: PathBuf) -> Self {
        Self { common: self.common.resumed(&given.common, dir), ..self }
    }
}

impl Resumable for CompareArgs {
    fn resume_dir(&self) -> Option<PathBuf> {
        self.common.judging.resume.clone()
    }
    fn resumed(self, given: &Self, dir: PathBuf) -> Self {
        Self { common: self.common.resumed(&given.common, dir), ..self }
    }
}

/// The concepts an evaluation or a sweep runs on, shared by `eval` and `sweep`.
#[derive(Args, Debug, Serialize, Deserialize)]
pub struct ConceptArgs {
    /// A concept (repeat for several); for a class-conditional model (DiT), one of its class names.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// For a class-conditional model (DiT): a class by its id (repeat for several; the prompt `class N`).
    #[arg(long)]
    #[serde(default)]
    pub class_id: Vec<i64>,
    /// A file of concepts, one prompt per line (blank lines and lines starting with # are skipped).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
}

impl ConceptArgs {
    /// The concepts of --prompt (repeated) and of the file --prompts.
    pub(super) fn read(&self) -> Result<Vec<String>> {
        let given = &self.prompt;
        let mut prompts = given.clone();
        prompts.extend(self.class_id.iter().map(|&id| class_prompt(id)));
        let given = &prompts.clone();
        if let Some(path) = &self.prompts {
            let text = std::fs::read_to_string(path).with_context(|| format!("--prompts {}: cannot read", path.display()))?;
            prompts.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
            if prompts.len() == given.len() {
                bail!("--prompts {}: no prompts in the file", path.display());
            }
        }
        if prompts.is_empty() {
            bail!("give the concepts to evaluate with --prompt P (repeatable), --class-id N (repeatable) or --prompts FILE");
        }
        Ok(prompts)
    }
}

impl EvalCommon {
    /// The evaluation's settings for a model with these defaults, checked before anything long starts.
    fn settings(&self, defaults: &RunDefaults, default_methods: &[Method]) -> Result<EvalSettings> {
        let sampling = self.sampler.settings(defaults, "", self.judging.seed)?;
        let align = self.align.settings(defaults, sampling.steps)?;
        let latents = self.align.latents(defaults)?;
        align.validate_for(latents)?;
        let samples = self.judging.samples(defaults)?;
        let protocol = if self.fresh_samples { Protocol::FreshSamples } else { Protocol::SharedSamples };
        let seeds = self.judging.seeds(protocol == Protocol::SharedSamples)?;
        let baselines = BaselineSettings { d4m_strength: self.d4m_strength, d4m_guidance: self.d4m_guidance, mgd3_scale: self.mgd3_scale, mgd3_fraction: self.mgd3_fraction };
        baselines.validate()?;
        let mut methods: Vec<Method> = Vec::new();
        for method in self.methods.clone().unwrap_or_else(|| default_methods.to_vec()) {
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        if methods.is_empty() {
            bail!("--methods: name at least one method");
        }
        Ok(EvalSettings { sampling, align, latents, samples, seeds, protocol, methods, baselines })
    }
}

/// The metrics' CLIP: the embedded one with its zero-shot classes, or the one given with --clip.
enum Clip {
    Classes(ZeroShot),
    Plain(ClipEmbedder),
}

/// What prototypes are judged with: the metrics' CLIP, and DreamSim and ImageReward where --dreamsim and
/// --image-reward give them.
pub(super) struct Judge {
    clip: Clip,
    dreamsim: Option<DreamSim>,
    image_reward: Option<ImageReward>,
}

/// Where `eval` and `compare` find the optional judges.
#[derive(Clone, Copy, Default)]
pub(super) struct JudgePaths<'a> {
    pub dreamsim: Option<&'a Path>,
    pub image_reward: Option<&'a Path>,
}

impl Judge {
    /// Loads the judges on the model's device: the CLIP of --clip (the embedded one by default), and DreamSim and
    /// ImageReward from `paths` (in float32).
    pub(super) fn load(clip: Option<&Path>, paths: JudgePaths, model: &DiffusionModel) -> Result<(Self, PathBuf)> {
        let dir = clip_dir(clip)?;
        let clip = match clip {
            None => Clip::Classes(ZeroShot::embedded(&dir, model.device)?),
            Some(_) => Clip::Plain(ClipEmbedder::load(&dir, model.device)?),
        };
        let dreamsim = paths
            .dreamsim
            .map(|path| DreamSim::load(path, model.device, Kind::Float).with_context(|| format!("--dreamsim {}", path.display())))
            .transpose()?;
        let image_reward = paths
            .image_reward
            .map(|path| ImageReward::load(path, model.device, Kind::Float).with_context(|| format!("--image-reward {}", path.display())))
            .transpose()?;
        let judge = Self { clip, dreamsim, image_reward };
        check_clip(judge.embedder(), &dir, model)?;
        Ok((judge, dir))
    }

    pub(super) fn embedder(&self) -> &ClipEmbedder {
        match &self.clip {
            Clip::Classes(zero_shot) => &zero_shot.embedder,
            Clip::Plain(embedder) => embedder,
        }
    }

    /// The instruments, with the zero-shot classes named by `class_names`.
    pub(super) fn instruments<'a>(&'a self, class_names: &'a [&'a str]) -> Instruments<'a> {
        let zero_shot = match &self.clip {
            Clip::Classes(zero_shot) => Some((zero_shot, class_names)),
            Clip::Plain(_) => None,
        };
        Instruments { clip: self.embedder(), zero_shot, dreamsim: self.dreamsim.as_ref(), image_reward: self.image_reward.as_ref() }
    }
}

/// One subject evaluated: its seeds' outcomes and scores.
struct Evaluated {
    title: String,
    source: ModelSource,
    outcomes: Vec<SeedOutcome>,
    scores: ConceptScores,
}

/// A concept on a model, to be evaluated over every seed: its title in tables and its checkpoint stage.
struct Subject {
    title: String,
    prompt: String,
    stage: String,
}

/// Every repetition of every subject on `model`, one item per repetition handed to the ranks (`Run::items`;
/// repetition s of a subject is stage `<stage>/seed-s`), after each subject's shared samples where the protocol
/// shares them (stage `<stage>/samples`, drawn by all ranks). Each repetition's outcome on rank 0, subject by
/// subject (None elsewhere).
fn evaluate_seeds(run: &mut Run, model: &DiffusionModel, judge: &Judge, subjects: &[Subject], settings: &EvalSettings, quiet: bool) -> Result<Option<Vec<Vec<SeedOutcome>>>> {
    let mut shared = Vec::new();
    // The ranks share the drawing when each gets a batch of it; otherwise every rank draws them all (the same
    // samples, as one process draws them).
    let share = Share::new(settings.sampling.batch, run.ranks.rank(), run.ranks.size());
    let ranks = if share.check(settings.samples, "--samples").is_ok() { run.ranks } else { Ranks::alone() };
    if settings.protocol == Protocol::SharedSamples {
        for subject in subjects {
            let sampling = SamplingSettings { prompt: subject.prompt.clone(), ..settings.sampling.clone() };
            let bar = progress_bar(sampling.steps as u64, quiet || !run.ranks.is_root());
            bar.set_message(format!("{}: {} samples", subject.title, settings.samples));
            let stage = format!("{}/samples", subject.stage);
            let set = draw_samples(model, judge.embedder(), &sampling, settings.samples, &|n| bar.inc(n), &stage, run.shared_stage(), ranks);
            shared.push(set.map_err(|e| run.explain(e))?);
            bar.finish_and_clear();
        }
    }
    let seeds = &settings.seeds;
    let items: Vec<Item> = subjects
        .iter()
        .flat_map(|s| seeds.iter().map(move |seed| Item { stage: format!("{}/seed-{seed}", s.stage), title: format!("{} (seed {seed})", s.title), work: settings.work_per_seed() }))
        .collect();
    let outcomes = run.items(&items, quiet, &mut |i, checkpoints, progress| {
        let (subject, repetition) = (i / seeds.len(), i % seeds.len());
        let repetition = (seeds[repetition], shared.get(subject), repetition == 0);
        let outcome = evaluate_seed(model, judge.embedder(), &subjects[subject].prompt, settings, repetition, progress, &items[i].stage, checkpoints)?;
        Ok(outcome.to_parcel())
    })?;
    let Some(outcomes) = outcomes else { return Ok(None) };
    // On the CPU, where decoded images and CLIP embeddings are: every seed of every subject is held at once.
    let outcomes = outcomes.iter().map(|p| SeedOutcome::from_parcel(p, Device::Cpu)).collect::<Result<Vec<_>>>()?;
    let mut outcomes = outcomes.into_iter();
    Ok(Some(subjects.iter().map(|_| outcomes.by_ref().take(seeds.len()).collect()).collect()))
}

/// A subject's seeds scored.
fn scored(judge: &Judge, title: &str, prompt: &str, source: &ModelSource, outcomes: Vec<SeedOutcome>) -> Result<Evaluated> {
    let names = class_names();
    let scores = score(judge.instruments(&names), prompt, &outcomes)?;
    Ok(Evaluated { title: title.to_string(), source: source.clone(), outcomes, scores })
}

/// Writes every prototype as a PNG, the samples (`sample_seed`: the seed of samples shared by the repetitions,
/// None where each drew its own), the tables, the report and the record, then moves the folder into place.
fn write_results(out: OutDir, (command, title): (&str, &str), subjects: &[Evaluated], sample_seed: Option<u64>, record: Value) -> Result<()> {
    let mut written = Vec::new();
    let mut folders: Vec<String> = Vec::new();
    for subject in subjects {
        let folder = subject_folder(&out, &subject.title, &folders)?;
        for outcome in &subject.outcomes {
            let parameters = json!({ "seed": outcome.seed, "settings": record["settings"] });
            let text = png_text(&subject.scores.prompt, &subject.source, &parameters);
            // Shared samples are kept with the first repetition but drawn from the sampling seed.
            if outcome.samples.size()[0] > 0 {
                let seed = sample_seed.unwrap_or(outcome.seed);
                written.push(write_samples(&out, &format!("{folder}/samples-seed{seed}"), &outcome.samples, &text, seed)?);
            }
            for (method, image) in &outcome.prototypes {
                let name = format!("{folder}/{}-seed{}.png", method.slug(), outcome.seed);
                let parameters = json!({ "method": method, "seed": outcome.seed, "settings": record["settings"] });
                let text = png_text(&subject.scores.prompt, &subject.source, &parameters);
                write_atomic(&out.file(&name), &png_bytes(image, &text)?)?;
                written.push(name);
            }
        }
        folders.push(folder);
    }
    let tables: Vec<(String, &ConceptScores)> = subjects.iter().map(|s| (s.title.clone(), &s.scores)).collect();
    write_atomic(&out.file("results.csv"), results_csv(&tables).as_bytes())?;
    write_atomic(&out.file("results.md"), results_markdown(&tables).as_bytes())?;
    let sections: Vec<Section> = subjects.iter().map(|s| Section { title: s.title.clone(), scores: &s.scores, outcomes: &s.outcomes }).collect();
    let settings_text = serde_json::to_string_pretty(&record["settings"])?;
    write_atomic(&out.file("report.html"), report_html(title, &settings_text, &sections)?.as_bytes())?;
    let results: Vec<Value> = subjects
        .iter()
        .zip(&folders)
        .map(|(s, folder)| {
            let logs: Vec<Value> = s.outcomes.iter().map(|o| json!({ "seed": o.seed, "dma_steps": o.dma_log, "dma_cost": o.dma_cost })).collect();
            json!({ "subject": s.title, "folder": folder, "scores": s.scores, "runs": logs })
        })
        .collect();
    write_json(&out.file("results.json"), &json!({ "command": command, "results": results }))?;
    written.extend(["results.csv", "results.md", "report.html", "results.json", "run.json"].map(String::from));
    let mut record = record;
    record["outputs"] = json!(written);
    write_json(&out.file("run.json"), &record)?;
    let folder = out.finish()?;
    eprintln!("wrote {} (open report.html in a browser)", folder.display());
    Ok(())
}

/// What every evaluation's run.json holds besides its subjects.
fn base_record(command: &str, settings: &EvalSettings, clip: &Path, seconds: f64, (resumed, ranks): (Value, Vec<Value>)) -> Value {
    json!({
        "command": command,
        "dma_version": env!("CARGO_PKG_VERSION"),
        "argv": std::env::args().collect::<Vec<_>>(),
        "resumed": resumed,
        "settings": settings,
        "clip": clip.display().to_string(),
        "ranks": ranks,
        "timings_seconds": { "total": seconds },
    })
}

/// Whether an evaluation's sampling and DMA (its larger of --samples and --latents) fit in `device`'s memory.
fn check_fits(model: &DiffusionModel, settings: &EvalSettings, device: &str) -> Result<()> {
    let [c, h, w] = model.latent_shape();
    let count = format!("--samples {} and --latents {}", settings.samples, settings.latents);
    memory::check_fits(model, Work::Alignment, settings.sampling.batch, [settings.samples.max(settings.latents), c, h, w], &count, device)
}

pub fn eval(args: EvalArgs, matches: &ArgMatches, ranks: Ranks) -> Result<()> {
    let (resumed, args) = Run::arguments("eval", args, matches, ranks)?;
    let resolve = || -> Result<_> {
        let prompts = args.concepts.read()?;
        let source = args.model.source()?;
        let settings = args.common.settings(&run_defaults(&source)?, &Method::ALL)?;
        Ok((prompts, source, settings))
    };
    let (prompts, source, settings) = agree(ranks, resolve())?;
    let resolved = json!({ "prompts": prompts, "evaluation": settings });
    let judging = &args.common.judging;
    let mut run = Run::open(ranks, "eval", resumed, &args, &resolved, || out_dir(judging.out.as_deref(), "eval", &prompts[0], judging.force))?;
    let device = args.model.device_on_rank(ranks);
    let model = run.load_model(&args.model, &source, &resolved, |model| {
        check_fits(model, &settings, &device)?;
        check_class_ids(model, &args.concepts.class_id)?;
        prompts.iter().try_for_each(|prompt| check_prompt(model, prompt, None))
    })?;
    let (judge, clip) = agree(ranks, Judge::load(judging.clip.as_deref(), args.common.judge_paths(ranks), &model))?;
    let subjects: Vec<Subject> = prompts.iter().enumerate().map(|(i, p)| Subject { title: p.clone(), prompt: p.clone(), stage: format!("subject-{i}") }).collect();
    let outcomes = evaluate_seeds(&mut run, &model, &judge, &subjects, &settings, judging.quiet)?;
    let seconds = run.seconds();
    run.finish(&device, json!({ "seconds": seconds }), |out, resumed, ranks| {
        let outcomes = outcomes.context("rank 0 holds every outcome")?;
        let evaluated = subjects.iter().zip(outcomes).map(|(s, o)| scored(&judge, &s.title, &s.prompt, &source, o)).collect::<Result<Vec<_>>>()?;
        let mut record = base_record("eval", &settings, &clip, seconds, (resumed, ranks));
        record["image_reward"] = json!(args.common.image_reward);
        record["dreamsim"] = json!(args.common.dreamsim);
        record["model"] = model_record(&source, &model)?;
        record["device"] = json!(args.model.device);
        record["dtype"] = json!(args.model.dtype);
        let title = format!("dma eval: {}", source.path().display());
        write_results(out, ("eval", &title), &evaluated, settings.shared_sample_seed(), record)
    })
}

pub fn compare(args: CompareArgs, matches: &ArgMatches, ranks: Ranks) -> Result<()> {
    let (resumed, args) = Run::arguments("compare", args, matches, ranks)?;
    let prompt = match (&args.prompt, args.class_id) {
        (_, Some(id)) => class_prompt(id),
        (prompt, None) => prompt.clone().context("--prompt is required: the concept")?,
    };
    let model_args: Vec<ModelArgs> = args
        .models
        .iter()
        .map(|m| ModelArgs { model: Some(m.clone()), device: args.device.clone(), dtype: args.dtype.clone(), config: None, hspace_block: args.hspace_block, flag: "--models" })
        .collect();
    let resolve = || -> Result<_> {
        let sources = model_args.iter().map(ModelArgs::source).collect::<Result<Vec<ModelSource>>>()?;
        // Each model's own defaults; the flags given apply to all of them.
        let settings = sources.iter().map(|s| args.common.settings(&run_defaults(s)?, &[Method::Dma])).collect::<Result<Vec<_>>>()?;
        Ok((sources, settings))
    };
    let (sources, settings) = agree(ranks, resolve())?;
    let resolved = json!(settings);
    let judging = &args.common.judging;
    let mut run = Run::open(ranks, "compare", resumed, &args, &resolved, || out_dir(judging.out.as_deref(), "compare", &prompt, judging.force))?;
    let device = ModelArgs { device: args.device.clone(), ..model_args[0].clone() }.device_on_rank(ranks);
    // One model at a time on every rank, its seeds spread over the ranks.
    let mut evaluated = Vec::new();
    let mut models = Vec::new();
    let mut judged = None;
    for (i, ((source, model_args), settings)) in sources.iter().zip(&model_args).zip(&settings).enumerate() {
        let model = run.load_model(model_args, source, &json!([i, resolved]), |model| {
            check_fits(model, settings, &device)?;
            check_class_ids(model, args.class_id.as_slice()).with_context(|| format!("the model {}", source.path().display()))?;
            check_prompt(model, &prompt, Some(source.path()))
        })?;
        let (judge, clip) = agree(ranks, Judge::load(judging.clip.as_deref(), args.common.judge_paths(ranks), &model))?;
        let subject = Subject { title: format!("{}: {prompt}", source.path().display()), prompt: prompt.clone(), stage: format!("subject-{i}") };
        if let Some(mut outcomes) = evaluate_seeds(&mut run, &model, &judge, std::slice::from_ref(&subject), settings, judging.quiet)? {
            evaluated.push((subject, source, outcomes.pop().unwrap_or_default()));
            models.push(json!({ "model": model_record(source, &model)?, "settings": settings }));
        }
        judged = Some((judge, clip));
    }
    let seconds = run.seconds();
    run.finish(&device, json!({ "seconds": seconds }), |out, resumed, ranks| {
        let (judge, clip) = judged.context("at least one model")?;
        let evaluated = evaluated.into_iter().map(|(s, source, o)| scored(&judge, &s.title, &s.prompt, source, o)).collect::<Result<Vec<_>>>()?;
        let mut record = base_record("compare", &settings[0], &clip, seconds, (resumed, ranks));
        record["image_reward"] = json!(args.common.image_reward);
        record["dreamsim"] = json!(args.common.dreamsim);
        record["models"] = json!(models);
        record["device"] = json!(args.device);
        record["dtype"] = json!(args.dtype);
        let title = format!("dma compare: {prompt}");
        write_results(out, ("compare", &title), &evaluated, settings[0].shared_sample_seed(), record)
    })
}
