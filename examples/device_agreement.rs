//! A GPU against the CPU on the committed fixtures: each model (SD 1.x, 2.x, XL, DiT, and the judges BLIP-VQA,
//! ImageReward and DreamSim) loaded on both in f32, each part run on the same inputs, the largest difference relative to the CPU result's largest magnitude. Exits non-zero when a part
//! differs by more than its tolerance. `bench/gpu.sh` runs it; on the CPU (`--device cpu`) every difference is 0.
//!
//! Run: `target/release/examples/device_agreement [cuda|cuda:N|cpu]`
//!
//! Tolerances: cuDNN may run convolutions in TF32 (10-bit significand, about 5e-4 relative per product), as PyTorch
//! does by default, and a GPU's reductions add in another order: one pass through a network may differ by about
//! 1e-3 of its output's size, so 1e-2 leaves room; a DMA run (4 guided steps, 2 of them aligned by 5 Adam
//! iterations each) feeds each step's result to the next, 5e-2.
use dma::device::parse_device;
use dma::models::denoiser::Condition;
use dma::method::hspace::distance_to;
use dma::method::{alignment::loss_and_gradient, AlignSettings, HBranch};
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::pipelines::DiffusionModel;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const PASS: f64 = 1e-2;
const RUN: f64 = 5e-2;

/// max |a - b| / max |b|, on the CPU.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_device(Device::Cpu).to_kind(Kind::Double), b.to_device(Device::Cpu).to_kind(Kind::Double));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
}

fn main() -> anyhow::Result<()> {
    let device = parse_device(std::env::args().nth(1).as_deref().unwrap_or("cuda"))?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = [
        ("tiny-sd1", root.join("tests/fixtures/tiny-sd1"), "a photo of a dog"),
        ("tiny-sd2", root.join("tests/fixtures/tiny-sd2"), "a photo of a dog"),
        ("embedded", dma::pipelines::embedded::embedded_model_dir()?, "a sneaker"),
        ("tiny-dit", root.join("tests/fixtures/tiny-dit"), "class 3"),
        ("tiny-sdxl", root.join("tests/fixtures/tiny-sdxl"), "a photo of a dog"),
    ];
    println!("| model | part | max difference / max magnitude | tolerance | agrees |");
    println!("|---|---|---|---|---|");
    let mut failed = 0;
    for (name, dir, prompt) in &models {
        let cpu = dma::loaders::load_folder(dir, Device::Cpu, Kind::Float)?;
        let gpu = dma::loaders::load_folder(dir, device, Kind::Float)?;
        let mut report = |part: &str, difference: f64, tolerance: f64| {
            let agrees = difference <= tolerance;
            failed += usize::from(!agrees);
            println!("| {name} | {part} | {difference:.3e} | {tolerance:.0e} | {} |", if agrees { "yes" } else { "NO" });
        };
        let (context_cpu, context_gpu) = (cpu.condition(prompt)?, gpu.condition(prompt)?);
        // A class-conditional model's condition is a class id: nothing to compare.
        match (&context_cpu, &context_gpu) {
            (Condition::Text(text_cpu), Condition::Text(text_gpu)) => report("text encoder", relative(text_gpu, text_cpu), PASS),
            (Condition::TextTime { states: s_cpu, pooled: p_cpu, .. }, Condition::TextTime { states: s_gpu, pooled: p_gpu, .. }) => {
                report("text encoders", relative(s_gpu, s_cpu), PASS);
                report("pooled projection", relative(p_gpu, p_cpu), PASS);
            }
            _ => {}
        }
        let x = seeded_latents(&cpu, 2, 0);
        let t = Tensor::from(500i64);
        let network = |m: &DiffusionModel, context: &Condition| tch::no_grad(|| m.denoiser.predict(&x.to_device(m.device), &t.to_device(m.device), &context.repeat(2)).noise);
        report(&format!("{} output", cpu.denoiser.family()), relative(&network(&gpu, &context_gpu), &network(&cpu, &context_cpu)), PASS);
        let gradient = |m: &DiffusionModel, context: &Condition| {
            let hspace = m.hspace(context.shallow_clone(), 2);
            let x = x.to_device(m.device);
            // A target apart from both latents' h, so each has a gradient.
            let h = hspace.h_all(&x, 500);
            let target = h.mean_dim(0, true, h.kind()) + 0.1;
            let (_, grad) = loss_and_gradient(&hspace, &x, &target, 500);
            (distance_to(&h, &target), grad)
        };
        let ((loss_gpu, grad_gpu), (loss_cpu, grad_cpu)) = (gradient(&gpu, &context_gpu), gradient(&cpu, &context_cpu));
        report("alignment loss", relative(&loss_gpu, &loss_cpu), PASS);
        report("alignment gradient", relative(&grad_gpu, &grad_cpu), PASS);
        report("decoder", relative(&gpu.decode(&x.to_device(device)), &cpu.decode(&x)), PASS);
        let settings = SamplingSettings { prompt: prompt.to_string(), steps: 4, guidance: 5.0, seed: 0, batch: 4, use_clipped_model_output: false, guidance_interval: None };
        let align = AlignSettings { align_steps: 2, iters: 5, tol: 0.0, ..AlignSettings::paper(HBranch::Cond) };
        let init = seeded_latents(&cpu, 4, 0);
        let dma = |m: &DiffusionModel| run(m, &settings, &init, Some(&align), 0, &|_| {}).map(|r| r.latents);
        report("DMA run (4 steps, 2 aligned)", relative(&dma(&gpu)?, &dma(&cpu)?), RUN);
    }
    // The judges: BLIP-VQA's answer scores, ImageReward's rewards, DreamSim's embeddings, on the fixtures' images.
    let images = dma::weights::read_safetensors(&root.join("tests/fixtures/tiny-blip-vqa/reference.safetensors"))?
        .into_iter()
        .find(|(k, _)| k == "images")
        .map(|(_, t)| t)
        .ok_or_else(|| anyhow::anyhow!("tiny-blip-vqa has no reference images"))?;
    let mut report = |part: &str, difference: f64| {
        let agrees = difference <= PASS;
        failed += usize::from(!agrees);
        println!("| judges | {part} | {difference:.3e} | {PASS:.0e} | {} |", if agrees { "yes" } else { "NO" });
    };
    let values = ["red".to_string(), "blue".to_string(), "black".to_string()];
    let vqa = |d: Device| dma::models::blip::vqa::BlipVqa::load(&root.join("tests/fixtures/tiny-blip-vqa"), d, Kind::Float)?.answer_log_likelihoods(&images, "what color is the shoe?", &values, 2);
    report("BLIP-VQA answer scores", relative(&vqa(device)?, &vqa(Device::Cpu)?));
    let reward = |d: Device| dma::models::blip::image_reward::ImageReward::load(&root.join("tests/fixtures/tiny-image-reward"), d, Kind::Float)?.score(&images, "a red boot", 2);
    report("ImageReward rewards", relative(&reward(device)?, &reward(Device::Cpu)?));
    let dreamsim = |d: Device| dma::models::dreamsim::DreamSim::load(&root.join("tests/fixtures/tiny-dreamsim"), d, Kind::Float)?.embed(&images, 2);
    report("DreamSim embeddings", relative(&dreamsim(device)?, &dreamsim(Device::Cpu)?));
    if failed > 0 {
        anyhow::bail!("{failed} part(s) differ between {device:?} and the CPU by more than their tolerance");
    }
    Ok(())
}
