//! CLIP's image tower as transformers' `CLIPVisionTransformer` (the `vision_model` of a `CLIPModel`): the image cut
//! into patches, a class token in front, the text encoder's transformer layers without the causal mask; the class
//! token's final state, layer-normed, is the image's pooled representation.
use crate::files::read_json_section;
use crate::models::clip_text::{Activation, ClipTextConfig, Encoder};
use crate::nn::{Conv2d, LayerNorm};
use crate::weights::WeightPath;
use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// The `vision_config` of a CLIP model's config.json, or a CLIPVisionModel's config.json; missing fields take
/// transformers' `CLIPVisionConfig` defaults (those of OpenAI's ViT-B/32), unknown ones are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub image_size: i64,
    pub patch_size: i64,
    /// 3 for OpenAI's checkpoints; 1 for the project's own grayscale CLIP.
    pub num_channels: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Reads a vision model's config.json, or the `vision_config` of a full CLIP model's config.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json_section(path, "vision_config", "a CLIP vision config")?;
        cfg.checked_activation()
            .with_context(|| format!("{} describes an unsupported vision model", path.display()))?;
        Ok(cfg)
    }

    /// Checks what the model relies on; gives the activation the config names.
    fn checked_activation(&self) -> Result<Activation> {
        ensure!(
            self.patch_size > 0 && self.image_size >= self.patch_size,
            "image_size {} holds no patch of patch_size {}",
            self.image_size,
            self.patch_size
        );
        ensure!(self.num_channels > 0, "num_channels is {}", self.num_channels);
        self.encoder_config().checked_activation()
    }

    /// The layers are the text encoder's, which take their sizes from a text config: only the transformer's
    /// sizes, activation and epsilon are read from it.
    fn encoder_config(&self) -> ClipTextConfig {
        ClipTextConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act.clone(),
            layer_norm_eps: self.layer_norm_eps,
            ..ClipTextConfig::default()
        }
    }

    /// Patches per side; as in transformers, a remainder of the image that fills no patch is dropped.
    fn grid(&self) -> i64 {
        self.image_size / self.patch_size
    }
}

struct Embeddings {
    /// The learned class token, prepended to the patches; its final state is the pooled output.
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
}

impl Embeddings {
    fn load(p: &WeightPath, cfg: &ClipVisionConfig) -> Result<Self> {
        let (d, patch) = (cfg.hidden_size, cfg.patch_size);
        let positions = cfg.grid() * cfg.grid() + 1;
        // OpenAI's checkpoints on the Hub carry the `position_ids` buffer (0..positions); see the text encoder.
        if p.contains("position_ids") {
            let _ = p.get("position_ids", &[1, positions])?;
        }
        let patch_embedding = Conv2d {
            weight: p.sub("patch_embedding").get("weight", &[d, cfg.num_channels, patch, patch])?,
            bias: None,
            stride: patch,
            padding: 0,
        };
        Ok(Self {
            class_embedding: p.get("class_embedding", &[d])?,
            patch_embedding,
            position_embedding: p.sub("position_embedding").get("weight", &[positions, d])?,
        })
    }

    /// [B, C, S, S] -> [B, 1 + patches, D]: class token then patches in row-major order, plus positions.
    fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let patches = self.patch_embedding.forward(pixel_values).flatten(2, -1).transpose(1, 2);
        let batch = patches.size()[0];
        let class = self.class_embedding.view([1, 1, -1]).expand([batch, 1, -1], false);
        Tensor::cat(&[class, patches], 1) + self.position_embedding.unsqueeze(0)
    }
}

pub struct ClipVisionTransformer {
    embeddings: Embeddings,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    image_size: i64,
    num_channels: i64,
}

impl ClipVisionTransformer {
    /// Loads from the checkpoint root: keys under `vision_model.` as CLIPModel saves them, or without that prefix
    /// (a CLIPVisionModel saved by transformers >= 5.6). Weights take `p`'s device and kind.
    pub fn load(p: &WeightPath, cfg: &ClipVisionConfig) -> Result<Self> {
        let act = cfg.checked_activation()?;
        let p = if p.contains("embeddings.class_embedding") { p.clone() } else { p.sub("vision_model") };
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            embeddings: Embeddings::load(&p.sub("embeddings"), cfg)?,
            pre_layrnorm: LayerNorm::load(&p.sub("pre_layrnorm"), d, eps)?,
            encoder: Encoder::load(&p.sub("encoder"), &cfg.encoder_config(), act)?,
            post_layernorm: LayerNorm::load(&p.sub("post_layernorm"), d, eps)?,
            image_size: cfg.image_size,
            num_channels: cfg.num_channels,
        })
    }

    /// The last hidden state [B, 1 + patches, D] of normalised pixel values [B, num_channels, image_size,
    /// image_size] (any device and float kind; see `ClipImageProcessor`). Panics on another image shape.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let (s, c) = (self.image_size, self.num_channels);
        let size = pixel_values.size();
        assert!(
            size.len() == 4 && size[1..] == [c, s, s],
            "the CLIP vision model takes pixel values [batch, {c}, {s}, {s}], got {size:?}"
        );
        let weight = &self.pre_layrnorm.weight;
        let x = self.embeddings.forward(&pixel_values.to_device(weight.device()).to_kind(weight.kind()));
        self.encoder.forward(&self.pre_layrnorm.forward(&x), false)
    }

    /// The class token's state after the final layer norm [B, D], as transformers' `pooler_output`.
    pub fn pooled(&self, hidden: &Tensor) -> Tensor {
        self.post_layernorm.forward(&hidden.select(1, 0))
    }
}
