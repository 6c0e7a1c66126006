//! The UNet's spatial transformer: diffusers' Transformer2DModel over a feature map, and its blocks.
use crate::models::attention::{Activation, Attention, FeedForward};
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::weights::WeightPath;
use anyhow::Result;
use tch::Tensor;

/// Self-attention, cross-attention to the text, feed-forward; each pre-normed and residual.
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(p: &WeightPath, dim: i64, context_dim: i64, heads: i64) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(&p.sub("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&p.sub("attn1"), dim, dim, heads, false)?,
            norm2: LayerNorm::load(&p.sub("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&p.sub("attn2"), dim, context_dim, heads, false)?,
            norm3: LayerNorm::load(&p.sub("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&p.sub("ff"), dim, Activation::Geglu)?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + &x;
        self.ff.forward(&self.norm3.forward(&x)) + &x
    }
}

/// Projection in and out of token form: 1x1 convs in SD 1.x, linear layers in SD 2.x (`use_linear_projection`).
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn load(p: &WeightPath, in_dim: i64, out_dim: i64, linear: bool) -> Result<Self> {
        Ok(if linear { Self::Linear(Linear::load(p, in_dim, out_dim, true)?) } else { Self::Conv(Conv2d::load(p, in_dim, out_dim, 1, 1, 0)?) })
    }
}

/// The spatial transformer: group norm, project the feature map to tokens, transformer blocks, project back,
/// add the input.
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModel {
    pub fn load(p: &WeightPath, channels: i64, context_dim: i64, heads: i64, layers: i64, groups: i64, linear: bool) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::load(&p.sub("norm"), groups, channels, 1e-6)?,
            proj_in: Projection::load(&p.sub("proj_in"), channels, channels, linear)?,
            transformer_blocks: (0..layers)
                .map(|i| BasicTransformerBlock::load(&p.sub("transformer_blocks").sub(i), channels, context_dim, heads))
                .collect::<Result<_>>()?,
            proj_out: Projection::load(&p.sub("proj_out"), channels, channels, linear)?,
        })
    }

    /// Every attention layer of the blocks with its path below this module (`transformer_blocks.0.attn1`, ...).
    pub fn attentions_mut(&mut self) -> Vec<(String, &mut Attention)> {
        let mut out = Vec::new();
        for (i, block) in self.transformer_blocks.iter_mut().enumerate() {
            out.push((format!("transformer_blocks.{i}.attn1"), &mut block.attn1));
            out.push((format!("transformer_blocks.{i}.attn2"), &mut block.attn2));
        }
        out
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap();
        let to_tokens = |t: Tensor| t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        let to_map = |t: Tensor| t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)),
            Projection::Linear(linear) => linear.forward(&to_tokens(normed)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context);
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(tokens).contiguous()),
            Projection::Linear(linear) => to_map(linear.forward(&tokens)),
        };
        out + x
    }
}
