//! Building a `DiffusionModel` from disk: where a model comes from (`source`: a folder, a Hugging Face repo id in
//! the local cache, a single file), one module per family for diffusers folders, and the run defaults a folder
//! recommends (`run_defaults`).
pub mod dit;
pub mod single_file;
pub mod source;
pub mod stable_diffusion;

use crate::files::read_json;
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::pipelines::defaults::{RunDefaults, DIT_GUIDANCE, FILE as DEFAULTS_FILE};
use crate::pipelines::model::DiffusionModel;
use crate::weights::{WeightPath, Weights};
use anyhow::{bail, Result};
use crate::hub::component_weight_files;
pub use source::ModelSource;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

pub fn load(source: &ModelSource, device: Device, kind: Kind) -> Result<DiffusionModel> {
    match source {
        ModelSource::Folder(dir) => load_folder(dir, device, kind),
        ModelSource::SingleFile(file) => single_file::load(file, device, kind),
    }
}

/// A diffusers folder, by the pipeline model_index.json names (or, without one, by its components: a DiT has a
/// `transformer` folder).
pub fn load_folder(dir: &Path, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let index = model_index(dir)?;
    let pipeline = pipeline_class(index.as_ref());
    if is_dit(dir, index.as_ref()) {
        return dit::load_folder(dir, index.as_ref(), device, kind);
    }
    match pipeline {
        "StableDiffusionXLPipeline" => return stable_diffusion::load_sdxl_folder(dir, index.as_ref(), device, kind),
        "" if dir.join("text_encoder_2").is_dir() => return stable_diffusion::load_sdxl_folder(dir, index.as_ref(), device, kind),
        p if p.starts_with("StableDiffusionXL") => bail!("{}: {pipeline} is not supported (the SDXL refiner and inpainting pipelines are not; give an SDXL base folder, StableDiffusionXLPipeline)", dir.display()),
        _ => {}
    }
    stable_diffusion::load_folder(dir, index.as_ref(), device, kind)
}

/// The run defaults a model recommends: its folder's dma_defaults.json over the paper's; a DiT folder without the
/// file samples with DiTPipeline's guidance, 4.
pub fn run_defaults(source: &ModelSource) -> Result<RunDefaults> {
    match source {
        ModelSource::Folder(dir) if dir.join(DEFAULTS_FILE).is_file() => read_json(&dir.join(DEFAULTS_FILE)),
        ModelSource::Folder(dir) if is_dit_folder(dir)? => Ok(RunDefaults { guidance: DIT_GUIDANCE, ..RunDefaults::default() }),
        _ => Ok(RunDefaults::default()),
    }
}

/// Whether the folder `dir` holds a DiT pipeline.
pub fn is_dit_folder(dir: &Path) -> Result<bool> {
    Ok(is_dit(dir, model_index(dir)?.as_ref()))
}

fn is_dit(dir: &Path, index: Option<&serde_json::Value>) -> bool {
    match pipeline_class(index) {
        "" => dir.join("transformer").is_dir(),
        class => class == "DiTPipeline",
    }
}

/// The pipeline class model_index.json names ("" without one).
fn pipeline_class(index: Option<&serde_json::Value>) -> &str {
    index.and_then(|i| i.get("_class_name")).and_then(|c| c.as_str()).unwrap_or("")
}

/// model_index.json, where the folder has one.
fn model_index(dir: &Path) -> Result<Option<serde_json::Value>> {
    let path = dir.join("model_index.json");
    if path.is_file() {
        Ok(Some(read_json(&path)?))
    } else {
        Ok(None)
    }
}

/// A component folder of `dir` (`unet`, `vae`, ...), which must exist.
fn component(dir: &Path, name: &str, pipeline: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    anyhow::ensure!(path.is_dir(), "{}: the model has no `{name}` folder (is this a diffusers {pipeline} folder?)", dir.display());
    Ok(path)
}

/// One component folder's weights, loaded and checked against the model built from them.
fn load_component<M>(dir: &Path, stem: &str, device: Device, kind: Kind, build: impl FnOnce(&WeightPath) -> Result<M>) -> Result<(M, Vec<PathBuf>)> {
    let files = component_weight_files(dir, stem)?;
    let model = Weights::from_files(&files, device, kind)?.build(build)?;
    Ok((model, files))
}

/// The VAE of a folder that has one (model_index.json lists a pixel-space model's VAE as null; without
/// model_index.json a VAE is required), and its weight files.
fn load_vae(dir: &Path, index: Option<&serde_json::Value>, pipeline: &str, device: Device, kind: Kind) -> Result<(Option<AutoencoderKL>, Vec<PathBuf>)> {
    let listed = index.is_none_or(|json| json.get("vae").is_some_and(|v| v.as_array().is_some_and(|a| a.iter().any(|x| !x.is_null()))));
    if !listed {
        return Ok((None, Vec::new()));
    }
    let vae_dir = component(dir, "vae", pipeline)?;
    let vae_config = VaeConfig::from_file(&vae_dir.join("config.json"))?;
    let (vae, files) = load_component(&vae_dir, "diffusion_pytorch_model", device, kind, |p| AutoencoderKL::load(p, &vae_config))?;
    Ok((Some(vae), files))
}
