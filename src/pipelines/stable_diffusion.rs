//! A Stable Diffusion model as the method sees it: prompt -> text context, UNet, scheduler config, latents -> image.
//! It composes the parts and holds no sampling logic.
use super::source::{component_weight_files, ModelSource};
use crate::files::read_json;
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::tokenizer::Tokenizer;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::schedulers::ddim::DdimConfig;
use crate::weights::{WeightPath, Weights};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub struct StableDiffusion {
    pub tokenizer: Tokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    /// None for a model that diffuses in pixel space (the embedded model): its decoder is the identity.
    pub vae: Option<AutoencoderKL>,
    pub scheduler: DdimConfig,
    pub info: ModelInfo,
    pub device: Device,
    pub kind: Kind,
}

/// What a run records about the model it used.
#[derive(Serialize, Clone, Debug)]
pub struct ModelInfo {
    pub source: String,
    pub weight_files: Vec<PathBuf>,
    /// The weight files' SHA-256, once asked for (`weight_hashes`): an SD checkpoint's take seconds to read.
    #[serde(skip)]
    hashes: std::sync::OnceLock<Vec<String>>,
}

impl ModelInfo {
    pub fn new(source: String, weight_files: Vec<PathBuf>) -> Self {
        Self { source, weight_files, hashes: std::sync::OnceLock::new() }
    }

    /// Each weight file's SHA-256, in `weight_files`' order (read once).
    pub fn weight_hashes(&self) -> Result<&[String]> {
        if let Some(hashes) = self.hashes.get() {
            return Ok(hashes);
        }
        let hashes = self.weight_files.iter().map(|f| sha256_file(f)).collect::<Result<Vec<_>>>()?;
        Ok(self.hashes.get_or_init(|| hashes))
    }
}

/// One component folder's weights, loaded and checked against the model built from them.
fn load_component<M>(dir: &Path, stem: &str, device: Device, kind: Kind, build: impl FnOnce(&WeightPath) -> Result<M>) -> Result<(M, Vec<PathBuf>)> {
    let files = component_weight_files(dir, stem)?;
    let model = Weights::from_files(&files, device, kind)?.build(build)?;
    Ok((model, files))
}

impl StableDiffusion {
    pub fn load(source: &ModelSource, device: Device, kind: Kind) -> Result<Self> {
        match source {
            ModelSource::Folder(dir) => Self::load_folder(dir, device, kind),
            ModelSource::SingleFile(file) => super::single_file::load(file, device, kind),
        }
    }

    /// Loads a diffusers folder; every component is required, except the VAE of a pixel-space model.
    pub fn load_folder(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let component = |name: &str| {
            let path = dir.join(name);
            anyhow::ensure!(path.is_dir(), "{}: the model has no `{name}` folder (is this a diffusers Stable Diffusion folder?)", dir.display());
            Ok(path)
        };
        let tokenizer = Tokenizer::from_folder(&component("tokenizer")?)?;
        let text_dir = component("text_encoder")?;
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
        let (text_encoder, text_files) =
            load_component(&text_dir, "model", device, kind, |p| ClipTextModel::load(p, &text_config))?;
        let unet_dir = component("unet")?;
        let unet_config = UNetConfig::from_file(&unet_dir.join("config.json"))?;
        let (unet, unet_files) = load_component(&unet_dir, "diffusion_pytorch_model", device, kind, |p| {
            UNet2DConditionModel::load(p, &unet_config)
        })?;
        let (vae, vae_files) = if has_vae(dir)? {
            let vae_dir = component("vae")?;
            let vae_config = VaeConfig::from_file(&vae_dir.join("config.json"))?;
            let (vae, files) = load_component(&vae_dir, "diffusion_pytorch_model", device, kind, |p| {
                AutoencoderKL::load(p, &vae_config)
            })?;
            (Some(vae), files)
        } else {
            (None, Vec::new())
        };
        let scheduler = DdimConfig::from_file(&component("scheduler")?.join("scheduler_config.json"))?;
        let weight_files = [text_files, unet_files, vae_files].concat();
        let info = ModelInfo::new(dir.display().to_string(), weight_files);
        Ok(Self { tokenizer, text_encoder, unet, vae, scheduler, info, device, kind })
    }

    /// The text encoder's last hidden state for `prompt`, [1, L, D].
    pub fn encode_prompt(&self, prompt: &str) -> Result<Tensor> {
        let ids = self.tokenizer.encode(prompt)?;
        let ids = Tensor::from_slice(&ids).unsqueeze(0).to_device(self.device);
        Ok(tch::no_grad(|| self.text_encoder.forward(&ids)))
    }

    /// The two text contexts classifier-free guidance needs: the prompt's and the empty prompt's.
    pub fn guidance_contexts(&self, prompt: &str) -> Result<(Tensor, Tensor)> {
        Ok((self.encode_prompt(prompt)?, self.encode_prompt("")?))
    }

    /// Teaches the tokenizer a new token and the text encoder its embedding `row` [D] (Textual Inversion). The row
    /// is used as given, so one that requires gradients is trained through the text encoder.
    pub fn add_token(&mut self, token: &str, row: &Tensor) -> Result<i64> {
        let (tokens, rows) = (self.tokenizer.vocab_size() as i64, self.text_encoder.vocab_size());
        anyhow::ensure!(tokens == rows, "the tokenizer has {tokens} ids but the text encoder {rows} embeddings; cannot add a token to both");
        let width = self.text_encoder.hidden_size();
        anyhow::ensure!(row.size() == [width], "the embedding for `{token}` has shape {:?}; this model's text encoder needs [{width}]", row.size());
        let id = self.tokenizer.add_new_token(token)?;
        self.text_encoder.add_token_embedding(&row.to_device(self.device))?;
        Ok(id)
    }

    /// The dtype latents are kept and optimised in: f32 even when the model runs in half precision (Adam's small
    /// steps would vanish in f16 rounding), f64 when the model does (for checks).
    pub fn latent_kind(&self) -> Kind {
        if self.kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        }
    }

    /// The latent shape [C, H, W] for images of the model's native size.
    pub fn latent_shape(&self) -> [i64; 3] {
        let size = self.unet.config.sample_size.unwrap_or(64);
        [self.unet.config.in_channels, size, size]
    }

    /// The shape [C, H, W] of the images `decode` gives for latents of `latent_shape()`.
    pub fn image_shape(&self) -> [i64; 3] {
        let [c, h, w] = self.latent_shape();
        match &self.vae {
            Some(vae) => [vae.image_channels, h * vae.scale, w * vae.scale],
            None => [c, h, w],
        }
    }

    /// Latents [B,C,H,W] to images in [0,1], [B,C',H',W'], in f32 on the CPU. A pixel-space model's latents are
    /// images in [-1,1].
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let latents = latents.to_device(self.device).to_kind(self.kind);
        let images = match &self.vae {
            Some(vae) => tch::no_grad(|| vae.images_from_latents(&latents)),
            None => (latents / 2.0 + 0.5).clamp(0.0, 1.0),
        };
        images.to_kind(Kind::Float).to_device(Device::Cpu)
    }

    /// As `decode`, `batch` latents at a time, to bound the VAE's memory on many latents.
    pub fn decode_batched(&self, latents: &Tensor, batch: i64) -> Tensor {
        Tensor::cat(&latents.split(batch.max(1), 0).iter().map(|l| self.decode(l)).collect::<Vec<_>>(), 0)
    }
}

/// Whether a diffusers folder has a VAE: model_index.json lists one with a null entry for pixel-space models;
/// without model_index.json, a VAE is required.
fn has_vae(dir: &Path) -> Result<bool> {
    let index = dir.join("model_index.json");
    if !index.is_file() {
        return Ok(true);
    }
    let json: serde_json::Value = read_json(&index)?;
    Ok(json.get("vae").is_some_and(|v| v.as_array().is_some_and(|a| a.iter().any(|x| !x.is_null()))))
}

/// A model file's SHA-256, so a run names exactly which weights it used.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}
