//! A diffusers Stable Diffusion folder (`StableDiffusionPipeline`): tokenizer, CLIP text encoder, UNet, VAE (absent
//! for a pixel-space model such as the embedded one), DDIM scheduler config; and SDXL's (`StableDiffusionXLPipeline`),
//! which has a second tokenizer and text encoder.
use super::{component, load_component, load_vae};
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::denoiser::{Denoiser, Network};
use crate::models::tokenizer::Tokenizer;
use crate::models::unet::config::TIME_IDS;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::nn::Linear;
use crate::pipelines::sdxl::SdxlTextEncoders;
use crate::weights::WeightPath;
use crate::pipelines::model::{Conditioner, DiffusionModel, ModelInfo};
use crate::schedulers::ddim::DdimConfig;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

const PIPELINE: &str = "Stable Diffusion";

pub fn load_folder(dir: &Path, index: Option<&serde_json::Value>, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let (tokenizer, text_encoder, text_files) = load_text_encoder(dir, ("tokenizer", "text_encoder"), PIPELINE, device, kind, |p, cfg| ClipTextModel::load(p, cfg))?;
    let unet_dir = component(dir, "unet", PIPELINE)?;
    let unet_config = UNetConfig::from_file(&unet_dir.join("config.json"))?;
    anyhow::ensure!(
        unet_config.text_time.is_none(),
        "{}: the UNet takes SDXL's added conditioning, but the folder is not an SDXL pipeline (no text_encoder_2)",
        unet_dir.display()
    );
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

/// A tokenizer and its text encoder, from the folder's `names` (e.g. `tokenizer_2`, `text_encoder_2`), the encoder
/// built by `build`; the tokenizer's length must fit the encoder's positions.
fn load_text_encoder<M>(
    dir: &Path,
    (tokenizer_name, encoder_name): (&str, &str),
    pipeline: &str,
    device: Device,
    kind: Kind,
    build: impl FnOnce(&WeightPath, &ClipTextConfig) -> Result<M>,
) -> Result<(Tokenizer, M, Vec<PathBuf>)> {
    let tokenizer = Tokenizer::from_folder(&component(dir, tokenizer_name, pipeline)?)?;
    let text_dir = component(dir, encoder_name, pipeline)?;
    let text_config = ClipTextConfig::from_file(&text_dir.join("config.json"))?;
    // Refused here rather than at the first prompt, where the text encoder would run out of positions.
    let (length, positions) = (tokenizer.max_length(), text_config.max_position_embeddings);
    anyhow::ensure!(
        length as i64 <= positions,
        "{}: prompts are padded to {length} tokens, but the text encoder has only {positions} positions \
         (max_position_embeddings in {})",
        dir.join(tokenizer_name).display(),
        text_dir.join("config.json").display()
    );
    let (encoder, files) = load_component(&text_dir, "model", device, kind, |p| build(p, &text_config))?;
    Ok((tokenizer, encoder, files))
}

/// A diffusers SDXL folder (`StableDiffusionXLPipeline`): two tokenizers and text encoders (the second with its
/// projection), a UNet with the `text_time` added conditioning, the VAE, the scheduler config. The refiner (no
/// first text encoder; aesthetic-score conditioning) and inpainting UNets are refused by name.
pub fn load_sdxl_folder(dir: &Path, index: Option<&serde_json::Value>, device: Device, kind: Kind) -> Result<DiffusionModel> {
    const SDXL: &str = "SDXL";
    let flag = |name: &str| index.and_then(|i| i.get(name)).and_then(|v| v.as_bool());
    anyhow::ensure!(
        flag("requires_aesthetics_score") != Some(true) && dir.join("text_encoder").is_dir(),
        "{}: an SDXL refiner (aesthetic-score conditioning, no first text encoder) is not supported: give the base model",
        dir.display()
    );
    let (tokenizer, text_encoder, files_1) = load_text_encoder(dir, ("tokenizer", "text_encoder"), SDXL, device, kind, |p, cfg| ClipTextModel::load(p, cfg))?;
    let (tokenizer_2, (text_encoder_2, text_projection), files_2) =
        load_text_encoder(dir, ("tokenizer_2", "text_encoder_2"), SDXL, device, kind, |p, cfg| {
            let encoder = ClipTextModel::load(p, cfg)?;
            let projection = Linear::load(&p.sub("text_projection"), cfg.hidden_size, cfg.projection_dim, false)?;
            Ok((encoder, projection))
        })?;
    let unet_dir = component(dir, "unet", SDXL)?;
    let unet_config = UNetConfig::from_file(&unet_dir.join("config.json"))?;
    anyhow::ensure!(unet_config.in_channels == 4, "{}: a UNet of {} input channels (an inpainting model?) is not supported", unet_dir.display(), unet_config.in_channels);
    let encoders = SdxlTextEncoders {
        tokenizer,
        text_encoder,
        tokenizer_2,
        text_encoder_2,
        text_projection,
        force_zeros_for_empty_prompt: force_zeros_for_empty_prompt(index),
    };
    check_sdxl_widths(&unet_config, &encoders, &unet_dir)?;
    let (unet, unet_files) = load_component(&unet_dir, "diffusion_pytorch_model", device, kind, |p| UNet2DConditionModel::load(p, &unet_config))?;
    let (vae, vae_files) = load_vae(dir, index, SDXL, device, kind)?;
    let scheduler = DdimConfig::from_file(&component(dir, "scheduler", SDXL)?.join("scheduler_config.json"))?;
    Ok(DiffusionModel {
        conditioner: Conditioner::Sdxl(Box::new(encoders)),
        denoiser: Denoiser::new(Network::UNet(unet)),
        vae,
        scheduler,
        info: ModelInfo::new(dir.display().to_string(), [files_1, files_2, unet_files, vae_files].concat()),
        device,
        kind,
    })
}

/// The SDXL pipeline's `force_zeros_for_empty_prompt` from model_index.json: diffusers' default for the pipeline's
/// config (true, SDXL base's setting) where it is not given.
pub(super) fn force_zeros_for_empty_prompt(index: Option<&serde_json::Value>) -> bool {
    index.and_then(|i| i.get("force_zeros_for_empty_prompt")).and_then(|v| v.as_bool()).unwrap_or(true)
}

/// An SDXL UNet reads both encoders' states side by side, and the second's pooled projection beside the six size
/// numbers' sinusoids: the widths must add up (`place` names what was loaded).
pub(super) fn check_sdxl_widths(unet_config: &UNetConfig, encoders: &SdxlTextEncoders, place: &Path) -> Result<()> {
    let text_time = unet_config.text_time.with_context(|| format!("{}: an SDXL UNet needs addition_embed_type \"text_time\"", place.display()))?;
    let widths = (encoders.text_encoder.hidden_size(), encoders.text_encoder_2.hidden_size(), encoders.text_projection.out_features());
    anyhow::ensure!(
        unet_config.cross_attention_dim == widths.0 + widths.1 && text_time.input_dim == widths.2 + TIME_IDS * text_time.time_embed_dim,
        "{}: the UNet reads text of width {} and an added input of {}, but the text encoders give {} + {} and a pooled {}",
        place.display(),
        unet_config.cross_attention_dim,
        text_time.input_dim,
        widths.0,
        widths.1,
        widths.2
    );
    Ok(())
}
