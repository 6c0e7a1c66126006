//! The cost-quality frontier (`dma sweep`): DMA under several settings on the same concepts and seeds, each
//! setting's prototypes scored as `dma eval` scores them and its cost counted in network passes. Every setting of a
//! concept is judged against the same samples (drawn once per seed), so settings differ only by their own effect.
//! The work is independent items (a seed's samples, a setting's DMA run from a seed) that ranks can share, then
//! assembled. No files, no UI.
use crate::checkpoint::Checkpoints;
use super::evaluation::{dma_prototype, draw_samples, ConceptScores, Instruments, Judged, Method, MethodScores, RunCost};
use super::mental_average::{alignment_work, work_until, SamplingSettings};
use crate::distributed::{Parcel, Ranks};
use super::DiffusionModel;
use crate::evaluation::clip_embedder::ClipEmbedder;
use crate::method::AlignSettings;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use tch::{Device, Tensor};

/// One setting of the sweep: its name (the swept values, e.g. `latents=64 iters=300`) and what it resolves to.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SweepPoint {
    pub label: String,
    /// The swept keys and values, in the order of the sweep's axes.
    pub values: Vec<(String, String)>,
    pub latents: i64,
    pub align: AlignSettings,
}

/// One setting's results on one concept: DMA's scores over the seeds, each seed's prototype and cost.
pub struct PointResult {
    pub scores: MethodScores,
    /// (seed, prototype image [C,H,W], cost of its run).
    pub runs: Vec<(u64, Tensor, RunCost)>,
}

/// One concept's results: the samples' own figures (`Judged::samples`) and one result per setting.
pub struct ConceptSweep {
    pub prompt: String,
    pub samples: ConceptScores,
    pub points: Vec<PointResult>,
}

/// One independent piece of a sweep, whole on one rank (`distributed::items`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SweepItem {
    /// Concept `concept`'s samples from `seed`: what every setting of the concept is judged against.
    Samples { concept: usize, seed: u64 },
    /// DMA under setting `point` on concept `concept` from `seed`.
    Dma { point: usize, concept: usize, seed: u64 },
}

impl SweepItem {
    /// Every item of a sweep: the samples of each concept and seed, then DMA setting by setting (so a long sweep
    /// finishes its cheap settings on every concept first, when they come first), concept by concept, seed by seed.
    pub fn all(concepts: usize, points: usize, seeds: &[u64]) -> Vec<SweepItem> {
        let samples = (0..concepts).flat_map(|concept| seeds.iter().map(move |&seed| SweepItem::Samples { concept, seed }));
        let dma = (0..points).flat_map(|point| (0..concepts).flat_map(move |concept| seeds.iter().map(move |&seed| SweepItem::Dma { point, concept, seed })));
        samples.chain(dma).collect()
    }

    /// The item's checkpoint stage: `concept-<i>/seed-<s>` (its sampling is `<stage>/samples`) or
    /// `concept-<i>/point-<j>/seed-<s>`.
    pub fn stage(&self) -> String {
        match *self {
            SweepItem::Samples { concept, seed } => format!("concept-{concept}/seed-{seed}"),
            SweepItem::Dma { point, concept, seed } => format!("concept-{concept}/point-{point}/seed-{seed}"),
        }
    }

    /// Its progress units (sampling steps, or Adam iterations at most and sampling steps).
    pub fn work(&self, sampling: &SamplingSettings, points: &[SweepPoint], samples: i64) -> u64 {
        match *self {
            SweepItem::Samples { .. } => work_until(None, sampling, samples, sampling.steps),
            SweepItem::Dma { point, .. } => alignment_work(&points[point].align, sampling, points[point].latents),
        }
    }

    /// Computes the item of a sweep of `prompts` under `points`, drawing `samples` samples per seed: the samples'
    /// images and embeddings, or DMA's prototype image and cost, as a parcel.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        &self,
        model: &DiffusionModel,
        embedder: &ClipEmbedder,
        (prompts, sampling): (&[String], &SamplingSettings),
        (points, samples): (&[SweepPoint], i64),
        progress: &dyn Fn(u64),
        checkpoints: &mut dyn Checkpoints,
    ) -> Result<Parcel> {
        let stage = self.stage();
        Ok(match *self {
            SweepItem::Samples { concept, seed } => {
                let sampling = SamplingSettings { prompt: prompts[concept].clone(), seed, ..sampling.clone() };
                let set = draw_samples(model, embedder, &sampling, samples, progress, &format!("{stage}/samples"), checkpoints, Ranks::alone())?;
                Parcel::new(json!(null)).with("images", &set.images).with("embeds", &set.embeds)
            }
            SweepItem::Dma { point, concept, seed } => {
                let sampling = SamplingSettings { prompt: prompts[concept].clone(), seed, ..sampling.clone() };
                let point = &points[point];
                let (image, _, cost) = dma_prototype(model, &sampling, &point.align, point.latents, progress, &stage, checkpoints)?;
                Parcel::new(serde_json::to_value(cost)?).with("image", &image)
            }
        })
    }
}

/// The sweep's results from its items' outcomes (`SweepItem::all`'s order): per concept, the samples of every
/// seed judged once (their figures are kept, not the images), then each setting's prototypes scored against them
/// with `instruments`.
pub fn assemble(
    instruments: Instruments,
    (prompts, points, seeds): (&[String], &[SweepPoint], &[u64]),
    items: &[SweepItem],
    outcomes: &[Parcel],
    device: Device,
) -> Result<Vec<ConceptSweep>> {
    let outcome = |wanted: SweepItem| -> Result<&Parcel> {
        let at = items.iter().position(|&item| item == wanted).with_context(|| format!("the sweep has no item {wanted:?}"))?;
        Ok(&outcomes[at])
    };
    let mut concepts = Vec::new();
    for (concept, prompt) in prompts.iter().enumerate() {
        let sets = seeds.iter().map(|&seed| outcome(SweepItem::Samples { concept, seed })).collect::<Result<Vec<_>>>()?;
        let images = Tensor::cat(&sets.iter().map(|s| s.tensor("images", device)).collect::<Result<Vec<_>>>()?, 0);
        let embeds = Tensor::cat(&sets.iter().map(|s| s.tensor("embeds", device)).collect::<Result<Vec<_>>>()?, 0);
        let (judge, scores) = Judged::samples(instruments, prompt, &images, &embeds)?;
        let mut results = Vec::new();
        for point in 0..points.len() {
            let mut runs = Vec::new();
            for &seed in seeds {
                let parcel = outcome(SweepItem::Dma { point, concept, seed })?;
                runs.push((seed, parcel.tensor("image", device)?, serde_json::from_value::<RunCost>(parcel.record.clone())?));
            }
            let prototypes = Tensor::stack(&runs.iter().map(|(_, image, _)| image.shallow_clone()).collect::<Vec<_>>(), 0);
            results.push(PointResult { scores: judge.method(Method::Dma, &prototypes)?, runs });
        }
        concepts.push(ConceptSweep { prompt: prompt.clone(), samples: scores, points: results });
    }
    Ok(concepts)
}
