//! A whole guided DDIM run against diffusers' StableDiffusionPipeline, through the loader a user's folder goes
//! through: 10 steps, CFG 7, the same initial latents.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::pipelines::mental_average::{run, SamplingSettings};
use dma::pipelines::{ModelSource, StableDiffusion};
use tch::{Device, Kind};

fn check_pipeline(name: &str) {
    let refs = references(name);
    let json = reference_json(name);
    let source = ModelSource::resolve(fixture(name).to_str().unwrap()).unwrap();
    let model = StableDiffusion::load(&source, Device::Cpu, Kind::Float).unwrap();
    let settings = SamplingSettings {
        prompt: json["prompt"].as_str().unwrap().to_string(),
        steps: json["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: json["guidance_scale"].as_f64().unwrap(),
        seed: 0,
        batch: 1,
        use_clipped_model_output: false,
    };
    let result = run(&model, &settings, &refs["pipeline_init_latents"], None, 0, &|_| {}).unwrap();
    let latent_diff = max_abs_diff(&result.latents, &refs["pipeline_final_latents"]);
    let image_diff = max_abs_diff(&model.decode(&result.latents), &refs["pipeline_image"]);
    println!("{name}: max |latents - diffusers| {latent_diff:.2e}, max |image - diffusers| {image_diff:.2e}");
    assert!(latent_diff < 1e-4, "{name}: final latents differ from diffusers by {latent_diff}");
    assert!(image_diff < 1e-4, "{name}: decoded image differs from diffusers by {image_diff}");
}

#[test]
fn sd1_pipeline_matches_diffusers() {
    check_pipeline("tiny-sd1");
}

#[test]
fn sd2_pipeline_matches_diffusers() {
    check_pipeline("tiny-sd2");
}
