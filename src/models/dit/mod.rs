//! diffusers' DiTTransformer2DModel: a class-conditional Diffusion Transformer (Peebles & Xie) over latent patches.
//!
//! h-space, where DMA aligns trajectories, is the tokens after the last transformer block (the paper's choice for
//! DiT; there is no bottleneck), or after an earlier block (`hspace_block`). `encode_h` runs the blocks up to that
//! one and skips the rest and the final layer.
mod block;
pub mod labels;
pub mod config;
mod patches;

use crate::nn::Linear;
use crate::weights::WeightPath;
use anyhow::Result;
use block::{modulated_norm, DiTBlock};
pub use config::DiTConfig;
use patches::{unpatchify, PatchEmbed};
use tch::Tensor;

pub struct DiTTransformer2DModel {
    pub config: DiTConfig,
    pub pos_embed: PatchEmbed,
    pub transformer_blocks: Vec<DiTBlock>,
    /// `proj_out_1`: the conditioning to the final layer norm's shift and scale.
    pub proj_out_1: Linear,
    /// `proj_out_2`: tokens to patches of out_channels.
    pub proj_out_2: Linear,
}

/// The model's outputs: the noise prediction (all out_channels, learned sigma included) and h.
pub struct DiTOutput {
    pub sample: Tensor,
    pub h: Tensor,
}

impl DiTTransformer2DModel {
    pub fn load(p: &WeightPath, config: &DiTConfig) -> Result<Self> {
        let (width, patch) = (config.width(), config.patch_size);
        let blocks = (0..config.layers)
            .map(|i| DiTBlock::load(&p.sub("transformer_blocks").sub(i), width, config.heads, config.classes, config.attention_bias, config.norm_eps))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            pos_embed: PatchEmbed::load(&p.sub("pos_embed"), config.in_channels, width, patch, config.sample_size)?,
            transformer_blocks: blocks,
            proj_out_1: Linear::load(&p.sub("proj_out_1"), width, 2 * width, true)?,
            proj_out_2: Linear::load(&p.sub("proj_out_2"), width, patch * patch * config.out_channels, true)?,
        })
    }

    /// Every linear projection of every attention layer (`transformer_blocks.3.attn1.to_k`): where LoRA attaches.
    pub fn attention_projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, block) in self.transformer_blocks.iter_mut().enumerate() {
            for (name, linear) in block.attn1.projections_mut() {
                out.push((format!("transformer_blocks.{i}.attn1.{name}"), linear));
            }
        }
        out
    }

    /// Each block's label-table row for class `id` (the null class included): copies, free of the table.
    pub fn class_rows(&self, id: i64) -> Vec<Tensor> {
        self.transformer_blocks.iter().map(|b| b.embedding.labels.get(id).detach().copy()).collect()
    }

    /// Adds a class after the null class and the classes added before: `rows` holds its row for each block, used
    /// as given (rows that require gradients are learned). Returns the new class id.
    pub fn add_class(&mut self, rows: &[Tensor]) -> Result<i64> {
        let (blocks, width) = (self.transformer_blocks.len(), self.config.width());
        anyhow::ensure!(rows.len() == blocks, "a class embedding of {} rows does not fit this DiT: it has {blocks} blocks, each with its own label table", rows.len());
        if let Some(row) = rows.iter().find(|r| r.size() != [width]) {
            anyhow::bail!("a class embedding row of shape {:?} does not fit this DiT (width {width})", row.size());
        }
        let device = self.transformer_blocks[0].embedding.labels.device();
        for (block, row) in self.transformer_blocks.iter_mut().zip(rows) {
            block.embedding.added.push(row.to_device(device));
        }
        Ok(self.config.classes + self.transformer_blocks[0].embedding.added.len() as i64)
    }

    /// The index of the block h is read after: `block` if given, else the last.
    pub fn h_block(&self, block: Option<usize>) -> usize {
        block.unwrap_or(self.transformer_blocks.len() - 1)
    }

    /// The tokens after blocks 0..=last, for latents [B,C,H,W] at timesteps (scalar or [B]) and class ids [B].
    fn tokens_through(&self, sample: &Tensor, timesteps: &Tensor, class_labels: &Tensor, last: usize) -> Tensor {
        let b = sample.size()[0];
        let t = timesteps.to_device(sample.device()).expand([b], false);
        let labels = class_labels.to_device(sample.device());
        let mut x = self.pos_embed.forward(sample);
        for block in &self.transformer_blocks[..=last] {
            x = block.forward(&x, &t, &labels);
        }
        x
    }

    /// The full forward pass with h read after block `h_block` (None: the last).
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, class_labels: &Tensor, h_block: Option<usize>) -> DiTOutput {
        let b = sample.size()[0];
        let h_at = self.h_block(h_block);
        let h = self.tokens_through(sample, timesteps, class_labels, h_at);
        let t = timesteps.to_device(sample.device()).expand([b], false);
        let labels = class_labels.to_device(sample.device());
        let mut x = h.shallow_clone();
        for block in &self.transformer_blocks[h_at + 1..] {
            x = block.forward(&x, &t, &labels);
        }
        // The final layer is conditioned by block 0's embedding, as in diffusers.
        let conditioning = self.transformer_blocks[0].embedding.forward(&t, &labels, &x);
        let shift_scale = self.proj_out_1.forward(&conditioning.silu()).chunk(2, 1);
        let x = modulated_norm(&x, &shift_scale[0], &shift_scale[1], 1e-6);
        let sample = unpatchify(&self.proj_out_2.forward(&x), self.config.patch_size, self.config.out_channels);
        DiTOutput { sample, h }
    }

    /// h alone: the blocks up to `h_block` (None: the last), without the final layer.
    pub fn encode_h(&self, sample: &Tensor, timesteps: &Tensor, class_labels: &Tensor, h_block: Option<usize>) -> Tensor {
        self.tokens_through(sample, timesteps, class_labels, self.h_block(h_block))
    }
}
