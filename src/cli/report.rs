//! Writes a run's outputs: images (with the parameters in their text chunks), the final latents, and run.json
//! with everything needed to reproduce the run.
use super::common::ModelArgs;
use anyhow::{Context, Result};
use dma::files::{write_atomic, write_json};
use dma::method::AlignSettings;
use dma::output::images::{grid, png_bytes, square_grid};
use dma::output::OutDir;
use dma::pipelines::mental_average::{SamplingResult, SamplingSettings};
use dma::pipelines::model::sha256_file;
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use dma::weights::write_safetensors;
use serde_json::{json, Value};
use std::path::Path;
use tch::Tensor;

/// Widest grid written, in pixels: K = 1000 at 512 px would otherwise be a 16k-pixel image.
const MAX_GRID_WIDTH: i64 = 4096;
/// Steps shown in trajectory.png.
const TRAJECTORY_COLUMNS: usize = 6;

pub struct RunOutputs<'a> {
    pub command: &'a str,
    pub source: &'a ModelSource,
    pub model: &'a DiffusionModel,
    pub model_args: &'a ModelArgs,
    pub settings: &'a SamplingSettings,
    pub align: Option<&'a AlignSettings>,
    pub init_latents: Option<&'a Path>,
    /// The adapter file the model ran with (`--adapter`).
    pub adapter: Option<&'a Path>,
    pub save_latents: bool,
    pub result: &'a SamplingResult,
    /// Index of the prototype among the final latents (DMA runs only).
    pub prototype: Option<i64>,
    /// Null, or how the run was resumed (`resume::resumption`, with the step it resumed at).
    pub resumed: Value,
    /// Each rank's host, device and times.
    pub ranks: Vec<Value>,
    /// Rank 0's loading, sampling and total wall time (of this process, for a resumed run).
    pub seconds: [f64; 3],
    pub out: OutDir,
}

/// The trajectory figure: one row per recorded latent, its predicted clean image at evenly spaced steps.
fn trajectory_image(model: &DiffusionModel, frames: &[(usize, i64, Tensor)]) -> Option<Tensor> {
    if frames.is_empty() {
        return None;
    }
    let columns = TRAJECTORY_COLUMNS.min(frames.len());
    let picks: Vec<usize> = (0..columns).map(|i| i * (frames.len() - 1) / (columns - 1).max(1)).collect();
    let decoded: Vec<Tensor> = picks.iter().map(|&i| model.decode(&frames[i].2)).collect();
    // Row-major: latent r at step column c.
    let stacked = Tensor::stack(&decoded, 1).flatten(0, 1);
    Some(grid(&stacked, columns as i64, MAX_GRID_WIDTH))
}

/// The model a run used, as run.json records it: where it came from, each weight file's SHA-256, its family and
/// where its h is read.
pub fn model_record(source: &ModelSource, model: &DiffusionModel) -> Result<Value> {
    let hashes = model.info.weight_hashes()?;
    let weight_files: Vec<_> = model.info.weight_files.iter().zip(hashes).map(|(f, sha256)| json!({ "path": f.display().to_string(), "sha256": sha256 })).collect();
    let denoiser = &model.denoiser;
    Ok(json!({
        "source": source.path().display().to_string(),
        "weight_files": weight_files,
        "family": denoiser.family(),
        "conditioning": model.conditioning_name(),
        "hspace": denoiser.hspace_name(),
        "dtype": dma::device::kind_name(model.kind),
        "vae_dtype": dma::device::kind_name(model.vae_kind()),
    }))
}

/// A new subfolder of `out` for the results of `title` (a concept, a model): its slug, made distinct from the
/// folders `taken` already.
pub fn subject_folder(out: &OutDir, title: &str, taken: &[String]) -> Result<String> {
    let mut folder = super::common::slug(title, 60);
    while taken.contains(&folder) {
        folder.push('_');
    }
    std::fs::create_dir_all(out.file(&folder)).with_context(|| format!("cannot create {folder} in the output folder"))?;
    Ok(folder)
}

/// A file a run read (an adapter, latents), with its SHA-256.
pub fn input_record(path: &Path) -> Result<Value> {
    Ok(json!({ "path": path.display().to_string(), "sha256": sha256_file(path)? }))
}

/// The tEXt chunks every image carries: the software, the prompt, the model, and the run's parameters.
pub fn png_text(prompt: &str, source: &ModelSource, parameters: &Value) -> Vec<(&'static str, String)> {
    vec![
        ("Software", format!("dma {}", env!("CARGO_PKG_VERSION"))),
        ("prompt", prompt.to_string()),
        ("model", source.path().display().to_string()),
        ("parameters", parameters.to_string()),
    ]
}

/// Writes every image of `images` [N,C,H,W] as its own PNG into the folder `dir` of `out` (`0000.png`, ...; wider
/// numbers past 10,000 so names sort), each carrying `text`, the seed and its index; returns the folder's name as
/// run.json lists it.
pub fn write_samples(out: &OutDir, dir: &str, images: &Tensor, text: &[(&'static str, String)], seed: u64) -> Result<String> {
    std::fs::create_dir_all(out.file(dir)).with_context(|| format!("cannot create {dir} in the output folder"))?;
    let count = images.size()[0];
    let width = (count.max(1) - 1).to_string().len().max(4);
    for i in 0..count {
        let mut chunks = text.to_vec();
        chunks.extend([("seed", seed.to_string()), ("index", i.to_string())]);
        write_atomic(&out.file(&format!("{dir}/{i:0width$}.png")), &png_bytes(&images.get(i), &chunks)?)?;
    }
    Ok(format!("{dir}/"))
}

pub fn write_outputs(o: RunOutputs) -> Result<()> {
    let adapter = o.adapter.map(input_record).transpose()?;
    let parameters = json!({ "sampling": o.settings, "alignment": o.align, "adapter": adapter });
    let text = png_text(&o.settings.prompt, o.source, &parameters);
    let images = o.model.decode_batched(&o.result.latents, o.settings.batch);
    let mut written = vec!["grid.png".to_string()];
    write_atomic(&o.out.file("grid.png"), &png_bytes(&square_grid(&images, MAX_GRID_WIDTH), &text)?)?;
    match o.prototype {
        Some(index) => {
            write_atomic(&o.out.file("prototype.png"), &png_bytes(&images.get(index), &text)?)?;
            written.push("prototype.png".into());
        }
        // Plain samples are each worth a look (or a label, or another tool's input); DMA's K converge to one.
        None => written.push(write_samples(&o.out, "samples", &images, &text, o.settings.seed)?),
    }
    if let Some(figure) = trajectory_image(o.model, &o.result.trajectory) {
        write_atomic(&o.out.file("trajectory.png"), &png_bytes(&figure, &text)?)?;
        written.push("trajectory.png".into());
    }
    if o.save_latents {
        write_safetensors(&o.out.file("latents.safetensors"), &[("latents", &o.result.latents)])?;
        written.push("latents.safetensors".into());
    }
    let record = json!({
        "command": o.command,
        "dma_version": env!("CARGO_PKG_VERSION"),
        "argv": std::env::args().collect::<Vec<_>>(),
        "model": model_record(o.source, o.model)?,
        "adapter": adapter,
        "device": o.model_args.device,
        "dtype": o.model_args.dtype,
        "latents": o.result.run_latents,
        "final_latents": o.result.latents.size()[0],
        // With its hash: the file may change or go after the run (a resumed run did not read it again).
        "init_latents": o.init_latents.map(|p| input_record(p).unwrap_or_else(|_| json!({ "path": p.display().to_string(), "sha256": null }))),
        "sampling": o.settings,
        "alignment": o.align,
        "prototype_index": o.prototype,
        "resumed": o.resumed,
        // Each rank's host, device and time (one entry for a run of one process).
        "ranks": o.ranks,
        "timings_seconds": { "load": o.seconds[0], "sampling": o.seconds[1], "total": o.seconds[2] },
        "steps": o.result.log,
        "passes": o.result.passes,
        "outputs": written,
    });
    write_json(&o.out.file("run.json"), &record)?;
    let folder = o.out.finish()?;
    eprintln!("wrote {}", folder.display());
    Ok(())
}
