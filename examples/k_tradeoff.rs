//! How many latents K does a mental average need? For each K, DMA runs from R seeds; the figure of merit is how
//! much the prototypes of different seeds differ (consistency: mean absolute pixel difference, 0 = identical),
//! against the run time. Run: `cargo run --release --example k_tradeoff -- [MODEL] [PROMPT] [K,K,...] [R]`
//! (defaults: the embedded model, "a sneaker", 1,2,4,8,16,32,64, 3 seeds; K = 1 is plain sampling); other settings are the model's defaults.
use dma::distributed::Ranks;
use dma::loaders::run_defaults;
use dma::method::HBranch;
use dma::pipelines::mental_average::{prototype_index, run, seeded_latents};
use dma::loaders::ModelSource;
use std::time::Instant;
use tch::{Device, Kind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_spec = args.get(1).cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded").into());
    let prompt = args.get(2).cloned().unwrap_or_else(|| "a sneaker".into());
    let ks: Vec<i64> = args.get(3).map_or("1,2,4,8,16,32,64", |s| s.as_str()).split(',').map(|k| k.parse()).collect::<Result<_, _>>()?;
    let seeds: u64 = args.get(4).map_or(Ok(3), |s| s.parse())?;
    let source = ModelSource::resolve(&model_spec)?;
    let defaults = run_defaults(&source)?;
    let model = dma::loaders::load(&source, Device::Cpu, Kind::Float)?;
    let align = defaults.align(HBranch::Cond);
    println!("model {model_spec}, prompt {prompt:?}, {seeds} seeds per K, {align:?}");
    println!("| K | seconds per run | consistency (mean abs pixel diff between seeds' prototypes) | spread of the K final images |");
    println!("|---|---|---|---|");
    for &k in &ks {
        let mut prototypes = Vec::new();
        let mut spreads = Vec::new();
        let start = Instant::now();
        for seed in 0..seeds {
            let settings = defaults.sampling(&prompt, seed);
            let mut result = run(&model, &settings, &seeded_latents(&model, k, seed), Some(&align), 0, &|_| {})?;
            let images = model.decode(&result.latents);
            spreads.push((&images - images.mean_dim(0, true, Kind::Float)).abs().mean(Kind::Float).double_value(&[]));
            prototypes.push(images.get(prototype_index(&model, &settings, &align, &mut result, Ranks::alone())?));
        }
        let seconds = start.elapsed().as_secs_f64() / seeds as f64;
        let mut pairs = Vec::new();
        for i in 0..prototypes.len() {
            for j in i + 1..prototypes.len() {
                pairs.push((&prototypes[i] - &prototypes[j]).abs().mean(Kind::Float).double_value(&[]));
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!("| {k} | {seconds:.1} | {:.4} | {:.4} |", mean(&pairs), mean(&spreads));
    }
    Ok(())
}
