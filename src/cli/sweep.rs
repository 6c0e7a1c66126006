//! `dma sweep`: DMA's cost-quality frontier on the user's own model. Each --sweep KEY=V1,V2,... is an axis over one
//! of DMA's flags (or `schedule`); every combination runs on every concept and seed and is scored as `dma eval`
//! scores DMA, with its cost counted in network passes.
use super::average::{AlignArgs, SamplerArgs};
use super::common::{check_class_ids, check_prompt, out_dir, ModelArgs};
use super::eval::{ConceptArgs, Judge, JudgePaths, JudgingArgs};
use super::job::agree;
use super::report::{model_record, png_text, subject_folder};
use super::resume::Resumable;
use super::run::{Item, Run};
use dma::distributed::Ranks;
use dma::loaders::run_defaults;
use dma::output::OutDir;
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use std::path::Path;
use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args, ValueEnum};
use dma::data::class_names;
use dma::files::{write_atomic, write_json};
use dma::method::Schedule;
use dma::output::images::png_bytes;
use dma::output::sweep_report::{sweep_csv, sweep_html, sweep_markdown};
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::memory::{self, Work};
use dma::pipelines::sweep::{assemble, ConceptSweep, SweepItem, SweepPoint};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Args, Debug, Serialize, Deserialize)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub concepts: ConceptArgs,
    /// An axis of the grid: KEY=V1,V2,... where KEY is one of DMA's flags without its dashes (latents,
    /// align-steps, iters, later-iters, lr, tol, window, optimise, wide-target-steps, settle, keep-norm) or
    /// `schedule` (default, paper); `none` unsets an optional one. Repeat for more axes: every combination runs,
    /// the first axis varying slowest. The other flags set what no axis sweeps.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// One setting beside the grid's: KEY=VALUE pairs separated by spaces, e.g. "latents=256 optimise=16"
    /// (keys as for --sweep). Repeat for more; with --point and no --sweep only the points run.
    #[arg(long, value_name = "KEY=VALUE ...")]
    #[serde(default)]
    pub point: Vec<String>,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub align: AlignArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub judging: JudgingArgs,
}

impl Resumable for SweepArgs {
    fn resume_dir(&self) -> Option<PathBuf> {
        self.judging.resume.clone()
    }
    fn resumed(self, given: &Self, dir: PathBuf) -> Self {
        Self { judging: self.judging.resumed(&given.judging, dir), ..self }
    }
}

/// The keys an axis can sweep.
const KEYS: &str = "latents, align-steps, iters, later-iters, lr, tol, window, optimise, wide-target-steps, settle, keep-norm, schedule";

/// The axes of `--sweep` specs, each key once, each with at least one value.
fn axes(specs: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for spec in specs {
        let (key, values) = spec.split_once('=').with_context(|| format!("--sweep {spec:?}: expected KEY=V1,V2,... (keys: {KEYS})"))?;
        let key = key.trim().to_string();
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            bail!("--sweep {spec:?}: an empty value");
        }
        if axes.iter().any(|(k, _)| *k == key) {
            bail!("--sweep {key}: given twice; list all its values in one --sweep {key}=V1,V2,...");
        }
        axes.push((key, values));
    }
    Ok(axes)
}

/// Sets `key` (a flag of DMA's, or `schedule`) to `value` in `align`.
fn set(align: &mut AlignArgs, key: &str, value: &str) -> Result<()> {
    fn parse<T: FromStr>(key: &str, value: &str) -> Result<T> {
        value.parse().map_err(|_| anyhow::anyhow!("{value:?} is not a valid value for --{key}"))
    }
    fn optional<T: FromStr>(key: &str, value: &str) -> Result<Option<T>> {
        if value == "none" { Ok(None) } else { parse(key, value).map(Some) }
    }
    match key {
        "latents" => align.latents = Some(parse(key, value)?),
        "align-steps" => align.align_steps = Some(parse(key, value)?),
        "iters" => align.iters = Some(parse(key, value)?),
        "lr" => align.lr = Some(parse(key, value)?),
        "tol" => align.tol = Some(parse(key, value)?),
        "window" => align.window = Some(parse(key, value)?),
        "later-iters" => align.later_iters = optional(key, value)?,
        "optimise" => align.optimise = optional(key, value)?,
        "wide-target-steps" => align.wide_target_steps = optional(key, value)?,
        "settle" => align.settle = optional(key, value)?,
        "keep-norm" => align.keep_norm = Some(parse(key, value)?),
        "schedule" => {
            align.schedule = Some(Schedule::from_str(value, true).map_err(|_| anyhow::anyhow!("{value:?} is not a schedule (default, paper)"))?)
        }
        _ => bail!("{key:?} is not a setting a sweep can vary (keys: {KEYS})"),
    }
    Ok(())
}

/// The KEY=VALUE pairs of a --point.
fn point_values(spec: &str) -> Result<Vec<(String, String)>> {
    let pairs = spec.split_whitespace().map(|pair| {
        let (key, value) = pair.split_once('=').with_context(|| format!("--point {spec:?}: {pair:?} is not KEY=VALUE (keys: {KEYS})"))?;
        if value.is_empty() || value.contains(',') {
            bail!("--point {spec:?}: {key} needs one value (a list of values is for --sweep)");
        }
        Ok((key.to_string(), value.to_string()))
    });
    let values: Vec<(String, String)> = pairs.collect::<Result<_>>()?;
    if values.is_empty() {
        bail!("--point: empty; give KEY=VALUE pairs");
    }
    Ok(values)
}

/// The grid's combinations (the first axis varying slowest), then the extra points (one "as given" setting when
/// there is neither), each over the flags given, resolved against the model's defaults and checked.
fn points(align: &AlignArgs, axes: &[(String, Vec<String>)], extra: &[String], defaults: &RunDefaults, steps: usize) -> Result<Vec<SweepPoint>> {
    let mut combinations: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (key, values) in axes {
        combinations = combinations.into_iter().flat_map(|c| values.iter().map(move |v| [c.clone(), vec![(key.clone(), v.clone())]].concat())).collect();
    }
    if axes.is_empty() && !extra.is_empty() {
        combinations.clear();
    }
    for spec in extra {
        combinations.push(point_values(spec)?);
    }
    combinations
        .into_iter()
        .map(|values| {
            let label = if values.is_empty() { "as given".to_string() } else { values.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ") };
            let resolve = || -> Result<SweepPoint> {
                let mut args = align.clone();
                for (key, value) in &values {
                    set(&mut args, key, value)?;
                }
                let align = args.settings(defaults, steps)?;
                let latents = args.latents(defaults)?;
                align.validate_for(latents)?;
                Ok(SweepPoint { label: label.clone(), values: values.clone(), latents, align })
            };
            resolve().with_context(|| format!("the setting {label:?}"))
        })
        .collect()
}

pub fn run(args: SweepArgs, matches: &ArgMatches, ranks: Ranks) -> Result<()> {
    let (resumed, args) = Run::arguments("sweep", args, matches, ranks)?;
    let judging = &args.judging;
    let resolve = || -> Result<_> {
        let prompts = args.concepts.read()?;
        let source = args.model.source()?;
        let defaults = run_defaults(&source)?;
        let sampling = args.sampler.settings(&defaults, "", judging.seed)?;
        let points = points(&args.align, &axes(&args.sweep)?, &args.point, &defaults, sampling.steps)?;
        Ok((prompts, source, sampling, points, judging.samples(&defaults)?, judging.seeds(false)?))
    };
    let (prompts, source, sampling, points, samples, seeds) = agree(ranks, resolve())?;
    let resolved = json!({ "prompts": prompts, "sampling": sampling, "points": points, "seeds": seeds, "samples": samples });
    let mut run = Run::open(ranks, "sweep", resumed, &args, &resolved, || out_dir(judging.out.as_deref(), "sweep", &prompts[0], judging.force))?;
    let device = args.model.device_on_rank(ranks);
    let model = run.load_model(&args.model, &source, &resolved, |model| {
        let [c, h, w] = model.latent_shape();
        let largest = points.iter().map(|p| p.latents).max().unwrap_or(1).max(samples);
        memory::check_fits(model, Work::Alignment, sampling.batch, [largest, c, h, w], &format!("--samples {samples} and the largest --latents {largest}"), &device)?;
        check_class_ids(model, &args.concepts.class_id)?;
        prompts.iter().try_for_each(|prompt| check_prompt(model, prompt, None))
    })?;
    let (judge, clip) = agree(ranks, Judge::load(judging.clip.as_deref(), JudgePaths::default(), &model))?;
    let sweep_items = SweepItem::all(prompts.len(), points.len(), &seeds);
    let items: Vec<Item> = sweep_items
        .iter()
        .map(|item| {
            let title = match *item {
                SweepItem::Samples { concept, seed } => format!("samples: {} (seed {seed})", prompts[concept]),
                SweepItem::Dma { point, concept, seed } => format!("{}: {} (seed {seed})", points[point].label, prompts[concept]),
            };
            Item { stage: item.stage(), title, work: item.work(&sampling, &points, samples) }
        })
        .collect();
    let outcomes = run.items(&items, judging.quiet, &mut |i, checkpoints, progress| {
        sweep_items[i].compute(&model, judge.embedder(), (&prompts, &sampling), (&points, samples), progress, checkpoints)
    })?;
    let seconds = run.seconds();
    run.finish(&device, json!({ "seconds": seconds }), |out, resumption, ranks| {
        let names = class_names();
        let outcomes = outcomes.context("rank 0 holds every outcome")?;
        let concepts = assemble(judge.instruments(&names), (&prompts, &points, &seeds), &sweep_items, &outcomes, tch::Device::Cpu)?;
        write_sweep(out, (&source, &model, &args, &clip), (&points, &resolved), &concepts, json!({ "resumed": resumption, "ranks": ranks, "timings_seconds": { "total": seconds } }))
    })
}

/// Writes each setting's prototypes, the tables, the report and the record (`run_record` holding what the run
/// skeleton knows: the resumption, the ranks, the time), then moves the folder into place.
fn write_sweep(
    out: OutDir,
    (source, model, args, clip): (&ModelSource, &DiffusionModel, &SweepArgs, &Path),
    (points, resolved): (&[SweepPoint], &serde_json::Value),
    concepts: &[ConceptSweep],
    run_record: serde_json::Value,
) -> Result<()> {
    let mut written = Vec::new();
    let mut folders: Vec<String> = Vec::new();
    for concept in concepts {
        let folder = subject_folder(&out, &concept.prompt, &folders)?;
        for (j, (point, result)) in points.iter().zip(&concept.points).enumerate() {
            for (seed, image, _) in &result.runs {
                let name = format!("{folder}/setting-{j}-seed{seed}.png");
                let text = png_text(&concept.prompt, source, &json!({ "setting": point, "seed": seed }));
                write_atomic(&out.file(&name), &png_bytes(image, &text)?)?;
                written.push(name);
            }
        }
        folders.push(folder);
    }
    let title = format!("dma sweep: {}", source.path().display());
    let settings_text = serde_json::to_string_pretty(resolved)?;
    write_atomic(&out.file("results.csv"), sweep_csv(concepts, points).as_bytes())?;
    write_atomic(&out.file("results.md"), sweep_markdown(concepts, points).as_bytes())?;
    write_atomic(&out.file("report.html"), sweep_html(&title, &settings_text, concepts, points)?.as_bytes())?;
    let results: Vec<serde_json::Value> = concepts
        .iter()
        .zip(&folders)
        .map(|(concept, folder)| {
            let settings: Vec<serde_json::Value> = points
                .iter()
                .zip(&concept.points)
                .map(|(point, r)| json!({ "setting": point.label, "scores": r.scores, "runs": r.runs.iter().map(|(seed, _, cost)| json!({ "seed": seed, "cost": cost })).collect::<Vec<_>>() }))
                .collect();
            json!({ "prompt": concept.prompt, "folder": folder, "samples": concept.samples, "settings": settings })
        })
        .collect();
    write_json(&out.file("results.json"), &json!({ "command": "sweep", "results": results }))?;
    written.extend(["results.csv", "results.md", "report.html", "results.json", "run.json"].map(String::from));
    let mut record = json!({
        "command": "sweep",
        "dma_version": env!("CARGO_PKG_VERSION"),
        "argv": std::env::args().collect::<Vec<_>>(),
        "settings": resolved,
        "model": model_record(source, model)?,
        "device": args.model.device,
        "dtype": args.model.dtype,
        "clip": clip.display().to_string(),
        "outputs": written,
    });
    if let (Some(record), serde_json::Value::Object(run)) = (record.as_object_mut(), run_record) {
        record.extend(run);
    }
    write_json(&out.file("run.json"), &record)?;
    let folder = out.finish()?;
    eprintln!("wrote {} (open report.html in a browser)", folder.display());
    Ok(())
}
