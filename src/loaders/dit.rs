//! A diffusers DiT folder (`DiTPipeline`): transformer (DiTTransformer2DModel, or Transformer2DModel in older
//! folders), VAE, scheduler config, and model_index.json's `id2label` class names.
use super::{component, load_component, load_vae};
use crate::models::denoiser::{Denoiser, Network};
use crate::models::dit::labels::ClassLabels;
use crate::models::dit::{DiTConfig, DiTTransformer2DModel};
use crate::pipelines::model::{Conditioner, DiffusionModel, ModelInfo};
use crate::schedulers::ddim::DdimConfig;
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Kind};

const PIPELINE: &str = "DiT";

pub fn load_folder(dir: &Path, index: Option<&serde_json::Value>, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let transformer_dir = component(dir, "transformer", PIPELINE)?;
    let config = DiTConfig::from_file(&transformer_dir.join("config.json"))?;
    let (dit, dit_files) = load_component(&transformer_dir, "diffusion_pytorch_model", device, kind, |p| DiTTransformer2DModel::load(p, &config))?;
    let labels = ClassLabels::new(index.and_then(|i| i.get("id2label")), config.classes)
        .with_context(|| format!("{}: cannot read the class names", dir.join("model_index.json").display()))?;
    let (vae, vae_files) = load_vae(dir, index, PIPELINE, device, kind)?;
    let scheduler = DdimConfig::from_file(&component(dir, "scheduler", PIPELINE)?.join("scheduler_config.json"))?;
    Ok(DiffusionModel {
        conditioner: Conditioner::Classes(labels),
        denoiser: Denoiser::new(Network::DiT(dit)),
        vae,
        scheduler,
        info: ModelInfo::new(dir.display().to_string(), [dit_files, vae_files].concat()),
        device,
        kind,
    })
}
