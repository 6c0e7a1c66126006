//! diffusers' UNet2DConditionModel for Stable Diffusion 1.x, 2.x and XL, declared as its lists of blocks. SDXL's
//! adds to the time embedding an embedding of the pooled text and the image's size numbers (`text_time`).
//!
//! h-space, where DMA aligns trajectories, is the output of `mid_block` (or, asked for, of one down block).
//! `encode_h` runs only what h depends on (conv_in, the time embedding, the down blocks, the mid block), so
//! alignment never pays for the up path.
mod blocks;
pub mod config;
mod resnet;
mod transformer;

use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::WeightPath;
use anyhow::Result;
use blocks::{DownBlock, MidBlock, UpBlock};
pub use config::UNetConfig;
use config::TIME_IDS;
use crate::models::embeddings::{timestep_features, TimestepEmbedding};
use tch::Tensor;

pub struct UNet2DConditionModel {
    pub config: UNetConfig,
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    /// SDXL's `add_embedding`, from the pooled text embedding and the size numbers' sinusoids.
    pub add_embedding: Option<TimestepEmbedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// SDXL's added conditioning, per sample: the second text encoder's pooled embedding [B, P] and the six size
/// numbers [B, 6] (`added_cond_kwargs`' `text_embeds` and `time_ids`).
#[derive(Clone, Copy)]
pub struct AddedCondition<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

/// The UNet's outputs: the noise (or v) prediction and h, the mid-block output.
pub struct UNetOutput {
    pub sample: Tensor,
    pub h: Tensor,
}

impl UNet2DConditionModel {
    /// Loads from the checkpoint root (keys such as `down_blocks.0.resnets.0.conv1.weight`).
    pub fn load(p: &WeightPath, config: &UNetConfig) -> Result<Self> {
        let cfg = config;
        let ch = &cfg.block_out_channels;
        let conv_in = Conv2d::load(&p.sub("conv_in"), cfg.in_channels, ch[0], cfg.conv_in_kernel, 1, (cfg.conv_in_kernel - 1) / 2)?;
        let time_embedding = TimestepEmbedding::load(&p.sub("time_embedding"), ch[0], cfg.time_embed_dim())?;
        let add_embedding = cfg.text_time.map(|tt| TimestepEmbedding::load(&p.sub("add_embedding"), tt.input_dim, cfg.time_embed_dim())).transpose()?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut in_ch = ch[0];
        for i in 0..ch.len() {
            down_blocks.push(DownBlock::load(&p.sub("down_blocks").sub(i), cfg, i, in_ch)?);
            in_ch = ch[i];
        }
        let mid_block = MidBlock::load(&p.sub("mid_block"), cfg)?;
        let mut up_blocks = Vec::with_capacity(ch.len());
        let mut prev_ch = ch[ch.len() - 1];
        for i in 0..ch.len() {
            up_blocks.push(UpBlock::load(&p.sub("up_blocks").sub(i), cfg, i, prev_ch)?);
            prev_ch = ch[ch.len() - 1 - i];
        }
        Ok(Self {
            config: cfg.clone(),
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&p.sub("conv_norm_out"), cfg.norm_num_groups, ch[0], cfg.norm_eps)?,
            conv_out: Conv2d::load(&p.sub("conv_out"), ch[0], cfg.out_channels, cfg.conv_out_kernel, 1, (cfg.conv_out_kernel - 1) / 2)?,
        })
    }

    /// Every linear projection of every attention layer (to_q, to_k, to_v, to_out.0 of attn1 and attn2), by
    /// checkpoint path (`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`): where LoRA adapters attach.
    pub fn attention_projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let down = self.down_blocks.iter_mut().enumerate().map(|(i, b)| (format!("down_blocks.{i}"), &mut b.attentions));
        let mid = std::iter::once(("mid_block".to_string(), &mut self.mid_block.attentions));
        let up = self.up_blocks.iter_mut().enumerate().map(|(i, b)| (format!("up_blocks.{i}"), &mut b.attentions));
        let mut out = Vec::new();
        for (block, transformers) in down.chain(mid).chain(up) {
            for (j, transformer) in transformers.iter_mut().enumerate() {
                for (path, attention) in transformer.attentions_mut() {
                    for (name, linear) in attention.projections_mut() {
                        out.push((format!("{block}.attentions.{j}.{path}.{name}"), linear));
                    }
                }
            }
        }
        out
    }

    /// The time embedding for timesteps given as a scalar or one per sample, plus SDXL's added embedding.
    fn embed_time(&self, timesteps: &Tensor, batch: i64, like: &Tensor, added: Option<AddedCondition>) -> Tensor {
        let cfg = &self.config;
        let t = timesteps.to_device(like.device()).expand([batch], false);
        let features = timestep_features(&t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift);
        let temb = self.time_embedding.forward(&features.to_kind(like.kind()));
        match (&self.add_embedding, cfg.text_time, added) {
            (Some(add_embedding), Some(text_time), Some(added)) => {
                let time_ids = added.time_ids.to_device(like.device()).reshape([-1]);
                let sizes = timestep_features(&time_ids, text_time.time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift).reshape([batch, TIME_IDS * text_time.time_embed_dim]);
                let inputs = Tensor::cat(&[added.text_embeds.to_kind(like.kind()), sizes.to_kind(like.kind())], -1);
                temb + add_embedding.forward(&inputs)
            }
            (None, _, None) => temb,
            _ => panic!("an SDXL UNet takes the added conditioning, and only an SDXL UNet does"),
        }
    }

    /// conv_in and the down blocks up to `last` (None: all, then the mid block), keeping the skips the up path
    /// needs; also returns the output of down block `h_block` (None: the mid block's), which is h.
    fn down_path(&self, sample: &Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>, h_block: Option<usize>, last: Option<usize>) -> (Tensor, Tensor) {
        let mut x = self.conv_in.forward(sample);
        skips.push(x.shallow_clone());
        let mut h = None;
        for (i, block) in self.down_blocks.iter().enumerate() {
            x = block.forward(x, temb, context, skips);
            if h_block == Some(i) {
                h = Some(x.shallow_clone());
            }
            if last == Some(i) {
                return (x, h.expect("h is read at or before the last block run"));
            }
        }
        let x = self.mid_block.forward(&x, temb, context);
        let h = h.unwrap_or_else(|| x.shallow_clone());
        (x, h)
    }

    /// The full forward pass: the noise prediction for `sample` [B,C,H,W] at `timesteps` (scalar or [B]) given the
    /// text context [B,L,D] (and, for SDXL, the added conditioning), together with h (the mid block's output, or down block `h_block`'s).
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor, added: Option<AddedCondition>, h_block: Option<usize>) -> UNetOutput {
        let temb = self.embed_time(timesteps, sample.size()[0], sample, added);
        let mut skips = Vec::new();
        let (mut x, h) = self.down_path(sample, &temb, context, &mut skips, h_block, None);
        for block in &self.up_blocks {
            x = block.forward(x, &temb, context, &mut skips);
        }
        let out = self.conv_out.forward(&self.conv_norm_out.forward(&x).silu());
        UNetOutput { sample: out, h }
    }

    /// h alone, without the up path (nor the blocks after down block `h_block`): what the alignment loss needs, at
    /// about half the cost of `forward`.
    pub fn encode_h(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor, added: Option<AddedCondition>, h_block: Option<usize>) -> Tensor {
        let temb = self.embed_time(timesteps, sample.size()[0], sample, added);
        // The skips are dropped at once; with autograd they are freed as soon as nothing refers to them.
        self.down_path(sample, &temb, context, &mut Vec::new(), h_block, h_block).1
    }
}
