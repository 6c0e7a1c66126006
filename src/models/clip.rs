//! transformers' `CLIPModel`: the text and image towers and their projections into one embedding space, where
//! cosine similarity says how well a caption fits an image. Used for image embeddings (clustering), zero-shot
//! classification and metrics. Loads a model folder in transformers' layout (config.json, model.safetensors and
//! optionally preprocessor_config.json), as OpenAI's CLIP checkpoints on the Hub and the project's own small CLIP
//! are saved.
use crate::files::read_json;
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::clip_vision::{ClipVisionConfig, ClipVisionTransformer};
use crate::models::image_processor::ImageProcessor;
use crate::nn::Linear;
use crate::weights::{WeightPath, Weights};
use anyhow::{ensure, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// config.json of a CLIPModel.
#[derive(Debug, Clone)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    /// Width of the shared space both towers project into.
    pub projection_dim: i64,
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default = "default_projection_dim")]
            projection_dim: i64,
            text_config: Option<serde_json::Value>,
            vision_config: Option<serde_json::Value>,
        }
        fn default_projection_dim() -> i64 {
            512
        }
        let top: Top = read_json(path)?;
        // Without these the towers would silently take transformers' defaults (e.g. a lone text encoder's config).
        ensure!(
            top.text_config.is_some_and(|c| c.is_object()) && top.vision_config.is_some_and(|c| c.is_object()),
            "{} is not a CLIPModel config: it needs both text_config and vision_config",
            path.display()
        );
        Ok(Self {
            text_config: ClipTextConfig::from_file(path)?,
            vision_config: ClipVisionConfig::from_file(path)?,
            projection_dim: top.projection_dim,
        })
    }
}

pub struct ClipModel {
    text_model: ClipTextModel,
    vision_model: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    /// Logits are exp(logit_scale) times cosine similarities (the learned inverse temperature, 100 for OpenAI's).
    logit_scale: Tensor,
    processor: ImageProcessor,
}

impl ClipModel {
    /// Loads a CLIPModel folder: config.json, model.safetensors (every weight must be used) and
    /// preprocessor_config.json when present.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
        let file = dir.join("model.safetensors");
        ensure!(
            file.is_file(),
            "{} has no model.safetensors: a CLIP model folder in transformers' layout has config.json and \
             model.safetensors (pytorch_model.bin is not read)",
            dir.display()
        );
        let processor = ImageProcessor::load(dir, cfg.vision_config.image_size, cfg.vision_config.num_channels)?;
        let weights = Weights::from_files(&[file], device, kind)?;
        weights.build(|p| Self::new(p, &cfg, processor))
    }

    /// Builds the model from weights at the checkpoint root (loaded, trainable or initialised).
    pub fn new(p: &WeightPath, cfg: &ClipConfig, processor: ImageProcessor) -> Result<Self> {
        let (text, vision, dim) = (&cfg.text_config, &cfg.vision_config, cfg.projection_dim);
        Ok(Self {
            // Both find their `text_model.` / `vision_model.` prefix themselves.
            text_model: ClipTextModel::load(p, text)?,
            vision_model: ClipVisionTransformer::load(p, vision)?,
            text_projection: Linear::load(&p.sub("text_projection"), text.hidden_size, dim, false)?,
            visual_projection: Linear::load(&p.sub("visual_projection"), vision.hidden_size, dim, false)?,
            logit_scale: p.get("logit_scale", &[])?,
            processor,
        })
    }

    /// Images [B, C, H, W] in [0, 1], any size, 1 or 3 channels, to the pixel values the image tower takes.
    pub fn preprocess(&self, images_0_1: &Tensor) -> Result<Tensor> {
        self.processor.preprocess(images_0_1)
    }

    /// Unit-length image embeddings [B, projection_dim] of pixel values (from `preprocess`).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Tensor {
        let hidden = self.vision_model.forward(pixel_values);
        unit(&self.visual_projection.forward(&self.vision_model.pooled(&hidden)))
    }

    /// Unit-length text embeddings [N, projection_dim] of token ids [N, L] (int64, ending with the end token).
    pub fn text_embeds(&self, ids: &Tensor) -> Tensor {
        let hidden = self.text_model.forward(ids);
        unit(&self.text_projection.forward(&self.text_model.pooled(&hidden, ids)))
    }

    /// exp(logit_scale): the inverse temperature that turns cosine similarities into logits.
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale.exp().double_value(&[])
    }

    /// exp(logit_scale) times the cosine similarity of each image [B] to each text [N]: [B, N].
    pub fn logits_per_image(&self, pixel_values: &Tensor, ids: &Tensor) -> Tensor {
        self.image_embeds(pixel_values).matmul(&self.text_embeds(ids).tr()) * self.logit_scale.exp()
    }

    /// Zero-shot classification: the probability of each class prompt [N] for each image [B], [B, N] (rows sum
    /// to 1).
    pub fn zero_shot(&self, pixel_values: &Tensor, class_prompt_ids: &Tensor) -> Tensor {
        let logits = self.logits_per_image(pixel_values, class_prompt_ids);
        logits.softmax(-1, logits.kind())
    }
}

fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}
