//! The cost-quality frontier (`dma sweep`): DMA under several settings on the same concepts and seeds, each
//! setting's prototypes scored as `dma eval` scores them and its cost counted in network passes. Every setting of a
//! concept is judged against the same samples (drawn once per seed), so settings differ only by their own effect.
//! No files, no UI.
use super::checkpoints::Checkpoints;
use super::evaluation::{dma_prototype, draw_samples, score, ConceptScores, Method, MethodScores, RunCost, SampleSet, SeedOutcome};
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

/// One concept's results: the samples' own figures (from `score`, DMA's row removed) and one result per setting.
pub struct ConceptSweep {
    pub prompt: String,
    pub samples: ConceptScores,
    pub points: Vec<PointResult>,
}

/// Progress units of one concept of a sweep (sampling steps and Adam iterations at most), as `sweep_concept`
/// reports them.
pub fn work_per_concept(sampling: &SamplingSettings, points: &[SweepPoint], seeds: usize) -> u64 {
    let per_seed: u64 = sampling.steps as u64 + points.iter().map(|p| alignment_work(&p.align, sampling, p.latents)).sum::<u64>();
    per_seed * seeds as u64
}

/// Sweeps `points` on `prompt`: per seed, `samples` samples (stage `<stage>/seed-<s>/samples`), then per setting j
/// DMA from the seed (stage `<stage>/point-<j>/seed-<s>`); scored with `embedder`, classed by `zero_shot` when
/// given (with the class names).
#[allow(clippy::too_many_arguments)]
pub fn sweep_concept(
    model: &StableDiffusion,
    (embedder, zero_shot): (&ClipEmbedder, Option<(&ZeroShot, &[&str])>),
    prompt: &str,
    sampling: &SamplingSettings,
    (points, seeds, samples): (&[SweepPoint], &[u64], i64),
    progress: &dyn Fn(u64),
    stage: &str,
    checkpoints: &mut dyn Checkpoints,
) -> Result<ConceptSweep> {
    let sampling_of = |seed: u64| SamplingSettings { prompt: prompt.to_string(), seed, ..sampling.clone() };
    let mut sets: Vec<SampleSet> = Vec::new();
    for &seed in seeds {
        sets.push(draw_samples(model, embedder, &sampling_of(seed), samples, progress, &format!("{stage}/seed-{seed}/samples"), checkpoints)?);
    }
    let mut concept_samples = None;
    let mut results = Vec::new();
    for (j, point) in points.iter().enumerate() {
        let mut outcomes = Vec::new();
        let mut runs = Vec::new();
        for (&seed, set) in seeds.iter().zip(&sets) {
            let run_stage = format!("{stage}/point-{j}/seed-{seed}");
            let (image, dma_log, cost) = dma_prototype(model, &sampling_of(seed), &point.align, point.latents, progress, &run_stage, checkpoints)?;
            runs.push((seed, image.shallow_clone(), cost));
            outcomes.push(SeedOutcome {
                seed,
                samples: set.images.shallow_clone(),
                sample_embeds: set.embeds.shallow_clone(),
                prototypes: vec![(Method::Dma, image)],
                dma_log,
                dma_cost: cost,
            });
        }
        let mut scores = score(embedder, zero_shot, prompt, &outcomes)?;
        let dma = scores.methods.remove(0);
        concept_samples.get_or_insert(scores);
        results.push(PointResult { scores: dma, runs });
    }
    let samples = concept_samples.expect("a sweep has at least one setting");
    Ok(ConceptSweep { prompt: prompt.to_string(), samples, points: results })
}
