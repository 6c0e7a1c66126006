//! The Vision Transformer of timm and DINO (and of BLIP's own `vit.py`, which ImageReward ships): the image cut
//! into patches by a strided convolution, a class token in front, learned positions, pre-norm blocks with one fused
//! q/k/v projection, a final layer norm. Weights by timm's names (`patch_embed.proj`, `cls_token`, `pos_embed`,
//! `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`); other layouts rename theirs to these.
//! CLIP's image towers fit it too, as DreamSim converts them: a layer norm after the positions (CLIP's `ln_pre`,
//! stored as `pos_drop`) and, for OpenAI's, the quick GELU.
use crate::nn::{Conv2d, LayerNorm, Linear};
use crate::weights::WeightPath;
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use tch::Tensor;

/// The head width of the ViTs whose checkpoints store no config.
const HEAD_WIDTH: i64 = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub mlp_width: i64,
    pub patch_size: i64,
    pub image_size: i64,
    pub channels: i64,
    pub layer_norm_eps: f64,
    pub activation: VitActivation,
    /// A layer norm on the tokens before the first block (`pos_drop`: CLIP's `ln_pre`).
    pub pre_norm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VitActivation {
    /// The exact (erf) GELU, nn.GELU's default: timm's, DINO's, BLIP's and OpenCLIP's ViTs.
    Gelu,
    /// x * sigmoid(1.702 x): OpenAI's CLIP.
    QuickGelu,
}

impl VitActivation {
    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::Gelu => x.gelu("none"),
            Self::QuickGelu => x * (x * 1.702).sigmoid(),
        }
    }
}

impl VitConfig {
    pub fn patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }

    /// The sizes of a ViT stored under `prefix` in `tensors` by timm's names, for checkpoints that store no config
    /// (ImageReward's, DreamSim's): width, patch size, channels and image size from the shapes, depth from the
    /// blocks present, heads of 64 (every ViT-B and ViT-L: 768 / 12, 1024 / 16); timm's layer norms (eps 1e-6),
    /// GELU, no norm before the blocks.
    pub fn from_weights(tensors: &HashMap<String, Tensor>, prefix: &str, source: &str) -> Result<Self> {
        let shape = |name: &str| -> Result<Vec<i64>> {
            let key = format!("{prefix}{name}");
            tensors.get(&key).map(Tensor::size).with_context(|| format!("{source} has no ViT weight `{key}`"))
        };
        let (cls, patch, pos, fc1) = (shape("cls_token")?, shape("patch_embed.proj.weight")?, shape("pos_embed")?, shape("blocks.0.mlp.fc1.weight")?);
        ensure!(cls.len() == 3 && patch.len() == 4 && pos.len() == 3 && fc1.len() == 2, "{source}: the ViT's weights have unexpected ranks");
        let (width, patch_size) = (cls[2], patch[2]);
        let grid = ((pos[1] - 1) as f64).sqrt().round() as i64;
        ensure!(grid * grid == pos[1] - 1, "{source}: {} positions are not a square grid plus the class token", pos[1]);
        ensure!(width % HEAD_WIDTH == 0, "{source}: a ViT of width {width} has no whole number of {HEAD_WIDTH}-wide heads");
        let blocks = format!("{prefix}blocks.");
        let depth = tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&blocks)?.split('.').next()?.parse::<i64>().ok())
            .max()
            .map_or(0, |last| last + 1);
        Ok(Self {
            width,
            depth,
            heads: width / HEAD_WIDTH,
            mlp_width: fc1[0],
            patch_size,
            image_size: grid * patch_size,
            channels: patch[1],
            layer_norm_eps: 1e-6,
            activation: VitActivation::Gelu,
            pre_norm: false,
        })
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.width > 0 && self.depth > 0 && self.mlp_width > 0, "a ViT of width {}, depth {}, MLP width {}", self.width, self.depth, self.mlp_width);
        ensure!(self.heads > 0 && self.width % self.heads == 0, "a ViT width of {} cannot be split into {} heads", self.width, self.heads);
        ensure!(
            self.patch_size > 0 && self.image_size >= self.patch_size && self.image_size % self.patch_size == 0,
            "a ViT image size of {} is not a whole number of {}-pixel patches",
            self.image_size,
            self.patch_size
        );
        Ok(())
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
    activation: VitActivation,
}

impl Block {
    fn load(p: &WeightPath, cfg: &VitConfig) -> Result<Self> {
        let (d, eps) = (cfg.width, cfg.layer_norm_eps);
        Ok(Self {
            norm1: LayerNorm::load(&p.sub("norm1"), d, eps)?,
            qkv: Linear::load(&p.sub("attn.qkv"), d, 3 * d, true)?,
            proj: Linear::load(&p.sub("attn.proj"), d, d, true)?,
            norm2: LayerNorm::load(&p.sub("norm2"), d, eps)?,
            fc1: Linear::load(&p.sub("mlp.fc1"), d, cfg.mlp_width, true)?,
            fc2: Linear::load(&p.sub("mlp.fc2"), cfg.mlp_width, d, true)?,
            heads: cfg.heads,
            activation: cfg.activation,
        })
    }

    fn attention(&self, x: &Tensor) -> Tensor {
        let (b, l, d) = x.size3().expect("tokens are [batch, length, width]");
        let qkv = self.qkv.forward(x).view([b, l, 3, self.heads, d / self.heads]).permute([2, 0, 3, 1, 4]);
        let out = Tensor::scaled_dot_product_attention(&qkv.get(0), &qkv.get(1), &qkv.get(2), None::<Tensor>, 0.0, false, None, false);
        self.proj.forward(&out.transpose(1, 2).reshape([b, l, d]))
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attention(&self.norm1.forward(x));
        &x + self.fc2.forward(&self.activation.forward(&self.fc1.forward(&self.norm2.forward(&x))))
    }
}

pub struct VisionTransformer {
    patch_embed: Conv2d,
    cls_token: Tensor,
    pos_embed: Tensor,
    pre_norm: Option<LayerNorm>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    pub config: VitConfig,
}

impl VisionTransformer {
    pub fn load(p: &WeightPath, cfg: &VitConfig) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.width;
        Ok(Self {
            patch_embed: Conv2d::load(&p.sub("patch_embed.proj"), cfg.channels, d, cfg.patch_size, cfg.patch_size, 0)?,
            cls_token: p.get("cls_token", &[1, 1, d])?,
            pos_embed: p.get("pos_embed", &[1, cfg.patches() + 1, d])?,
            pre_norm: cfg.pre_norm.then(|| LayerNorm::load(&p.sub("pos_drop"), d, cfg.layer_norm_eps)).transpose()?,
            blocks: (0..cfg.depth).map(|i| Block::load(&p.sub("blocks").sub(i), cfg)).collect::<Result<_>>()?,
            norm: LayerNorm::load(&p.sub("norm"), d, cfg.layer_norm_eps)?,
            config: cfg.clone(),
        })
    }

    /// Every token's final state [B, 1 + patches, width], the class token first, from pixel values [B, C, S, S].
    pub fn forward(&self, pixels: &Tensor) -> Tensor {
        self.norm.forward(&self.blocks_output(pixels))
    }

    /// Every token as the last block gives it, before the final norm (DINO's features, as DreamSim reads them).
    pub fn blocks_output(&self, pixels: &Tensor) -> Tensor {
        let kind = pixels.kind();
        let patches = self.patch_embed.forward(pixels).flatten(2, 3).transpose(1, 2);
        let cls = self.cls_token.to_kind(kind).expand([patches.size()[0], 1, -1], false);
        let mut x = Tensor::cat(&[cls, patches], 1) + self.pos_embed.to_kind(kind);
        if let Some(norm) = &self.pre_norm {
            x = norm.forward(&x);
        }
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x
    }
}
