//! Multimodal concepts (`dma modes`): draw samples of a prompt, embed them with CLIP, cluster them into modes,
//! and, for the whole chain, learn one adapter per mode and compute each mode's prototype with DMA.
//! No files, no UI: the command line writes what this returns.
use crate::checkpoint::Checkpoints;
use super::mental_average::{alignment_work, mental_average_from, run_stage, seeded_latents, SamplingResult, SamplingSettings};
use super::DiffusionModel;
use crate::adapters::training::{mean_loss, prompt_with_token, train, AdapterTraining};
use crate::adapters::{lora, Adapter, AdapterKind};
use crate::clustering::{cluster, ClusterCount, Clustering, Criterion};
use crate::evaluation::clip_embedder::ClipEmbedder;
use crate::models::blip::vqa::BlipVqa;
use crate::distributed::{Parcel, Ranks};
use crate::method::{AlignSettings, StepLog};
use crate::passes::Passes;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// A grounded axis, `--by "colour: red, blue, black"`: samples are clustered by how each value describes them
/// instead of by their whole image embedding, as `describer` judges it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Grounding {
    pub attribute: String,
    pub values: Vec<String>,
    pub describer: Describer,
}

/// What says how well a value describes a sample.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "model")]
pub enum Describer {
    /// The CLIP similarity of the image to the value's text.
    Clip,
    /// The log-likelihood BLIP's VQA model gives the value as the answer to `question` about the image.
    BlipVqa { question: String },
}

impl Grounding {
    /// "attribute: value, value, ..." with at least two distinct values, described by CLIP.
    pub fn parse(text: &str) -> Result<Self> {
        let Some((attribute, values)) = text.split_once(':') else {
            bail!("--by {text:?}: expected an attribute and its values, e.g. \"colour: red, blue, black\"");
        };
        let attribute = attribute.trim().to_string();
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
        ensure!(!attribute.is_empty(), "--by {text:?}: the attribute before the colon is empty");
        ensure!(values.iter().all(|v| !v.is_empty()), "--by {text:?}: the values after the colon must be a comma-separated list without empty entries");
        ensure!(values.len() >= 2, "--by {text:?}: give at least two values to cluster along (got {})", values.len());
        let mut unique = values.clone();
        unique.sort();
        unique.dedup();
        ensure!(unique.len() == values.len(), "--by {text:?}: a value is listed twice");
        Ok(Self { attribute, values, describer: Describer::Clip })
    }

    /// The question a VQA model is asked when none is given: "what is the <attribute>?".
    pub fn default_question(&self) -> String {
        format!("what is the {}?", self.attribute)
    }
}

/// The models samples are described with: CLIP always, BLIP's VQA model for `Describer::BlipVqa` grounding.
#[derive(Clone, Copy)]
pub struct Describers<'a> {
    pub clip: &'a ClipEmbedder,
    pub vqa: Option<&'a BlipVqa>,
}

/// Images per pass of the VQA model (its ViT reads 384x384 images).
const VQA_BATCH: i64 = 16;

/// How modes are found.
#[derive(Clone, Debug, Serialize)]
pub struct DiscoverySettings {
    pub samples: i64,
    pub clusters: ClusterCount,
    /// How an auto count is chosen.
    pub criterion: Criterion,
    /// Principal components kept before the mixture is fitted.
    pub pca_dims: usize,
    pub grounding: Option<Grounding>,
}

pub struct Modes {
    /// The samples' initial noise, final latents [N,C,H,W] and images [N,C,H,W] in [0,1].
    pub noise: Tensor,
    pub latents: Tensor,
    pub images: Tensor,
    pub clustering: Clustering,
}

impl Modes {
    /// The sample indices of cluster `k`.
    pub fn members(&self, k: usize) -> Vec<i64> {
        self.clustering.labels.iter().enumerate().filter(|(_, &l)| l == k).map(|(i, _)| i as i64).collect()
    }

    /// Cluster `k`'s latents split into (held out, to train on): every `every`-th member is held out, none when
    /// the cluster has fewer than `every` members.
    pub fn held_out_split(&self, k: usize, every: usize) -> (Tensor, Tensor) {
        let members = self.members(k);
        let every = every.max(2);
        let held = |i: usize| members.len() >= every && i % every == every - 1;
        let pick = |keep: &dyn Fn(usize) -> bool| {
            let ids: Vec<i64> = members.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, &s)| s).collect();
            self.latents.index_select(0, &Tensor::from_slice(&ids).to_device(self.latents.device()))
        };
        (pick(&held), pick(&|i| !held(i)))
    }
}

/// What clustering sees: unit image embeddings [N, D], or, grounded, each value's score for each image less the
/// image's mean score over the values [N, V]. Zero-shot choices among the values depend only on those differences;
/// the mean (how much the image resembles any of the values, or how likely any answer is) is not the axis the user
/// named. The scores: CLIP cosine similarities, or the VQA model's answer log-likelihoods, where a value's constant
/// offset (a longer answer is less likely everywhere) moves every sample alike and so separates none.
pub fn features(describers: Describers, images: &Tensor, grounding: Option<&Grounding>) -> Result<Tensor> {
    let Some(g) = grounding else { return describers.clip.image_embeds(images) };
    let scores = match &g.describer {
        Describer::Clip => describers.clip.image_embeds(images)?.matmul(&describers.clip.text_embeds(&g.values)?.tr()),
        Describer::BlipVqa { question } => {
            let vqa = describers.vqa.context("grounding by BLIP-VQA needs a VQA model (--vqa)")?;
            vqa.answer_log_likelihoods(images, question, &g.values, VQA_BATCH)?
        }
    };
    Ok(&scores - scores.mean_dim(1, true, Kind::Float))
}

/// Principal components to keep: grounded features have V - 1 dimensions (their rows sum to zero).
fn clustering_dims(settings: &DiscoverySettings) -> usize {
    match &settings.grounding {
        Some(g) => settings.pca_dims.min(g.values.len() - 1),
        None => settings.pca_dims,
    }
}

/// Draws `settings.samples` samples with the sampler of `dma sample` (seeded by `sampling.seed`), embeds and
/// clusters them. The cluster seed is the sampling seed, so one seed reproduces the whole result. The sampling is
/// stage `samples` of `checkpoints`, spread over `ranks`; rank 0 decodes and clusters, and every rank gets the
/// clusters' assignment (the images and the figures of the clustering stay on rank 0: elsewhere images are empty).
pub fn discover(
    model: &DiffusionModel,
    sampling: &SamplingSettings,
    describers: Describers,
    settings: &DiscoverySettings,
    progress: &dyn Fn(u64),
    checkpoints: &mut dyn Checkpoints,
    ranks: Ranks,
) -> Result<Modes> {
    settings.clusters.validate(settings.samples.max(0) as usize)?;
    let init = seeded_latents(model, settings.samples, sampling.seed);
    let latents = run_stage(model, sampling, &init, None, 0, progress, ("samples", checkpoints), ranks)?.latents;
    let images = match ranks.is_root() {
        true => model.decode_batched(&latents, sampling.batch),
        false => Tensor::zeros([0], (Kind::Float, Device::Cpu)),
    };
    // Every rank needs to know which sample is in which mode; how the clusters were found is rank 0's to report.
    let mut found = None;
    let (k, labels) = ranks.from_root(|| {
        let clustering = cluster_images(describers, &images, settings, sampling.seed)?;
        let assignment = (clustering.k, clustering.labels.clone());
        found = Some(clustering);
        Ok(assignment)
    })?;
    let clustering = found.unwrap_or_else(|| Clustering::assignment(k, labels));
    Ok(Modes { noise: init, latents, images, clustering })
}

/// Embeds images [N,C,H,W] in [0,1] as `settings` says (whole image or grounded) and clusters them.
pub fn cluster_images(describers: Describers, images: &Tensor, settings: &DiscoverySettings, seed: u64) -> Result<Clustering> {
    let features = features(describers, images, settings.grounding.as_ref())?;
    cluster(&features, settings.clusters, settings.criterion, clustering_dims(settings), seed)
}

/// How the per-mode prototypes are made.
#[derive(Clone, Debug, Serialize)]
pub struct ChainSettings {
    pub adapter: AdapterTraining,
    /// The guidance DMA samples with under a LoRA adapter (the paper: 3, as LoRA strengthens the prompt); Textual
    /// Inversion keeps the sampling guidance.
    pub lora_guidance: f64,
    /// Latents aligned per prototype: the noise of that many of the mode's members (fewer in a smaller mode).
    pub latents: i64,
    /// Every `held_out_every`-th member of a mode is kept out of its adapter's training to measure the adapter.
    pub held_out_every: usize,
    /// Noise draws per held-out sample when measuring.
    pub loss_draws: usize,
}

/// The noise-prediction loss on a mode's held-out samples with the base prompt and model, and with the adapter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldOutLoss {
    pub samples: usize,
    pub base: f64,
    pub adapted: f64,
}

pub struct ModePrototype {
    pub cluster: usize,
    pub adapter: Adapter,
    /// The prompt and guidance DMA ran with.
    pub sampling: SamplingSettings,
    /// The samples whose initial noise DMA started from: the mode's first `ChainSettings::latents` members. These
    /// draws are known to end in the mode, so DMA averages within it. From fresh noise, the adapter's pull competes
    /// with the concept's dominant mode: on the embedded model's "footwear" a sandal LoRA turned 81-91% of fresh
    /// samples into sandals, yet DMA from fresh noise aligned all 16 latents into ankle boots (BENCHMARKS.md,
    /// "Modes of a concept").
    pub started_from: Vec<i64>,
    pub result: SamplingResult,
    pub prototype: i64,
    /// None for a mode too small to hold samples out.
    pub held_out: Option<HeldOutLoss>,
}

/// The token learned for mode `k` of a prompt: `<prompt-words-k>`, new to any tokenizer.
pub fn mode_token(prompt: &str, k: usize) -> String {
    let slug: String = prompt.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let slug = slug.split('-').filter(|w| !w.is_empty()).collect::<Vec<_>>().join("-");
    format!("<{slug}-mode{k}>")
}

/// Mental averages, one per mode: `prototype_of_mode` for each cluster, skipping empty ones. Leaves no LoRA on the
/// model (Textual Inversion tokens stay; each mode's is distinct).
#[allow(clippy::too_many_arguments)]
pub fn prototypes_per_mode(
    model: &mut DiffusionModel,
    modes: &Modes,
    sampling: &SamplingSettings,
    align: &AlignSettings,
    chain: &ChainSettings,
    phase: &dyn Fn(String, u64),
    progress: &dyn Fn(u64),
    checkpoints: &mut dyn Checkpoints,
) -> Result<Vec<ModePrototype>> {
    let mut out = Vec::new();
    for k in 0..modes.clustering.k {
        out.extend(prototype_of_mode(model, modes, k, (sampling, align, chain), phase, progress, checkpoints)?);
    }
    Ok(out)
}

/// Mode `k`'s mental average: learn an adapter on its samples (less the held-out ones), then run DMA with it from
/// the noise of the mode's own samples; None for a cluster without samples to learn from. `phase` names each
/// stage and its length, `progress` advances it. The training and DMA are stages `mode-k/adapter` and
/// `mode-k/average` of `checkpoints`. Leaves no LoRA on the model (a Textual Inversion token stays).
pub fn prototype_of_mode(
    model: &mut DiffusionModel,
    modes: &Modes,
    k: usize,
    (sampling, align, chain): (&SamplingSettings, &AlignSettings, &ChainSettings),
    phase: &dyn Fn(String, u64),
    progress: &dyn Fn(u64),
    checkpoints: &mut dyn Checkpoints,
) -> Result<Option<ModePrototype>> {
    let (held, trained) = modes.held_out_split(k, chain.held_out_every);
    if trained.size()[0] == 0 {
        // A fixed cluster count can leave a component without samples: there is no mode to learn.
        return Ok(None);
    }
    let held_samples = held.size()[0] as usize;
    let loss_seed = sampling.seed ^ 0x10_55;
    let base = if held_samples > 0 { Some(mean_loss(model, &held, &sampling.prompt, loss_seed, chain.loss_draws)?) } else { None };

    phase(format!("mode {}/{}: learning a {} adapter", k + 1, modes.clustering.k, chain.adapter.kind.name()), chain.adapter.steps as u64);
    let token = mode_token(&sampling.prompt, k);
    let adapter = train(model, &trained, &sampling.prompt, &token, &chain.adapter, progress, &format!("mode-{k}/adapter"), checkpoints)?;
    let mode_sampling = match chain.adapter.kind {
        AdapterKind::Ti => SamplingSettings { prompt: prompt_with_token(&sampling.prompt, &token), ..sampling.clone() },
        AdapterKind::ClassEmbedding => SamplingSettings { prompt: token.clone(), ..sampling.clone() },
        AdapterKind::Lora => SamplingSettings { guidance: chain.lora_guidance, ..sampling.clone() },
    };
    let held_out = match base {
        Some(base) => Some(HeldOutLoss { samples: held_samples, base, adapted: mean_loss(model, &held, &mode_sampling.prompt, loss_seed, chain.loss_draws)? }),
        None => None,
    };

    let started_from: Vec<i64> = modes.members(k).into_iter().take(chain.latents.max(0) as usize).collect();
    let init = modes.noise.index_select(0, &Tensor::from_slice(&started_from).to_device(modes.noise.device()));
    // A small mode can have fewer members than --optimise asks to optimise: then all of them are.
    let align = &AlignSettings { optimised: align.optimised.map(|m| m.min(started_from.len() as i64)), ..align.clone() };
    phase(format!("mode {}/{}: mental average", k + 1, modes.clustering.k), alignment_work(align, &mode_sampling, started_from.len() as i64));
    let average = mental_average_from(model, &mode_sampling, align, &init, progress, (&format!("mode-{k}/average"), checkpoints), Ranks::alone());
    lora::remove(model);
    let (result, prototype) = average?;
    Ok(Some(ModePrototype { cluster: k, adapter, sampling: mode_sampling, started_from, result, prototype, held_out }))
}

/// What the outputs show of a mode's prototype once it is made (`ModePrototype::to_parcel`).
#[derive(Serialize, Deserialize)]
pub struct ModeRecord {
    pub cluster: usize,
    /// The adapter's file name, as diffusers looks for it.
    pub adapter_file: String,
    /// The prompt and guidance DMA ran with.
    pub sampling: SamplingSettings,
    pub started_from: Vec<i64>,
    pub prototype: i64,
    pub log: Vec<StepLog>,
    pub passes: Passes,
    pub held_out: Option<HeldOutLoss>,
}

/// A mode's prototype as rank 0 gets it: the record, the adapter file's bytes (as the adapter writes them) and
/// the prototype's latent [1,C,H,W].
pub struct ModeOutcome {
    pub record: ModeRecord,
    pub adapter_bytes: Vec<u8>,
    pub prototype_latent: Tensor,
}

impl ModePrototype {
    /// What a rank sends rank 0 of a mode (`distributed::items`), and rank 0 keeps as the mode's checkpoint.
    pub fn to_parcel(&self) -> Result<Parcel> {
        let dir = tempfile::tempdir()?;
        let file = self.adapter.write_into(dir.path())?;
        let bytes = std::fs::read(&file)?;
        let record = ModeRecord {
            cluster: self.cluster,
            adapter_file: file.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            sampling: self.sampling.clone(),
            started_from: self.started_from.clone(),
            prototype: self.prototype,
            log: self.result.log.clone(),
            passes: self.result.passes,
            held_out: self.held_out.clone(),
        };
        let latent = self.result.latents.narrow(0, self.prototype, 1);
        Ok(Parcel::new(serde_json::to_value(record)?).with("adapter", &Tensor::from_slice(&bytes)).with("prototype", &latent))
    }
}

impl ModeOutcome {
    /// The mode `to_parcel` packed, its latent on `device`; None for the parcel of a mode without samples (null).
    pub fn from_parcel(parcel: &Parcel, device: Device) -> Result<Option<Self>> {
        if parcel.record.is_null() {
            return Ok(None);
        }
        let record: ModeRecord = serde_json::from_value(parcel.record.clone())?;
        let adapter_bytes = Vec::<u8>::try_from(parcel.tensor("adapter", Device::Cpu)?)?;
        Ok(Some(Self { record, adapter_bytes, prototype_latent: parcel.tensor("prototype", device)? }))
    }
}

/// Images of one mode's samples [M,C,H,W] (the contact sheet).
pub fn mode_images(modes: &Modes, k: usize) -> Tensor {
    let ids = Tensor::from_slice(&modes.members(k));
    modes.images.to_device(Device::Cpu).to_kind(Kind::Float).index_select(0, &ids)
}
