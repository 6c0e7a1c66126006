//! The cost-quality frontier (`dma sweep`): DMA under several settings on the same concepts and seeds, each
//! setting's prototypes scored as `dma eval` scores them and its cost counted in network passes. Every setting of a
//! concept is judged against the same samples (drawn once per seed), so settings differ only by their own effect.
//! No files, no UI.
use crate::checkpoint::Checkpoints;
use super::evaluation::{dma_prototype, draw_samples, ConceptScores, Judged, Method, MethodScores, RunCost, SampleSet};
use super::mental_average::{alignment_work, SamplingSettings};
use super::StableDiffusion;
use crate::evaluation::clip_embedder::ClipEmbedder;
use crate::evaluation::zero_shot::ZeroShot;
use crate::method::AlignSettings;
use anyhow::Result;
use serde::Serialize;
use tch::Tensor;

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

/// Progress units of a whole sweep (sampling steps and Adam iterations at most), as `sweep` reports them.
pub fn sweep_work(sampling: &SamplingSettings, points: &[SweepPoint], concepts: usize, seeds: usize) -> u64 {
    let per_seed: u64 = sampling.steps as u64 + points.iter().map(|p| alignment_work(&p.align, sampling, p.latents)).sum::<u64>();
    per_seed * (concepts * seeds) as u64
}

/// Told of each setting and concept of a sweep as it starts.
pub type Starting<'s> = &'s dyn Fn(&SweepPoint, &str);

/// Sweeps `points` over `prompts`, setting by setting (so a long sweep finishes its cheap settings on every concept
/// first, when they come first): per concept and seed, `samples` samples (stage `concept-<i>/seed-<s>/samples`),
/// drawn and judged once (their embeddings and figures are kept, not the images), then DMA from the seed (stage
/// `concept-<i>/point-<j>/seed-<s>`). Scored with `embedder`, classed by `zero_shot` when given (with the class
/// names). `progress` is told of each setting and concept as it starts, and of the work done.
#[allow(clippy::too_many_arguments)]
pub fn sweep<'a>(
    model: &StableDiffusion,
    (embedder, zero_shot): (&'a ClipEmbedder, Option<(&'a ZeroShot, &'a [&'a str])>),
    prompts: &[String],
    sampling: &SamplingSettings,
    (points, seeds, samples): (&[SweepPoint], &[u64], i64),
    (starting, progress): (Starting, &dyn Fn(u64)),
    checkpoints: &mut dyn Checkpoints,
) -> Result<Vec<ConceptSweep>> {
    let mut concepts: Vec<ConceptSweep> = Vec::new();
    let mut judges: Vec<Judged<'a>> = Vec::new();
    for (j, point) in points.iter().enumerate() {
        for (i, prompt) in prompts.iter().enumerate() {
            starting(point, prompt);
            let sampling_of = |seed: u64| SamplingSettings { prompt: prompt.clone(), seed, ..sampling.clone() };
            if judges.len() == i {
                let mut sets: Vec<SampleSet> = Vec::new();
                for &seed in seeds {
                    sets.push(draw_samples(model, embedder, &sampling_of(seed), samples, progress, &format!("concept-{i}/seed-{seed}/samples"), checkpoints)?);
                }
                let images = Tensor::cat(&sets.iter().map(|s| s.images.shallow_clone()).collect::<Vec<_>>(), 0);
                let embeds = Tensor::cat(&sets.iter().map(|s| s.embeds.shallow_clone()).collect::<Vec<_>>(), 0);
                let (judge, scores) = Judged::samples(embedder, zero_shot, prompt, &images, &embeds)?;
                judges.push(judge);
                concepts.push(ConceptSweep { prompt: prompt.clone(), samples: scores, points: Vec::new() });
            }
            let mut runs = Vec::new();
            for &seed in seeds {
                let stage = format!("concept-{i}/point-{j}/seed-{seed}");
                let (image, _, cost) = dma_prototype(model, &sampling_of(seed), &point.align, point.latents, progress, &stage, checkpoints)?;
                runs.push((seed, image, cost));
            }
            let prototypes = Tensor::stack(&runs.iter().map(|(_, image, _)| image.shallow_clone()).collect::<Vec<_>>(), 0);
            let scores = judges[i].method(Method::Dma, &prototypes)?;
            concepts[i].points.push(PointResult { scores, runs });
        }
    }
    Ok(concepts)
}
