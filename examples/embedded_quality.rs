//! The embedded model's quality figures (issue "The embedded default"): the embedded CLIP's zero-shot accuracy on
//! the held-out test images of all 20 classes; for each class, how many of N samples at the model's default
//! settings the zero-shot classifier assigns to the prompt's class; and how "footwear" samples split into its three
//! kinds. Writes a grid of samples per class (one row per class) for the README.
//! Run: `cargo run --release --example embedded_quality -- [SAMPLES_PER_CLASS] [GRID.png|-] [GUIDANCE|-] [SEED_BASE]
//! [MODEL] [GUIDANCE_INTERVAL|-]` (defaults 100, none, the model's default guidance, 0, models/embedded, the
//! model's interval; `models/embedded/dit` measures the embedded DiT, whose labels take the same prompts; 0 samples
//! measures the CLIP model only; the interval is FROM,TO or `all`, as `--guidance-interval`). Class c is
//! sampled from seed SEED_BASE + c and "footwear" from SEED_BASE + 1000: settings are chosen on other seeds than
//! the reported figures' (the README's sweep used base 5000).
use dma::data::captions::{broad_concepts, class_captions};
use dma::data::{class_names, data_dir, Dataset, Split, NUM_CLASSES};
use dma::evaluation::zero_shot::ZeroShot;
use dma::loaders::run_defaults;
use dma::output::images::{grid, png_bytes};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::loaders::ModelSource;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let per_class: i64 = args.get(1).map_or(Ok(100), |s| s.parse())?;
    let grid_path = args.get(2).filter(|p| *p != "-").map(PathBuf::from);
    let guidance: Option<f64> = args.get(3).filter(|g| *g != "-").map(|s| s.parse()).transpose()?;
    let seed_base: u64 = args.get(4).map_or(Ok(0), |s| s.parse())?;
    let embedded = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/embedded"));
    let model_dir = args.get(5).map_or(embedded.clone(), PathBuf::from);
    let interval = args.get(6).filter(|i| *i != "-");
    let names = class_names();
    let classifier = ZeroShot::embedded(&embedded.join("clip"), Device::Cpu)?;

    let test = Dataset::load(&data_dir()?, Split::Test)?;
    let images = (test.images() + 1.0) / 2.0;
    let mut correct = vec![0usize; NUM_CLASSES];
    let mut predicted = Vec::new();
    for chunk in images.split(512, 0) {
        predicted.extend(classifier.classify(&chunk)?);
    }
    for (&label, &p) in test.labels().iter().zip(&predicted) {
        correct[label] += (label == p) as usize;
    }
    let counts = test.class_counts();
    let total: usize = correct.iter().sum();
    println!("Zero-shot accuracy of the embedded CLIP on {} held-out test images: {:.1}%", test.num_images(), 100.0 * total as f64 / test.num_images() as f64);
    for c in 0..NUM_CLASSES {
        println!("  {:<10} {:.1}%", names[c], 100.0 * correct[c] as f64 / counts[c] as f64);
    }

    if per_class == 0 {
        return Ok(());
    }
    let source = ModelSource::Folder(model_dir.clone());
    let mut defaults = run_defaults(&source)?;
    defaults.guidance = guidance.unwrap_or(defaults.guidance);
    if let Some(interval) = interval {
        defaults.guidance_interval = if interval == "all" { None } else { Some(interval.parse()?) };
    }
    let model = dma::loaders::load(&source, Device::Cpu, Kind::Float)?;
    let sample = |prompt: &str, seed: u64, n: i64| -> anyhow::Result<Tensor> {
        let settings = SamplingSettings { batch: 50, ..defaults.sampling(prompt, seed) };
        Ok(model.decode(&run(&model, &settings, &seeded_latents(&model, n, seed), None, 0, &|_| {})?.latents))
    };
    println!("\nmodel: {}", model_dir.display());
    println!("\n{per_class} samples per class (prompt = the class's first caption, guidance {} at timesteps {}, {} steps, seeds from {seed_base}): share the zero-shot classifier assigns to the prompt's class", defaults.guidance, defaults.guidance_interval.map_or("all".into(), |i| format!("{}..={}", i.from, i.to)), defaults.steps);
    println!("| class | prompt | agreement |\n|---|---|---|");
    let mut rows = Vec::new();
    for c in 0..NUM_CLASSES {
        let prompt = &class_captions(c)[0];
        let samples = sample(prompt, seed_base + c as u64, per_class)?;
        let agree = classifier.classify(&samples)?.iter().filter(|&&p| p == c).count();
        println!("| {} | {prompt} | {:.0}% |", names[c], 100.0 * agree as f64 / per_class as f64);
        rows.push(samples.narrow(0, 0, per_class.min(10)));
    }
    for concept in broad_concepts().iter().filter(|c| c.name == "footwear") {
        let samples = sample(concept.name, seed_base + 1000, per_class)?;
        let classes = classifier.classify(&samples)?;
        let shares: Vec<String> = concept
            .classes
            .iter()
            .map(|&k| format!("{} {:.0}%", names[k], 100.0 * classes.iter().filter(|&&p| p == k).count() as f64 / per_class as f64))
            .collect();
        let outside = classes.iter().filter(|p| !concept.classes.contains(p)).count();
        println!("\n\"{}\": {} (outside the concept: {:.0}%)", concept.name, shares.join(", "), 100.0 * outside as f64 / per_class as f64);
    }
    if let Some(path) = grid_path {
        let figure = grid(&Tensor::cat(&rows, 0), per_class.min(10), 4096);
        dma::files::write_atomic(&path, &png_bytes(&figure, &[("Software", "dma embedded_quality".into())])?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
