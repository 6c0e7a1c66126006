//! Issue "Multimodal concepts" measured on the embedded model, whose broad words have known modes: for
//! "footwear" (sandal, sneaker, ankle boot), the clusters `dma modes` finds at the model's defaults and each
//! one's purity by the embedded CLIP's zero-shot classes, with and without grounding (`--by`); then the whole
//! chain (one adapter per cluster, DMA per cluster): each mode's prototype's class, the prototype without
//! clustering, each adapter's held-out noise-prediction loss against the base prompt, and the wall time.
//! Run: `cargo run --release --example modes_quality -- [SAMPLES] [ti|lora|none] [SEED] [PCA_DIMS] [ADAPTER_STEPS]`
//! (defaults: the model's sample count, ti, 0, the model's PCA width and adapter steps).
use dma::adapters::AdapterKind;
use dma::clustering::ClusterCount;
use dma::data::captions::broad_concepts;
use dma::data::class_names;
use dma::evaluation::zero_shot::ZeroShot;
use dma::method::HBranch;
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::mental_average::seeded_mental_average;
use dma::pipelines::modes::{discover, prototypes_per_mode, ChainSettings, DiscoverySettings, Grounding, Modes};
use dma::pipelines::{ModelSource, StableDiffusion};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded"));
    let source = ModelSource::Folder(model_dir.clone());
    let defaults = RunDefaults::for_source(&source)?;
    let samples: i64 = args.get(1).map_or(Ok(defaults.mode_samples), |s| s.parse())?;
    let kind = match args.get(2).map_or("ti", String::as_str) {
        "none" => None,
        "lora" => Some(AdapterKind::Lora),
        "ti" => Some(AdapterKind::Ti),
        other => anyhow::bail!("adapter kind {other:?}: expected ti, lora or none"),
    };
    let seed: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let pca_dims: usize = args.get(4).map_or(Ok(defaults.pca_dims), |s| s.parse())?;
    let adapter_steps: Option<usize> = args.get(5).map(|s| s.parse()).transpose()?;
    let mut model = StableDiffusion::load(&source, Device::Cpu, Kind::Float)?;
    let classifier = ZeroShot::embedded(&model_dir.join("clip"), Device::Cpu)?;
    let names = class_names();
    let concept = broad_concepts().iter().find(|c| c.name == "footwear").expect("the embedded captions have footwear");
    let sampling = defaults.sampling(concept.name, seed);
    println!("embedded model, \"{}\", {samples} samples from seed {seed}, PCA {pca_dims} dims, clusters auto", concept.name);

    let majority_classes = |modes: &Modes| -> anyhow::Result<Vec<usize>> {
        let classes = classifier.classify(&modes.images)?;
        let mut majority = Vec::new();
        println!("| cluster | size | {} | other | purity |\n|---|---|---|---|---|", concept.classes.iter().map(|&c| names[c]).collect::<Vec<_>>().join(" | "));
        for k in 0..modes.clustering.k {
            let members = modes.members(k);
            let count = |c: usize| members.iter().filter(|&&i| classes[i as usize] == c).count();
            let counts: Vec<usize> = concept.classes.iter().map(|&c| count(c)).collect();
            let (best, top) = counts.iter().enumerate().max_by_key(|(_, &n)| n).map(|(i, &n)| (concept.classes[i], n)).unwrap();
            let other = members.len() - counts.iter().sum::<usize>();
            let cells = counts.iter().map(usize::to_string).collect::<Vec<_>>().join(" | ");
            println!("| {k} | {} | {cells} | {other} | {:.0}% {} |", members.len(), 100.0 * top as f64 / members.len() as f64, names[best]);
            majority.push(best);
        }
        Ok(majority)
    };

    let clusters = ClusterCount::Auto { max: 8 };
    let plain = DiscoverySettings { samples, clusters, pca_dims, grounding: None };
    let started = Instant::now();
    let modes = discover(&model, &sampling, &classifier.embedder, &plain, &|_| {})?;
    println!("\nby image embedding: {} clusters (BIC {:?}), {:.0} s", modes.clustering.k, modes.clustering.bic, started.elapsed().as_secs_f64());
    let majority = majority_classes(&modes)?;

    let values: Vec<String> = concept.classes.iter().map(|&c| names[c].to_string()).collect();
    let grounded = DiscoverySettings { grounding: Some(Grounding { attribute: "kind".into(), values }), ..plain.clone() };
    let grounded_modes = discover(&model, &sampling, &classifier.embedder, &grounded, &|_| {})?;
    println!("\ngrounded, --by \"kind: sandal, sneaker, ankle boot\": {} clusters (BIC {:?})", grounded_modes.clustering.k, grounded_modes.clustering.bic);
    majority_classes(&grounded_modes)?;

    let Some(kind) = kind else { return Ok(()) };
    let align = defaults.align(HBranch::Cond);
    let mut adapter = defaults.adapter(kind, seed);
    adapter.steps = adapter_steps.unwrap_or(adapter.steps);
    let chain = ChainSettings { adapter, lora_guidance: defaults.lora_guidance, latents: defaults.latents, held_out_every: 5, loss_draws: 32 };
    println!("\nthe chain with {kind:?} adapters ({:?})", chain.adapter);
    let started = Instant::now();
    let (overall, index) = seeded_mental_average(&model, &sampling, &align, defaults.latents, &|_| {})?;
    let class = classifier.classify(&model.decode(&overall.latents.narrow(0, index, 1)))?[0];
    println!("prototype without clustering: {}", names[class]);
    let per_mode = prototypes_per_mode(&mut model, &modes, &sampling, &align, &chain, &|_, _| {}, &|_| {})?;
    println!("| cluster | majority class | prototype's class | held-out loss: base prompt | with adapter |\n|---|---|---|---|---|");
    for mode in &per_mode {
        let class = classifier.classify(&model.decode(&mode.result.latents.narrow(0, mode.prototype, 1)))?[0];
        let (base, adapted) = mode.held_out.as_ref().map_or((f64::NAN, f64::NAN), |h| (h.base, h.adapted));
        println!("| {} | {} | {} | {base:.4} | {adapted:.4} |", mode.cluster, names[majority[mode.cluster]], names[class]);
    }
    println!("chain after discovery (overall prototype, {} adapters, {} mode prototypes): {:.0} s", per_mode.len(), per_mode.len(), started.elapsed().as_secs_f64());
    Ok(())
}
