//! `dma eval` and `dma compare`: every method on every concept (or every model on one concept), over several
//! seeds, with results.csv, results.json, a markdown table in the shape of the paper's Table 1, and report.html.
use super::average::{AlignArgs, SamplerArgs};
use dma::checkpoint::run::RunCheckpoints;
use super::common::{check_clip, check_prompt, clip_dir, out_dir, progress_bar, slug, ModelArgs};
use super::report::{model_record, png_text, write_samples};
use super::resume::{arguments, resumed_or_new, Resumable};
use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args};
use serde::{Deserialize, Serialize};
use dma::data::class_names;
use dma::evaluation::clip_embedder::ClipEmbedder;
use dma::evaluation::zero_shot::ZeroShot;
use dma::files::{write_atomic, write_json};
use dma::output::images::png_bytes;
use dma::output::report_html::{report_html, Section};
use dma::output::tables::{results_csv, results_markdown};
use dma::output::OutDir;
use dma::pipelines::baselines::BaselineSettings;
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::memory::{self, Work};
use dma::pipelines::evaluation::{evaluate_seed, score, ConceptScores, EvalSettings, Method, SeedOutcome};
use dma::pipelines::{ModelSource, StableDiffusion};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How prototypes are judged, shared by `eval`, `compare` and `sweep`: the seeds they are made from, the samples
/// they are judged against, the metrics' CLIP, and where the results go.
#[derive(Args, Debug, Serialize, Deserialize)]
pub struct JudgingArgs {
    /// Repetitions: every method runs from seeds --seed, --seed + 1, ... (consistency is measured across them).
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples drawn per seed: what representativeness and sharpness are judged against, and the set every
    /// baseline is computed from [default: 100, or the model's].
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

    /// The seeds, checked.
    pub(super) fn seeds(&self) -> Result<Vec<u64>> {
        if self.seeds == 0 {
            bail!("--seeds must be at least 1 (2 or more to measure consistency)");
        }
        Ok((self.seed..).take(self.seeds as usize).collect())
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
    /// checkpoints; `embedded` for the embedded model).
    #[arg(long, value_delimiter = ',', required_unless_present = "resume")]
    pub models: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// The concept (required, except with --resume).
    #[arg(long, required_unless_present = "resume")]
    pub prompt: Option<String>,
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
    /// A concept (repeat for several).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file of concepts, one prompt per line (blank lines and lines starting with # are skipped).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
}

impl ConceptArgs {
    /// The concepts of --prompt (repeated) and of the file --prompts.
    pub(super) fn read(&self) -> Result<Vec<String>> {
        let given = &self.prompt;
        let mut prompts = given.clone();
        if let Some(path) = &self.prompts {
            let text = std::fs::read_to_string(path).with_context(|| format!("--prompts {}: cannot read", path.display()))?;
            prompts.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from));
            if prompts.len() == given.len() {
                bail!("--prompts {}: no prompts in the file", path.display());
            }
        }
        if prompts.is_empty() {
            bail!("give the concepts to evaluate with --prompt P (repeatable) or --prompts FILE");
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
        let seeds = self.judging.seeds()?;
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
        Ok(EvalSettings { sampling, align, latents, samples, seeds, methods, baselines })
    }
}

/// The metrics' CLIP: the embedded one with its zero-shot classes, or the one given with --clip.
pub(super) enum Judge {
    Classes(ZeroShot),
    Plain(ClipEmbedder),
}

impl Judge {
    pub(super) fn load(clip: Option<&Path>, model: &StableDiffusion) -> Result<(Self, PathBuf)> {
        let dir = clip_dir(clip)?;
        let judge = match clip {
            None => Judge::Classes(ZeroShot::embedded(&dir, model.device)?),
            Some(_) => Judge::Plain(ClipEmbedder::load(&dir, model.device)?),
        };
        check_clip(judge.embedder(), &dir, model)?;
        Ok((judge, dir))
    }

    pub(super) fn embedder(&self) -> &ClipEmbedder {
        match self {
            Judge::Classes(zero_shot) => &zero_shot.embedder,
            Judge::Plain(embedder) => embedder,
        }
    }

    pub(super) fn zero_shot(&self) -> Option<&ZeroShot> {
        match self {
            Judge::Classes(zero_shot) => Some(zero_shot),
            Judge::Plain(_) => None,
        }
    }
}

/// One subject evaluated: its seeds' outcomes and scores.
struct Evaluated {
    title: String,
    source: ModelSource,
    outcomes: Vec<SeedOutcome>,
    scores: ConceptScores,
}

/// Runs every seed of `prompt` on `model` and scores it; seed s is stage `<stage>/seed-s` of `checkpoints`.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    (model, source): (&StableDiffusion, &ModelSource),
    judge: &Judge,
    title: String,
    prompt: &str,
    settings: &EvalSettings,
    quiet: bool,
    stage: &str,
    checkpoints: &mut RunCheckpoints,
) -> Result<Evaluated> {
    let bar = progress_bar(settings.work_per_seed() * settings.seeds.len() as u64, quiet);
    bar.set_message(title.clone());
    let mut outcomes = Vec::new();
    for &seed in &settings.seeds {
        let outcome = evaluate_seed(model, judge.embedder(), prompt, settings, seed, &|n| bar.inc(n), &format!("{stage}/seed-{seed}"), checkpoints);
        outcomes.push(outcome.map_err(|e| checkpoints.explain(e))?);
    }
    bar.finish_and_clear();
    let names = class_names();
    let scores = score(judge.embedder(), judge.zero_shot().map(|z| (z, names.as_slice())), prompt, &outcomes)?;
    Ok(Evaluated { title, source: source.clone(), outcomes, scores })
}

/// Writes every prototype as a PNG, the tables, the report and the record, then moves the folder into place.
fn write_results(out: OutDir, command: &str, title: &str, subjects: &[Evaluated], record: Value) -> Result<()> {
    let mut written = Vec::new();
    let mut folders: Vec<String> = Vec::new();
    for subject in subjects {
        let mut folder = slug(&subject.title, 60);
        while folders.contains(&folder) {
            folder.push('_');
        }
        std::fs::create_dir_all(out.file(&folder)).with_context(|| format!("cannot create {folder} in the output folder"))?;
        for outcome in &subject.outcomes {
            let parameters = json!({ "seed": outcome.seed, "settings": record["settings"] });
            let text = png_text(&subject.scores.prompt, &subject.source, &parameters);
            written.push(write_samples(&out, &format!("{folder}/samples-seed{}", outcome.seed), &outcome.samples, &text, outcome.seed)?);
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
fn base_record(command: &str, settings: &EvalSettings, clip: &Path, started: Instant, resumed: Value) -> Value {
    json!({
        "command": command,
        "dma_version": env!("CARGO_PKG_VERSION"),
        "argv": std::env::args().collect::<Vec<_>>(),
        "resumed": resumed,
        "settings": settings,
        "clip": clip.display().to_string(),
        "timings_seconds": { "total": started.elapsed().as_secs_f64() },
    })
}

/// Whether an evaluation's sampling and DMA (its larger of --samples and --latents) fit in `device`'s memory.
fn check_fits(model: &StableDiffusion, settings: &EvalSettings, device: &str) -> Result<()> {
    let [c, h, w] = model.latent_shape();
    let count = format!("--samples {} and --latents {}", settings.samples, settings.latents);
    memory::check_fits(model, Work::Alignment, settings.sampling.batch, [settings.samples.max(settings.latents), c, h, w], &count, device)
}

pub fn eval(args: EvalArgs, matches: &ArgMatches) -> Result<()> {
    let (resumed, args) = arguments("eval", args, matches)?;
    let prompts = args.concepts.read()?;
    let source = args.model.source()?;
    let defaults = RunDefaults::for_source(&source)?;
    let settings = args.common.settings(&defaults, &Method::ALL)?;
    let resolved = json!({ "prompts": prompts, "evaluation": settings });
    let (out, resumption) = resumed_or_new(resumed, &resolved, || out_dir(args.common.judging.out.as_deref(), "eval", &prompts[0], args.common.judging.force))?;
    let started = Instant::now();
    let model = args.model.load(&source)?;
    check_fits(&model, &settings, &args.model.device)?;
    let (judge, clip) = Judge::load(args.common.judging.clip.as_deref(), &model)?;
    for prompt in &prompts {
        check_prompt(&model, prompt, None)?;
    }
    let mut checkpoints = RunCheckpoints::new(out.staging(), out.target(), "eval", &args, &resolved);
    let mut subjects = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let stage = format!("subject-{i}");
        subjects.push(evaluate((&model, &source), &judge, prompt.clone(), prompt, &settings, args.common.judging.quiet, &stage, &mut checkpoints)?);
    }
    drop(checkpoints);
    let mut record = base_record("eval", &settings, &clip, started, resumption);
    record["model"] = model_record(&source, &model)?;
    record["device"] = json!(args.model.device);
    record["dtype"] = json!(args.model.dtype);
    let title = format!("dma eval: {}", source.path().display());
    write_results(out, "eval", &title, &subjects, record)
}

pub fn compare(args: CompareArgs, matches: &ArgMatches) -> Result<()> {
    let (resumed, args) = arguments("compare", args, matches)?;
    let prompt = args.prompt.as_deref().context("--prompt is required: the concept")?;
    let model_args: Vec<ModelArgs> = args
        .models
        .iter()
        .map(|m| ModelArgs { model: (m != "embedded").then(|| m.clone()), device: args.device.clone(), dtype: args.dtype.clone(), config: None, flag: "--models" })
        .collect();
    let sources = model_args.iter().map(ModelArgs::source).collect::<Result<Vec<ModelSource>>>()?;
    // Each model's own defaults; the flags given apply to all of them.
    let settings = sources
        .iter()
        .map(|s| args.common.settings(&RunDefaults::for_source(s)?, &[Method::Dma]))
        .collect::<Result<Vec<_>>>()?;
    let resolved = json!(settings);
    let (out, resumption) = resumed_or_new(resumed, &resolved, || out_dir(args.common.judging.out.as_deref(), "compare", prompt, args.common.judging.force))?;
    let started = Instant::now();
    let mut checkpoints = RunCheckpoints::new(out.staging(), out.target(), "compare", &args, &resolved);
    let mut subjects = Vec::new();
    let mut models = Vec::new();
    let mut clip = PathBuf::new();
    for (i, ((source, model_args), settings)) in sources.iter().zip(&model_args).zip(&settings).enumerate() {
        let model = model_args.load(source)?;
        check_fits(&model, settings, &model_args.device)?;
        check_prompt(&model, prompt, Some(source.path()))?;
        let (judge, dir) = Judge::load(args.common.judging.clip.as_deref(), &model)?;
        let title = format!("{}: {prompt}", source.path().display());
        subjects.push(evaluate((&model, source), &judge, title, prompt, settings, args.common.judging.quiet, &format!("subject-{i}"), &mut checkpoints)?);
        models.push(json!({ "model": model_record(source, &model)?, "settings": settings }));
        clip = dir;
    }
    drop(checkpoints);
    let mut record = base_record("compare", &settings[0], &clip, started, resumption);
    record["models"] = json!(models);
    record["device"] = json!(args.device);
    record["dtype"] = json!(args.dtype);
    let title = format!("dma compare: {prompt}");
    write_results(out, "compare", &title, &subjects, record)
}
