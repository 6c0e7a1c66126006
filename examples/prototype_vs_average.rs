//! The mental average beside the pixel average: for each prompt, DMA's prototype (the model's run defaults,
//! seed 0) next to the pixel average of N plain samples of the same prompt and the first of those samples, with
//! the sharpness (variance of the Laplacian) of each and the zero-shot class of the prototype (embedded model).
//! Writes one figure, a row per prompt: prototype | pixel average | six samples, each enlarged to 128 pixels.
//! Run: `cargo run --release --example prototype_vs_average -- [SAMPLES] [FIGURE.png] ["PROMPT;PROMPT;..."]`
//! (defaults: 100, none, five prompts of the embedded model).
use dma::distributed::Ranks;
use dma::data::class_names;
use dma::evaluation::sharpness::laplacian_variance;
use dma::evaluation::zero_shot::ZeroShot;
use dma::loaders::run_defaults;
use dma::method::HBranch;
use dma::output::images::{enlarge_to, grid, png_bytes};
use dma::pipelines::mental_average::{prototype_index, run, seeded_latents};
use dma::loaders::ModelSource;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const SHOWN_SAMPLES: i64 = 6;
const ENLARGED_SIDE: i64 = 128;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num_samples: i64 = args.get(1).map_or(Ok(100), |s| s.parse())?;
    let figure_path = args.get(2).map(PathBuf::from);
    let prompts: Vec<String> = args
        .get(3)
        .map_or("a sneaker;an ankle boot;a dress;the digit three;footwear", |s| s.as_str())
        .split(';')
        .map(String::from)
        .collect();
    let model_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded"));
    let source = ModelSource::Folder(model_dir.clone());
    let defaults = run_defaults(&source)?;
    let model = dma::loaders::load(&source, Device::Cpu, Kind::Float)?;
    let classifier = ZeroShot::embedded(&model_dir.join("clip"), Device::Cpu)?;
    let names = class_names();
    let align = defaults.align(HBranch::Cond);
    println!("embedded model, its defaults ({defaults:?}); {num_samples} samples per prompt (seed 1), DMA from seed 0");
    println!("| prompt | prototype's zero-shot class | sharpness: prototype | samples (mean) | pixel average |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for prompt in &prompts {
        let dma_settings = defaults.sampling(prompt, 0);
        let mut result = run(&model, &dma_settings, &seeded_latents(&model, defaults.latents, 0), Some(&align), 0, &|_| {})?;
        let index = prototype_index(&model, &dma_settings, &align, &mut result, Ranks::alone())?;
        let prototype = model.decode(&result.latents.narrow(0, index, 1));

        let sample_settings = defaults.sampling(prompt, 1);
        let samples = model.decode(&run(&model, &sample_settings, &seeded_latents(&model, num_samples, 1), None, 0, &|_| {})?.latents);
        let average = samples.mean_dim(0, true, Kind::Float);

        let sample_sharpness = laplacian_variance(&samples);
        let mean_sample_sharpness = sample_sharpness.iter().sum::<f64>() / sample_sharpness.len() as f64;
        let class = classifier.classify(&prototype)?[0];
        println!(
            "| {prompt} | {} | {:.4} | {:.4} | {:.4} |",
            names[class],
            laplacian_variance(&prototype)[0],
            mean_sample_sharpness,
            laplacian_variance(&average)[0]
        );
        rows.extend([prototype, average, samples.narrow(0, 0, SHOWN_SAMPLES.min(num_samples))]);
    }
    if let Some(path) = figure_path {
        let enlarged = enlarge_to(&Tensor::cat(&rows, 0), ENLARGED_SIDE);
        let figure = grid(&enlarged, 2 + SHOWN_SAMPLES.min(num_samples), 4096);
        let text = [("Software", "dma prototype_vs_average".to_string()), ("Prompts", prompts.join("; "))];
        dma::files::write_atomic(&path, &png_bytes(&figure, &text)?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
