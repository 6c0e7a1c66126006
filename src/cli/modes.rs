//! `dma modes`: the modes of a multimodal concept (clusters of its samples in CLIP space), and with --average one
//! prototype per mode through a per-mode adapter, next to the prototype of the whole concept.
use super::average::{AlignArgs, SamplingArgs};
use super::common::{check_class_ids, check_prompt, load_clip, progress_bar};
use super::job::agree;
use super::report::{model_record, png_text, write_samples};
use super::resume::Resumable;
use super::run::{Item, Run};
use dma::distributed::{Parcel, Ranks, Share};
use dma::loaders::run_defaults;
use dma::method::AlignSettings;
use dma::output::OutDir;
use dma::pipelines::mental_average::{SamplingResult, SamplingSettings};
use dma::pipelines::modes::{ModeOutcome, Modes};
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use serde_json::Value;
use std::path::Path;
use anyhow::{bail, ensure, Context, Result};
use clap::{ArgMatches, Args};
use serde::{Deserialize, Serialize};
use dma::adapters::AdapterKind;
use dma::clustering::{ClusterCount, Criterion};
use dma::files::{write_atomic, write_json};
use dma::output::images::{enlarge_to, grid, png_bytes, square_grid};
use dma::pipelines::memory::{self, Work};
use dma::pipelines::mental_average::seeded_mental_average;
use dma::pipelines::mental_average::alignment_work;
use dma::models::blip::vqa::BlipVqa;
use dma::pipelines::modes::{discover, mode_images, prototype_of_mode, ChainSettings, Describer, Describers, DiscoverySettings, Grounding};
use dma::weights::write_safetensors;
use serde_json::json;
use std::path::PathBuf;
use tch::Tensor;

/// Widest contact sheet or grid written, in pixels.
const MAX_GRID_WIDTH: i64 = 4096;
/// modes.png shows each prototype at least this high (the embedded model's are 32 pixels).
const FIGURE_SIDE: i64 = 128;

/// What describes samples for `--by`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroundingModel {
    #[default]
    Clip,
    BlipVqa,
}

#[derive(Args, Debug, Serialize, Deserialize)]
pub struct ModesArgs {
    #[command(flatten)]
    pub common: SamplingArgs,
    /// Samples drawn (seeded by --seed, with the sampler of `dma sample`) and clustered [default: 100, or the
    /// model's].
    #[arg(long)]
    pub samples: Option<i64>,
    /// The number of clusters, or `auto` to choose it among 1 to 8 (`auto:N`: among 1 to N) by
    /// --cluster-criterion.
    #[arg(long, default_value = "auto", value_parser = ClusterCount::parse)]
    pub clusters: ClusterCount,
    /// How `--clusters auto` chooses: `silhouette` (one cluster if BIC prefers it, else the best-separated
    /// clusters) or `bic` (the paper's lowest BIC, which tends to split a kind into several clusters).
    #[arg(long, value_enum, default_value_t = Criterion::Silhouette)]
    pub cluster_criterion: Criterion,
    /// Principal components of the embeddings the Gaussian mixture is fitted in [default: 4, or the model's].
    #[arg(long)]
    pub pca_dims: Option<usize>,
    /// A CLIP model folder in transformers' layout (e.g. openai/clip-vit-large-patch14) to embed samples with
    /// [default: the embedded model's small CLIP].
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Cluster along an attribute you name instead of what differs most: "attribute: value, value, ..."; each
    /// sample is described by how well each value fits it, as --grounding judges.
    #[arg(long)]
    pub by: Option<String>,
    /// How --by describes a sample: `clip` (its CLIP similarity to each value's text) or `blip-vqa` (the
    /// log-likelihood BLIP's VQA model, --vqa, gives each value as the answer to --question about it).
    #[arg(long, value_enum, default_value_t = GroundingModel::Clip, requires = "by")]
    #[serde(default)]
    pub grounding: GroundingModel,
    /// The BLIP VQA model for `--grounding blip-vqa`: a BlipForQuestionAnswering folder in transformers' layout
    /// or its Hugging Face id in the local cache (e.g. Salesforce/blip-vqa-base).
    #[arg(long, value_name = "PATH")]
    #[serde(default)]
    pub vqa: Option<String>,
    /// The question `--grounding blip-vqa` asks [default: "what is the <attribute>?"].
    #[arg(long)]
    #[serde(default)]
    pub question: Option<String>,
    /// Also learn one adapter per mode and compute each mode's mental average, and the concept's overall one.
    #[arg(long)]
    pub average: bool,
    /// The adapter learned per mode (ti: text models only; class-embedding: class-conditional models only).
    #[arg(long, value_enum, default_value_t = AdapterKind::Lora)]
    pub adapter_kind: AdapterKind,
    /// Adapter training steps [default: Textual Inversion and class embedding 3000, LoRA 2000, or the model's].
    #[arg(long)]
    pub adapter_steps: Option<usize>,
    /// Adapter learning rate [default: Textual Inversion and class embedding 1e-2, LoRA 1e-4, or the model's].
    #[arg(long)]
    pub adapter_lr: Option<f64>,
    /// Samples per adapter training step [default: 4, or the model's].
    #[arg(long)]
    pub adapter_batch: Option<i64>,
    /// The guidance DMA samples with under a LoRA adapter [default: 3, or the model's].
    #[arg(long)]
    pub lora_guidance: Option<f64>,
    #[command(flatten)]
    pub align: AlignArgs,
    /// Continue the stopped run that was writing to DIR (its --out) from its last checkpoint (the samples, each
    /// mental average after every step, each adapter's training every 50 steps), with the same settings; the
    /// result is the one the run would have given uninterrupted.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
}

impl Resumable for ModesArgs {
    fn resume_dir(&self) -> Option<PathBuf> {
        self.resume.clone()
    }
    fn resumed(self, given: &Self, dir: PathBuf) -> Self {
        Self { common: self.common.resumed(&given.common, dir), resume: None, ..self }
    }
}

pub fn modes(args: ModesArgs, matches: &ArgMatches, ranks: Ranks) -> Result<()> {
    let (resumed, args) = Run::arguments("modes", args, matches, ranks)?;
    let common = &args.common;
    let (source, settings, discovery, align, chain) = agree(ranks, resolve(&args))?;
    // The samples, and with --average the whole concept's latents, are shared by the ranks: each needs a block.
    let share = Share::new(settings.batch, ranks.rank(), ranks.size());
    agree(ranks, share.check(discovery.samples, "--samples").and_then(|()| if args.average { share.check(chain.latents, "--latents") } else { Ok(()) }))?;
    let resolved = json!({ "sampling": settings, "discovery": discovery, "alignment": align, "chain": chain });
    let mut run = Run::open(ranks, "modes", resumed, &args, &resolved, || common.out_dir("modes"))?;
    let device = common.model.device_on_rank(ranks);
    let mut model = run.load_model(&common.model, &source, &resolved, |model| {
        check_class_ids(model, common.class_id.as_slice())?;
        check_prompt(model, &common.prompt()?, None)?;
        let [c, h, w] = model.latent_shape();
        let count = format!("--samples {} and --latents {}", discovery.samples, chain.latents);
        memory::check_fits(model, Work::Alignment, settings.batch, [discovery.samples.max(chain.latents), c, h, w], &count, &device)?;
        if args.average {
            chain.adapter.kind.check_fits(model)?;
            memory::check_fits(model, Work::Training, chain.adapter.batch, [discovery.samples, c, h, w], &count, &device)?;
        }
        Ok(())
    })?;
    let (embedder, clip_dir, vqa) = agree(ranks, (|| {
        let (embedder, clip_dir) = load_clip(args.clip.as_deref(), &model)?;
        let by = || format!("--by {:?}", args.by.as_deref().unwrap_or_default());
        let vqa = match discovery.grounding.as_ref().map(|g| &g.describer) {
            // The values' texts must be words the CLIP's tokenizer knows: checked now, not after sampling.
            Some(Describer::Clip) => {
                let values = &discovery.grounding.as_ref().expect("grounded").values;
                let _ = embedder.text_embeds(values).with_context(by)?;
                None
            }
            Some(Describer::BlipVqa { .. }) => {
                let vqa = load_vqa(args.vqa.as_deref().context("--grounding blip-vqa needs --vqa")?, model.device)?;
                for value in &discovery.grounding.as_ref().expect("grounded").values {
                    vqa.answer_ids(value).with_context(by)?;
                }
                Some(vqa)
            }
            None => None,
        };
        Ok((embedder, clip_dir, vqa))
    })())?;
    let describers = Describers { clip: &embedder, vqa: vqa.as_ref() };
    let load_seconds = run.seconds();
    let quiet = common.quiet || !ranks.is_root();

    // The samples are drawn by every rank (its share), clustered by rank 0.
    let bar = progress_bar(settings.steps as u64, quiet);
    bar.set_message(format!("sampling {}", discovery.samples));
    let modes = discover(&model, &settings, describers, &discovery, &|n| bar.inc(n), run.shared_stage(), ranks).map_err(|e| run.explain(e))?;
    bar.finish_and_clear();
    let discovery_seconds = run.seconds() - load_seconds;
    let chain_results = if args.average {
        let overall_bar = progress_bar(alignment_work(&align, &settings, chain.latents), quiet);
        overall_bar.set_message("mental average of the whole concept");
        let overall = seeded_mental_average(&model, &settings, &align, chain.latents, &|n| overall_bar.inc(n), ("overall-average", run.shared_stage()), ranks);
        let (overall, overall_index) = overall.map_err(|e| run.explain(e))?;
        overall_bar.finish_and_clear();
        // One mode per item, whole on one rank.
        // A mode's average starts from at most --latents of its samples: its work is at most this.
        let work = chain.adapter.steps as u64 + alignment_work(&align, &settings, chain.latents);
        let items: Vec<Item> = (0..modes.clustering.k).map(|k| Item { stage: format!("mode-{k}"), title: format!("mode {}/{}", k + 1, modes.clustering.k), work }).collect();
        let per_mode = run.items(&items, common.quiet, &mut |k, checkpoints, progress| {
            let mode = prototype_of_mode(&mut model, &modes, k, (&settings, &align, &chain), &|_, _| {}, progress, checkpoints)?;
            Ok(match mode {
                Some(mode) => mode.to_parcel()?,
                None => Parcel::new(json!(null)),
            })
        })?;
        Some((overall, overall_index, per_mode))
    } else {
        None
    };
    let seconds = run.seconds();
    let timings = json!({ "load": load_seconds, "discovery": discovery_seconds, "total": seconds });
    run.finish(&device, json!({ "seconds": seconds }), |out, resumed, ranks| {
        let chain_results = match chain_results {
            Some((overall, overall_index, Some(per_mode))) => {
                let per_mode = per_mode.iter().map(|p| ModeOutcome::from_parcel(p, model.device)).collect::<Result<Vec<_>>>()?;
                Some((overall, overall_index, per_mode.into_iter().flatten().collect()))
            }
            _ => None,
        };
        let run_record = json!({ "resumed": resumed, "ranks": ranks, "timings_seconds": timings });
        write_modes(Outputs { args: &args, source: &source, model: &model, settings: &settings, discovery: &discovery, align: &align, chain: &chain, clip_dir: &clip_dir }, out, &modes, chain_results, run_record)
    })
}

/// The settings `dma modes` runs with, checked before anything long starts.
fn resolve(args: &ModesArgs) -> Result<(ModelSource, SamplingSettings, DiscoverySettings, AlignSettings, ChainSettings)> {
    let common = &args.common;
    if common.init_latents.is_some() {
        bail!("--init-latents does not apply to `dma modes`: its samples are drawn from --seed");
    }
    let source = common.model.source()?;
    let defaults = run_defaults(&source)?;
    let samples = args.samples.unwrap_or(defaults.mode_samples);
    let settings = common.settings(&defaults, "--samples", samples)?;
    args.clusters.validate(samples.max(0) as usize).with_context(|| format!("--clusters with --samples {samples}"))?;
    let mut grounding = args.by.as_deref().map(Grounding::parse).transpose()?;
    match (args.grounding, &mut grounding) {
        (GroundingModel::BlipVqa, Some(g)) => {
            ensure!(args.vqa.is_some(), "--grounding blip-vqa needs --vqa: a BLIP VQA model (e.g. Salesforce/blip-vqa-base)");
            let question = args.question.clone().unwrap_or_else(|| g.default_question());
            ensure!(!question.trim().is_empty(), "--question is empty");
            g.describer = Describer::BlipVqa { question };
        }
        _ => ensure!(
            args.vqa.is_none() && args.question.is_none(),
            "--vqa and --question are for `--grounding blip-vqa`, which is not selected"
        ),
    }
    let discovery = DiscoverySettings { samples, clusters: args.clusters, criterion: args.cluster_criterion, pca_dims: args.pca_dims.unwrap_or(defaults.pca_dims), grounding };
    if discovery.pca_dims == 0 {
        bail!("--pca-dims must be at least 1");
    }
    let align = args.align.settings(&defaults, settings.steps)?;
    let latents = args.align.latents(&defaults)?;
    align.validate_for(latents)?;
    let mut adapter = defaults.adapter(args.adapter_kind, common.seed);
    adapter.steps = args.adapter_steps.unwrap_or(adapter.steps);
    adapter.lr = args.adapter_lr.unwrap_or(adapter.lr);
    adapter.batch = args.adapter_batch.unwrap_or(adapter.batch);
    if adapter.steps == 0 || adapter.batch < 1 || !adapter.lr.is_finite() || adapter.lr <= 0.0 {
        bail!("--adapter-steps, --adapter-batch and --adapter-lr must be positive");
    }
    let chain = ChainSettings { adapter, lora_guidance: args.lora_guidance.unwrap_or(defaults.lora_guidance), latents, held_out_every: 5, loss_draws: 32 };
    Ok((source, settings, discovery, align, chain))
}

/// What rank 0 writes a `dma modes` run's outputs with.
struct Outputs<'a> {
    args: &'a ModesArgs,
    source: &'a ModelSource,
    model: &'a DiffusionModel,
    settings: &'a SamplingSettings,
    discovery: &'a DiscoverySettings,
    align: &'a AlignSettings,
    chain: &'a ChainSettings,
    clip_dir: &'a Path,
}

/// Writes the samples, each cluster's contact sheet, with --average the prototypes (the whole concept's and each
/// mode's, with its adapter) and modes.png, then clusters.json and run.json (`run_record` holding what the run
/// skeleton knows: the resumption, the ranks, the times), and moves the folder into place.
fn write_modes(o: Outputs, out: OutDir, modes: &Modes, chain_results: Option<(SamplingResult, i64, Vec<ModeOutcome>)>, run_record: Value) -> Result<()> {
    let (source, model, settings, align) = (o.source, o.model, o.settings, o.align);
    let samples = o.discovery.samples;
    let parameters = json!({ "sampling": settings, "discovery": o.discovery });
    let text = png_text(&settings.prompt, source, &parameters);
    let mut written = vec!["samples.png".to_string()];
    write_atomic(&out.file("samples.png"), &png_bytes(&square_grid(&modes.images, MAX_GRID_WIDTH), &text)?)?;
    written.push(write_samples(&out, "samples", &modes.images, &text, settings.seed)?);
    let mut clusters = Vec::new();
    for k in 0..modes.clustering.k {
        let name = format!("cluster-{k}.png");
        write_atomic(&out.file(&name), &png_bytes(&square_grid(&mode_images(modes, k), MAX_GRID_WIDTH), &text)?)?;
        clusters.push(json!({ "cluster": k, "size": modes.clustering.sizes[k], "members": modes.members(k), "contact_sheet": name }));
        written.push(name);
    }
    if o.args.common.save_latents {
        write_safetensors(&out.file("latents.safetensors"), &[("latents", &modes.latents)])?;
        written.push("latents.safetensors".into());
    }

    let mut chain_record = json!(null);
    if let Some((overall, overall_index, per_mode)) = chain_results {
        let overall_image = model.decode(&overall.latents.get(overall_index).unsqueeze(0));
        write_atomic(&out.file("prototype.png"), &png_bytes(&overall_image.get(0), &text)?)?;
        written.push("prototype.png".into());
        let mut figure = vec![overall_image];
        let mut records = Vec::new();
        for ModeOutcome { record: mode, adapter_bytes, prototype_latent } in &per_mode {
            let dir = format!("mode-{}", mode.cluster);
            std::fs::create_dir_all(out.file(&dir)).with_context(|| format!("cannot create {dir} in the output folder"))?;
            let adapter_name = format!("{dir}/{}", mode.adapter_file);
            write_atomic(&out.file(&adapter_name), adapter_bytes)?;
            let image = model.decode(prototype_latent);
            let mode_text = png_text(&mode.sampling.prompt, source, &json!({ "sampling": mode.sampling, "alignment": align, "adapter": adapter_name }));
            let prototype_name = format!("{dir}/prototype.png");
            write_atomic(&out.file(&prototype_name), &png_bytes(&image.get(0), &mode_text)?)?;
            figure.push(image);
            clusters[mode.cluster]["prototype"] = json!(prototype_name);
            clusters[mode.cluster]["adapter"] = json!(adapter_name);
            clusters[mode.cluster]["prompt"] = json!(mode.sampling.prompt);
            clusters[mode.cluster]["guidance"] = json!(mode.sampling.guidance);
            clusters[mode.cluster]["held_out_loss"] = json!(mode.held_out);
            records.push(json!({ "cluster": mode.cluster, "sampling": mode.sampling, "started_from_samples": mode.started_from, "prototype_index": mode.prototype, "steps": mode.log, "passes": mode.passes }));
            written.extend([adapter_name, prototype_name]);
        }
        let figure = enlarge_to(&Tensor::cat(&figure, 0), FIGURE_SIDE);
        write_atomic(&out.file("modes.png"), &png_bytes(&grid(&figure, figure.size()[0], MAX_GRID_WIDTH), &text)?)?;
        written.push("modes.png".into());
        chain_record = json!({ "settings": o.chain, "alignment": align, "overall": { "prototype_index": overall_index, "steps": overall.log, "passes": overall.passes }, "modes": records });
    }

    let clusters_record = json!({
        "prompt": settings.prompt,
        "samples": samples,
        "clip": o.clip_dir.display().to_string(),
        "grounding": o.discovery.grounding,
        "vqa": o.args.vqa,
        "clustering": modes.clustering,
        "clusters": clusters,
    });
    write_json(&out.file("clusters.json"), &clusters_record)?;
    written.push("clusters.json".into());
    let mut record = json!({
        "command": "modes",
        "dma_version": env!("CARGO_PKG_VERSION"),
        "argv": std::env::args().collect::<Vec<_>>(),
        "model": model_record(source, model)?,
        "clip": o.clip_dir.display().to_string(),
        "device": o.args.common.model.device,
        "dtype": o.args.common.model.dtype,
        "sampling": settings,
        "discovery": o.discovery,
        "chain": chain_record,
        "outputs": written,
    });
    if let (Some(record), Value::Object(run)) = (record.as_object_mut(), run_record) {
        record.extend(run);
    }
    write_json(&out.file("run.json"), &record)?;
    let folder = out.finish()?;
    eprintln!("{} clusters of {samples} samples (sizes {:?}); wrote {}", modes.clustering.k, modes.clustering.sizes, folder.display());
    Ok(())
}

/// The VQA model of --vqa (a folder or a Hugging Face id in the local cache), in float32 on `device`.
fn load_vqa(spec: &str, device: tch::Device) -> Result<BlipVqa> {
    let dir = match ModelSource::resolve(spec).with_context(|| format!("--vqa {spec}"))? {
        ModelSource::Folder(dir) => dir,
        ModelSource::SingleFile(file) => bail!("--vqa {}: expected a BlipForQuestionAnswering folder, not a single file", file.display()),
    };
    BlipVqa::load(&dir, device, tch::Kind::Float).with_context(|| format!("--vqa {spec}"))
}
