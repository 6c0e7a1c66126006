//! Issue "Multimodal concepts" measured on the embedded model, whose broad words have known modes: for
//! "footwear" (sandal, sneaker, ankle boot), the clusters `dma modes` finds at the model's defaults and each
//! one's purity by the embedded CLIP's zero-shot classes, with and without grounding (`--by`); then the whole
//! chain (one adapter per cluster, DMA per cluster): each mode's prototype's class, the prototype without
//! clustering, each adapter's held-out noise-prediction loss against the base prompt, and the wall time.
//! Run: `cargo run --release --example modes_quality -- [SAMPLES] [ti|lora|class-embedding|none] [SEEDS]
//! [PCA_DIMS|-] [ADAPTER_STEPS|-] [silhouette|bic] [MODEL]` (defaults: the model's sample count, ti, 0, the model's
//! PCA width and adapter steps, silhouette, models/embedded; `models/embedded/dit` measures the embedded DiT, with
//! lora or class-embedding). SEEDS is one seed or a range such as 0-7; several seeds end with a summary table.
use clap::ValueEnum;
use dma::adapters::AdapterKind;
use dma::clustering::{ClusterCount, Criterion};
use dma::data::captions::{broad_concepts, BroadConcept};
use dma::data::class_names;
use dma::evaluation::zero_shot::ZeroShot;
use dma::loaders::run_defaults;
use dma::method::HBranch;
use dma::pipelines::defaults::RunDefaults;
use dma::checkpoint::NoCheckpoints;
use dma::distributed::Ranks;
use dma::pipelines::mental_average::{seeded_mental_average, SamplingSettings};
use dma::pipelines::modes::{cluster_images, discover, prototypes_per_mode, ChainSettings, Describer, Describers, DiscoverySettings, Grounding, Modes};
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind};

/// What one seed gave: clusters and their smallest purity, by image and grounded, and, after the chain, how many
/// mode prototypes are of their cluster's class.
struct SeedResult {
    seed: u64,
    clusters: usize,
    least_purity: f64,
    grounded_clusters: usize,
    grounded_least_purity: f64,
    prototypes_matching: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let embedded = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded"));
    let model_dir = args.get(7).map_or(embedded.clone(), PathBuf::from);
    let source = ModelSource::Folder(model_dir.clone());
    let defaults = run_defaults(&source)?;
    let samples: i64 = args.get(1).map_or(Ok(defaults.mode_samples), |s| s.parse())?;
    let kind = match args.get(2).map_or("ti", String::as_str) {
        "none" => None,
        other => Some(AdapterKind::from_str(other, true).map_err(|e| anyhow::anyhow!("adapter kind {other:?}: {e} (or none)"))?),
    };
    let seeds: Vec<u64> = match args.get(3).map(|s| s.split_once('-')) {
        None => vec![0],
        Some(Some((first, last))) => (first.parse()?..=last.parse()?).collect(),
        Some(None) => vec![args[3].parse()?],
    };
    let pca_dims: usize = args.get(4).filter(|s| *s != "-").map_or(Ok(defaults.pca_dims), |s| s.parse())?;
    let adapter_steps: Option<usize> = args.get(5).filter(|s| *s != "-").map(|s| s.parse()).transpose()?;
    let criterion = args.get(6).map_or(Ok(Criterion::Silhouette), |s| Criterion::from_str(s, true).map_err(anyhow::Error::msg))?;
    let mut model = dma::loaders::load(&source, Device::Cpu, Kind::Float)?;
    let classifier = ZeroShot::embedded(&embedded.join("clip"), Device::Cpu)?;
    let concept = broad_concepts().iter().find(|c| c.name == "footwear").expect("the embedded captions have footwear");
    println!("{}, \"{}\", {samples} samples, PCA {pca_dims} dims, clusters auto by {criterion:?}", model_dir.display(), concept.name);

    let mut results = Vec::new();
    for &seed in &seeds {
        let sampling = defaults.sampling(concept.name, seed);
        let plain = DiscoverySettings { samples, clusters: ClusterCount::Auto { max: 8 }, criterion, pca_dims, grounding: None };
        let started = Instant::now();
        let modes = discover(&model, &sampling, Describers { clip: &classifier.embedder, vqa: None }, &plain, &|_| {}, &mut NoCheckpoints, Ranks::alone())?;
        let c = &modes.clustering;
        println!("\nseed {seed}, by image embedding: {} clusters (BIC {:?}, silhouette {:?}), {:.0} s", c.k, c.bic, c.silhouette, started.elapsed().as_secs_f64());
        let (majority, least_purity) = majority_classes(&classifier, concept, &modes)?;

        let values: Vec<String> = concept.classes.iter().map(|&c| class_names()[c].to_string()).collect();
        let grounded = DiscoverySettings { grounding: Some(Grounding { attribute: "kind".into(), values, describer: Describer::Clip }), ..plain.clone() };
        let clustering = cluster_images(Describers { clip: &classifier.embedder, vqa: None }, &modes.images, &grounded, seed)?;
        let grounded_modes = Modes { noise: modes.noise.shallow_clone(), latents: modes.latents.shallow_clone(), images: modes.images.shallow_clone(), clustering };
        let c = &grounded_modes.clustering;
        println!("\nseed {seed}, grounded, --by \"kind: sandal, sneaker, ankle boot\": {} clusters (BIC {:?}, silhouette {:?})", c.k, c.bic, c.silhouette);
        let (_, grounded_least_purity) = majority_classes(&classifier, concept, &grounded_modes)?;

        let mut result = SeedResult { seed, clusters: modes.clustering.k, least_purity, grounded_clusters: c.k, grounded_least_purity, prototypes_matching: None };
        if let Some(kind) = kind {
            result.prototypes_matching = Some(chain(&mut model, &classifier, &defaults, &modes, &majority, &sampling, kind, adapter_steps)?);
        }
        results.push(result);
    }
    if results.len() > 1 {
        println!("\n| seed | clusters | least pure | grounded clusters | least pure | mode prototypes of their cluster's class |\n|---|---|---|---|---|---|");
        for r in &results {
            let matching = r.prototypes_matching.map_or("-".to_string(), |n| format!("{n} of {}", r.clusters));
            println!("| {} | {} | {:.0}% | {} | {:.0}% | {matching} |", r.seed, r.clusters, 100.0 * r.least_purity, r.grounded_clusters, 100.0 * r.grounded_least_purity);
        }
    }
    Ok(())
}

/// Prints each cluster's zero-shot classes; each cluster's majority class and the smallest cluster purity.
fn majority_classes(classifier: &ZeroShot, concept: &BroadConcept, modes: &Modes) -> anyhow::Result<(Vec<usize>, f64)> {
    let names = class_names();
    let classes = classifier.classify(&modes.images)?;
    let mut majority = Vec::new();
    let mut least_purity = 1.0f64;
    println!("| cluster | size | {} | other | purity |\n|---|---|---|---|---|", concept.classes.iter().map(|&c| names[c]).collect::<Vec<_>>().join(" | "));
    for k in 0..modes.clustering.k {
        let members = modes.members(k);
        let count = |c: usize| members.iter().filter(|&&i| classes[i as usize] == c).count();
        let counts: Vec<usize> = concept.classes.iter().map(|&c| count(c)).collect();
        let (best, top) = counts.iter().enumerate().max_by_key(|(_, &n)| n).map(|(i, &n)| (concept.classes[i], n)).unwrap();
        let other = members.len() - counts.iter().sum::<usize>();
        let cells = counts.iter().map(usize::to_string).collect::<Vec<_>>().join(" | ");
        let purity = top as f64 / members.len() as f64;
        println!("| {k} | {} | {cells} | {other} | {:.0}% {} |", members.len(), 100.0 * purity, names[best]);
        majority.push(best);
        least_purity = least_purity.min(purity);
    }
    Ok((majority, least_purity))
}

/// The whole chain on one seed's modes; prints each mode's prototype class and held-out losses, and returns how
/// many prototypes are of their cluster's majority class.
#[allow(clippy::too_many_arguments)]
fn chain(
    model: &mut DiffusionModel,
    classifier: &ZeroShot,
    defaults: &RunDefaults,
    modes: &Modes,
    majority: &[usize],
    sampling: &SamplingSettings,
    kind: AdapterKind,
    adapter_steps: Option<usize>,
) -> anyhow::Result<usize> {
    let names = class_names();
    let align = defaults.align(HBranch::Cond);
    let mut adapter = defaults.adapter(kind, sampling.seed);
    adapter.steps = adapter_steps.unwrap_or(adapter.steps);
    let chain = ChainSettings { adapter, lora_guidance: defaults.lora_guidance, latents: defaults.latents, held_out_every: 5, loss_draws: 32 };
    println!("\nthe chain with {kind:?} adapters ({:?})", chain.adapter);
    let started = Instant::now();
    let (overall, index) = seeded_mental_average(model, sampling, &align, defaults.latents, &|_| {}, ("overall-average", &mut NoCheckpoints), Ranks::alone())?;
    let class = classifier.classify(&model.decode(&overall.latents.narrow(0, index, 1)))?[0];
    println!("prototype without clustering: {}", names[class]);
    let per_mode = prototypes_per_mode(model, modes, sampling, &align, &chain, &|_, _| {}, &|_| {}, &mut NoCheckpoints)?;
    println!("| cluster | majority class | prototype's class | held-out loss: base prompt | with adapter |\n|---|---|---|---|---|");
    let mut matching = 0;
    for mode in &per_mode {
        let class = classifier.classify(&model.decode(&mode.result.latents.narrow(0, mode.prototype, 1)))?[0];
        let (base, adapted) = mode.held_out.as_ref().map_or((f64::NAN, f64::NAN), |h| (h.base, h.adapted));
        println!("| {} | {} | {} | {base:.4} | {adapted:.4} |", mode.cluster, names[majority[mode.cluster]], names[class]);
        matching += usize::from(class == majority[mode.cluster]);
    }
    println!("chain after discovery (overall prototype, {} adapters, {} mode prototypes): {:.0} s", per_mode.len(), per_mode.len(), started.elapsed().as_secs_f64());
    Ok(matching)
}
