//! A diffusers Stable Diffusion folder (`StableDiffusionPipeline`): tokenizer, CLIP text encoder, UNet, VAE (absent
//! for a pixel-space model such as the embedded one), DDIM scheduler config.
use super::{component, load_component, load_vae};
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::denoiser::{Denoiser, Network};
use crate::models::tokenizer::Tokenizer;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::pipelines::model::{Conditioner, DiffusionModel, ModelInfo};
use crate::schedulers::ddim::DdimConfig;
use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind};

const PIPELINE: &str = "Stable Diffusion";

pub fn load_folder(dir: &Path, index: Option<&serde_json::Value>, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let tokenizer = Tokenizer::from_folder(&component(dir, "tokenizer", PIPELINE)?)?;
    let text_dir = component(dir, "text_encoder", PIPELINE)?;
    let text_config = ClipTextConfig::from_file(&text_dir.join("config.json"))?;
    // Refused here rather than at the first prompt, where the text encoder would run out of positions.
    let (length, positions) = (tokenizer.max_length(), text_config.max_position_embeddings);
    anyhow::ensure!(
        length as i64 <= positions,
        "{}: prompts are padded to {length} tokens, but the text encoder has only {positions} positions \
         (max_position_embeddings in {})",
        dir.join("tokenizer").display(),
        text_dir.join("config.json").display()
    );
    let (text_encoder, text_files) = load_component(&text_dir, "model", device, kind, |p| ClipTextModel::load(p, &text_config))?;
    let unet_dir = component(dir, "unet", PIPELINE)?;
    let unet_config = UNetConfig::from_file(&unet_dir.join("config.json"))?;
    let (unet, unet_files) = load_component(&unet_dir, "diffusion_pytorch_model", device, kind, |p| UNet2DConditionModel::load(p, &unet_config))?;
    let (vae, vae_files) = load_vae(dir, index, PIPELINE, device, kind)?;
    let scheduler = DdimConfig::from_file(&component(dir, "scheduler", PIPELINE)?.join("scheduler_config.json"))?;
    let weight_files = [text_files, unet_files, vae_files].concat();
    Ok(DiffusionModel {
        conditioner: Conditioner::Text { tokenizer, text_encoder },
        denoiser: Denoiser::new(Network::UNet(unet)),
        vae,
        scheduler,
        info: ModelInfo::new(dir.display().to_string(), weight_files),
        device,
        kind,
    })
}
