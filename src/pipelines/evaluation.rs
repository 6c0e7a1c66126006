//! The paper's comparison (issue "Evaluation"): for each repetition, DMA's prototype and every baseline's from the
//! concept's samples; then, over the repetitions, each method's consistency, representativeness, sharpness and
//! zero-shot classes. Under the paper's Table 1 protocol the samples are drawn once per concept and shared by every
//! repetition, which varies only each method's own randomness; under the fresh-samples protocol each repetition
//! draws its own. No files, no UI.
use super::baselines::averages::{avg_vae, latent_centre, pixel_average};
use super::baselines::{d4m::d4m, mgd3::mgd3, typical::most_typical, BaselineSettings};
use crate::checkpoint::Checkpoints;
use super::mental_average::{alignment_work, run_stage, seeded_latents, seeded_mental_average, SamplingResult, SamplingSettings};
use super::DiffusionModel;
use crate::evaluation::clip_embedder::ClipEmbedder;
use crate::evaluation::metrics::{consistency, distances_to_mean, mean, median};
use crate::evaluation::sharpness::laplacian_variance;
use crate::evaluation::zero_shot::ZeroShot;
use crate::models::blip::image_reward::ImageReward;
use crate::models::dreamsim::DreamSim;
use crate::method::{AlignSettings, StepLog};
use crate::passes::Passes;
use crate::distributed::{Parcel, Ranks};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// The methods compared, in the order of the paper's Table 1 (baselines first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    PixelAverage,
    AvgVae,
    D4m,
    Mgd3,
    Typical,
    Dma,
}

impl Method {
    pub const ALL: [Method; 6] = [Method::PixelAverage, Method::AvgVae, Method::D4m, Method::Mgd3, Method::Typical, Method::Dma];

    /// The name tables and the report show.
    pub fn label(self) -> &'static str {
        match self {
            Method::PixelAverage => "pixel average",
            Method::AvgVae => "Avg VAE",
            Method::D4m => "D4M",
            Method::Mgd3 => "MGD3",
            Method::Typical => "typical sample",
            Method::Dma => "DMA",
        }
    }

    /// The name files and flags use.
    pub fn slug(self) -> &'static str {
        match self {
            Method::PixelAverage => "pixel-average",
            Method::AvgVae => "avg-vae",
            Method::D4m => "d4m",
            Method::Mgd3 => "mgd3",
            Method::Typical => "typical",
            Method::Dma => "dma",
        }
    }
}

/// How repetitions relate to the samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// The paper's Table 1: one set of samples per concept (from the sampling seed), shared by every repetition;
    /// a repetition varies only each method's own randomness (DMA's latents, D4M's and MGD3's noise), so a
    /// deterministic average (pixel average, Avg VAE, the most typical sample) has consistency 0.
    SharedSamples,
    /// Every repetition draws its own samples from its seed and computes every method from them: how much a
    /// prototype varies with everything redrawn.
    FreshSamples,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSettings {
    /// The sampler's settings; the prompt and seed are set per concept and seed.
    pub sampling: SamplingSettings,
    pub align: AlignSettings,
    /// DMA's K.
    pub latents: i64,
    /// Samples drawn per concept (shared samples) or per repetition (fresh samples): the set every baseline is
    /// computed from and every prototype judged against.
    pub samples: i64,
    /// The repetitions' seeds (under shared samples, the samples' own seed is `sampling.seed`, not among them).
    pub seeds: Vec<u64>,
    pub protocol: Protocol,
    pub methods: Vec<Method>,
    pub baselines: BaselineSettings,
}

impl EvalSettings {
    /// The seed of the samples every repetition shares (None when each draws its own).
    pub fn shared_sample_seed(&self) -> Option<u64> {
        (self.protocol == Protocol::SharedSamples).then_some(self.sampling.seed)
    }

    /// Progress units of one repetition (sampling steps and Adam iterations), as `evaluate_seed` reports them.
    pub fn work_per_seed(&self) -> u64 {
        let steps = if self.protocol == Protocol::FreshSamples { self.sampling.steps as u64 } else { 0 };
        let dma = if self.methods.contains(&Method::Dma) { alignment_work(&self.align, &self.sampling, self.latents) } else { 0 };
        let guided = self.methods.iter().filter(|m| matches!(m, Method::D4m | Method::Mgd3)).count() as u64;
        steps + dma + guided
    }
}

/// A concept's samples from one seed: the set every baseline is computed from and every prototype is judged by.
pub struct SampleSet {
    /// The final latents [N,C,H,W], their images [N,C,H,W] in [0,1], and the images' CLIP embeddings [N,D].
    pub latents: Tensor,
    pub images: Tensor,
    pub embeds: Tensor,
}

/// `count` samples of `sampling`'s prompt from its seed, as stage `stage` of `checkpoints`, drawn by `ranks` (each
/// its share; every rank gets them all).
#[allow(clippy::too_many_arguments)]
pub fn draw_samples(
    model: &DiffusionModel,
    embedder: &ClipEmbedder,
    sampling: &SamplingSettings,
    count: i64,
    progress: &dyn Fn(u64),
    stage: &str,
    checkpoints: &mut dyn Checkpoints,
    ranks: Ranks,
) -> Result<SampleSet> {
    let init = seeded_latents(model, count, sampling.seed);
    let latents = run_stage(model, sampling, &init, None, 0, progress, (stage, checkpoints), ranks)?.latents;
    let images = model.decode_batched(&latents, sampling.batch);
    let embeds = embedder.image_embeds(&images)?;
    Ok(SampleSet { latents, images, embeds })
}

/// What a DMA run cost: its passes (`Passes`) and the seconds its aligned steps took (kept in its log, so a
/// resumed run counts the steps done before it stopped).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct RunCost {
    pub passes: Passes,
    pub alignment_seconds: f64,
}

impl RunCost {
    pub fn of(result: &SamplingResult) -> Self {
        Self { passes: result.passes, alignment_seconds: result.log.iter().map(|l| l.seconds).sum() }
    }
}

/// DMA's prototype image [C,H,W] from `count` latents seeded by `sampling.seed`, as stage `stage`, with its log and cost.
pub fn dma_prototype(
    model: &DiffusionModel,
    sampling: &SamplingSettings,
    align: &AlignSettings,
    count: i64,
    progress: &dyn Fn(u64),
    stage: &str,
    checkpoints: &mut dyn Checkpoints,
) -> Result<(Tensor, Vec<StepLog>, RunCost)> {
    let (result, prototype) = seeded_mental_average(model, sampling, align, count, progress, (stage, checkpoints), Ranks::alone())?;
    let image = model.decode(&result.latents.narrow(0, prototype, 1)).squeeze_dim(0);
    let cost = RunCost::of(&result);
    Ok((image, result.log, cost))
}

/// One repetition of one concept: the samples it drew and each method's prototype.
pub struct SeedOutcome {
    pub seed: u64,
    /// The images [N,C,H,W] in [0,1] of the samples this repetition drew, and their CLIP embeddings [N,D]. Under
    /// shared samples the set is drawn once per concept and kept with the concept's first repetition; the others
    /// hold none (N = 0).
    pub samples: Tensor,
    pub sample_embeds: Tensor,
    /// Each method's prototype image [C,H,W], in the order of the settings' methods.
    pub prototypes: Vec<(Method, Tensor)>,
    /// DMA's per-step alignment log (empty without DMA) and its cost.
    pub dma_log: Vec<StepLog>,
    pub dma_cost: RunCost,
}

impl SeedOutcome {
    /// The outcome as a parcel: what a rank sends rank 0 (`distributed::items`) and rank 0 keeps as the seed's
    /// checkpoint. Every tensor keeps its dtype and bits, so scores from it are those of the outcome itself.
    pub fn to_parcel(&self) -> Parcel {
        let methods: Vec<Method> = self.prototypes.iter().map(|(m, _)| *m).collect();
        let record = json!({ "seed": self.seed, "methods": methods, "dma_log": self.dma_log, "dma_cost": self.dma_cost });
        let parcel = Parcel::new(record).with("samples", &self.samples).with("sample_embeds", &self.sample_embeds);
        self.prototypes.iter().fold(parcel, |parcel, (method, image)| parcel.with(method.slug(), image))
    }

    /// The outcome `to_parcel` packed, its tensors on `device`.
    pub fn from_parcel(parcel: &Parcel, device: Device) -> Result<Self> {
        let field = |name: &str| parcel.record.get(name).cloned().with_context(|| format!("a seed's outcome has no `{name}`"));
        let methods: Vec<Method> = serde_json::from_value(field("methods")?)?;
        let prototypes = methods.into_iter().map(|m| Ok((m, parcel.tensor(m.slug(), device)?))).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            seed: serde_json::from_value(field("seed")?)?,
            samples: parcel.tensor("samples", device)?,
            sample_embeds: parcel.tensor("sample_embeds", device)?,
            prototypes,
            dma_log: serde_json::from_value(field("dma_log")?)?,
            dma_cost: serde_json::from_value(field("dma_cost")?)?,
        })
    }
}

/// Repetition `seed` of `prompt`: every method's prototype from `shared` (the concept's samples) or, without them,
/// from samples this repetition draws from `seed`; `keeps_shared` says whether the outcome records the shared
/// samples (the concept's first repetition does). Fresh samples and DMA are the stages `<stage>/samples` and
/// `<stage>/dma` of `checkpoints` (the other methods take a step or two).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_seed(
    model: &DiffusionModel,
    embedder: &ClipEmbedder,
    prompt: &str,
    settings: &EvalSettings,
    (seed, shared, keeps_shared): (u64, Option<&SampleSet>, bool),
    progress: &dyn Fn(u64),
    stage: &str,
    checkpoints: &mut dyn Checkpoints,
) -> Result<SeedOutcome> {
    let sampling = SamplingSettings { prompt: prompt.to_string(), seed, ..settings.sampling.clone() };
    let drawn;
    let set = match shared {
        Some(set) => set,
        None => {
            drawn = draw_samples(model, embedder, &sampling, settings.samples, progress, &format!("{stage}/samples"), checkpoints, Ranks::alone())?;
            &drawn
        }
    };
    let (latents, samples, sample_embeds) = (&set.latents, &set.images, &set.embeds);
    let centre = latent_centre(latents);
    let decode_one = |latent: &Tensor| model.decode(latent).squeeze_dim(0);
    let mut prototypes = Vec::new();
    let mut dma_log = Vec::new();
    let mut dma_cost = RunCost::default();
    for &method in &settings.methods {
        let image = match method {
            Method::PixelAverage => pixel_average(samples),
            Method::AvgVae => avg_vae(model, latents),
            Method::D4m => decode_one(&d4m(model, &sampling, &settings.baselines, &centre, seed)?),
            Method::Mgd3 => decode_one(&mgd3(model, &sampling, &settings.baselines, &centre, seed)?),
            Method::Typical => samples.get(most_typical(sample_embeds) as i64),
            Method::Dma => {
                let (image, log, cost) = dma_prototype(model, &sampling, &settings.align, settings.latents, progress, &format!("{stage}/dma"), checkpoints)?;
                (dma_log, dma_cost) = (log, cost);
                image
            }
        };
        if matches!(method, Method::D4m | Method::Mgd3) {
            progress(1);
        }
        prototypes.push((method, image));
    }
    let (samples, sample_embeds) = match shared.is_none() || keeps_shared {
        true => (samples.shallow_clone(), sample_embeds.shallow_clone()),
        false => (samples.narrow(0, 0, 0), sample_embeds.narrow(0, 0, 0)),
    };
    Ok(SeedOutcome { seed, samples, sample_embeds, prototypes, dma_log, dma_cost })
}

/// One method's figures over the seeds.
#[derive(Clone, Debug, Serialize)]
pub struct MethodScores {
    pub method: Method,
    /// Mean pairwise CLIP cosine distance between its prototypes from different seeds (None with one seed).
    pub consistency: Option<f64>,
    /// The same by DreamSim's distance (when a DreamSim model is given).
    pub dreamsim_consistency: Option<f64>,
    /// CLIP cosine distance from each seed's prototype to the mean embedding of all the concept's samples, and
    /// their mean.
    pub representativeness_per_seed: Vec<f64>,
    pub representativeness: f64,
    /// Variance of the Laplacian per seed, their mean, and that mean over the samples' mean.
    pub sharpness_per_seed: Vec<f64>,
    pub sharpness: f64,
    pub sharpness_vs_samples: f64,
    /// Zero-shot class of each seed's prototype (when a classifier is given).
    pub classes: Option<Vec<String>>,
    /// ImageReward of each seed's prototype against the concept's prompt, and their mean (when a reward model is
    /// given; higher is better).
    pub image_reward_per_seed: Option<Vec<f64>>,
    pub image_reward: Option<f64>,
}

/// A concept's figures: each method's, and the samples' own for reference.
#[derive(Clone, Debug, Serialize)]
pub struct ConceptScores {
    pub prompt: String,
    pub methods: Vec<MethodScores>,
    /// Mean sharpness of all samples (every seed's).
    pub samples_sharpness: f64,
    /// The median of the samples' own representativeness: what a random sample scores.
    pub median_sample_representativeness: f64,
    /// How many samples fell in each zero-shot class, most first (when a classifier is given).
    pub sample_classes: Option<Vec<(String, usize)>>,
    /// The samples' mean ImageReward (when a reward model is given): what a typical sample scores.
    pub samples_image_reward: Option<f64>,
}

/// What prototypes are judged with: the metrics' CLIP, a zero-shot classifier with its class names, DreamSim for
/// a second consistency and ImageReward for quality, the last three where given.
#[derive(Clone, Copy)]
pub struct Instruments<'a> {
    pub clip: &'a ClipEmbedder,
    pub zero_shot: Option<(&'a ZeroShot, &'a [&'a str])>,
    pub dreamsim: Option<&'a DreamSim>,
    pub image_reward: Option<&'a ImageReward>,
}

/// Images per ImageReward or DreamSim pass: their ViTs read 224x224 images.
const JUDGE_BATCH: i64 = 16;

impl Instruments<'_> {
    /// Each image's ImageReward for `prompt`, when a reward model is given.
    fn rewards(&self, images: &Tensor, prompt: &str) -> Result<Option<Vec<f64>>> {
        let Some(model) = self.image_reward else { return Ok(None) };
        Ok(Some(Vec::<f64>::try_from(model.score(images, prompt, JUDGE_BATCH)?.to_kind(Kind::Double))?))
    }
}

/// What prototypes are judged against: the concept's samples (every seed's), by their CLIP embeddings, their mean
/// sharpness and (with a classifier) their zero-shot classes.
pub struct Judged<'a> {
    pub instruments: Instruments<'a>,
    pub prompt: String,
    /// The samples' embeddings [N,D].
    pub sample_embeds: Tensor,
    pub samples_sharpness: f64,
}

impl<'a> Judged<'a> {
    /// The figures of `samples` (images [N,C,H,W] in [0,1] and their embeddings [N,D]): the judge, and the concept's
    /// scores without any method yet.
    pub fn samples(instruments: Instruments<'a>, prompt: &str, samples: &Tensor, sample_embeds: &Tensor) -> Result<(Self, ConceptScores)> {
        let samples_sharpness = mean(&laplacian_variance(samples)).unwrap_or(f64::NAN);
        let median_sample_representativeness = median(&distances_to_mean(sample_embeds, sample_embeds)).unwrap_or(f64::NAN);
        let samples_image_reward = instruments.rewards(samples, prompt)?.and_then(|r| mean(&r));
        let judged = Self { instruments, prompt: prompt.to_string(), sample_embeds: sample_embeds.shallow_clone(), samples_sharpness };
        let sample_classes = judged.class_names(samples)?.map(|classes| {
            let mut counts: Vec<(String, usize)> = Vec::new();
            for class in classes {
                match counts.iter_mut().find(|(name, _)| *name == class) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((class, 1)),
                }
            }
            counts.sort_by(|a, b| b.1.cmp(&a.1));
            counts
        });
        let scores = ConceptScores {
            prompt: prompt.to_string(),
            methods: Vec::new(),
            samples_sharpness,
            median_sample_representativeness,
            sample_classes,
            samples_image_reward,
        };
        Ok((judged, scores))
    }

    fn class_names(&self, images: &Tensor) -> Result<Option<Vec<String>>> {
        let Some((classifier, names)) = self.instruments.zero_shot else { return Ok(None) };
        Ok(Some(classifier.classify(images)?.into_iter().map(|c| names[c].to_string()).collect()))
    }

    /// `method`'s figures from its prototypes [R,C,H,W], one per seed.
    pub fn method(&self, method: Method, prototypes: &Tensor) -> Result<MethodScores> {
        let images = prototypes.to_kind(Kind::Float);
        // A repeated image gets its first copy's embedding: within a batch, a GEMM may round rows differently by
        // their position, which would make identical prototypes look (1e-14) inconsistent.
        let first_copy: Vec<i64> = (0..images.size()[0]).map(|i| (0..=i).find(|&j| images.get(j).equal(&images.get(i))).unwrap_or(i)).collect();
        let first_copy = Tensor::from_slice(&first_copy).to_device(images.device());
        let embeds = self.instruments.clip.image_embeds(&images)?.index_select(0, &first_copy);
        let dreamsim_embeds = self.instruments.dreamsim.map(|d| d.embed(&images, JUDGE_BATCH)).transpose()?;
        let representativeness_per_seed = distances_to_mean(&embeds, &self.sample_embeds);
        let sharpness_per_seed = laplacian_variance(&images);
        let sharpness = mean(&sharpness_per_seed).unwrap_or(f64::NAN);
        let image_reward_per_seed = self.instruments.rewards(&images, &self.prompt)?;
        Ok(MethodScores {
            method,
            consistency: consistency(&embeds),
            dreamsim_consistency: dreamsim_embeds.and_then(|e| consistency(&e.index_select(0, &first_copy))),
            representativeness: mean(&representativeness_per_seed).unwrap_or(f64::NAN),
            representativeness_per_seed,
            sharpness_vs_samples: sharpness / self.samples_sharpness,
            sharpness,
            sharpness_per_seed,
            classes: self.class_names(&images)?,
            image_reward: image_reward_per_seed.as_deref().and_then(mean),
            image_reward_per_seed,
        })
    }
}

/// Scores every method of `outcomes` (one per repetition) for `prompt` against the samples they hold (all of them:
/// fresh samples are every repetition's, shared samples the first's), with `instruments`.
pub fn score(instruments: Instruments, prompt: &str, outcomes: &[SeedOutcome]) -> Result<ConceptScores> {
    let samples = Tensor::cat(&outcomes.iter().map(|o| o.samples.shallow_clone()).collect::<Vec<_>>(), 0);
    let sample_embeds = Tensor::cat(&outcomes.iter().map(|o| o.sample_embeds.shallow_clone()).collect::<Vec<_>>(), 0);
    let (judged, mut scores) = Judged::samples(instruments, prompt, &samples, &sample_embeds)?;
    let methods: Vec<Method> = outcomes.first().map(|o| o.prototypes.iter().map(|(m, _)| *m).collect()).unwrap_or_default();
    for (i, &method) in methods.iter().enumerate() {
        let images = Tensor::stack(&outcomes.iter().map(|o| o.prototypes[i].1.shallow_clone()).collect::<Vec<_>>(), 0);
        scores.methods.push(judged.method(method, &images)?);
    }
    Ok(scores)
}
