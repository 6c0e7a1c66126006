//! The UNet's three kinds of stage. Down and up blocks hold resnets, optionally one transformer after each
//! resnet (the CrossAttn variants), and a resampler; a DownBlock2D is a down block with no transformers.
use super::config::{BlockKind, UNetConfig};
use super::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use super::transformer::Transformer2DModel;
use crate::weights::WeightPath;
use anyhow::Result;
use tch::Tensor;

fn load_transformers(p: &WeightPath, cfg: &UNetConfig, kind: BlockKind, count: i64, channels: i64, block: usize) -> Result<Vec<Transformer2DModel>> {
    if kind == BlockKind::Plain {
        return Ok(Vec::new());
    }
    (0..count)
        .map(|i| {
            Transformer2DModel::load(
                &p.sub("attentions").sub(i),
                channels,
                cfg.cross_attention_dim,
                cfg.heads[block],
                cfg.transformer_layers[block],
                cfg.norm_num_groups,
                cfg.use_linear_projection,
            )
        })
        .collect()
}

pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Down block `index` of the config, reading `in_ch` channels.
    pub fn load(p: &WeightPath, cfg: &UNetConfig, index: usize, in_ch: i64) -> Result<Self> {
        let out_ch = cfg.block_out_channels[index];
        let is_last = index + 1 == cfg.block_out_channels.len();
        let resnets = (0..cfg.layers_per_block)
            .map(|i| {
                let resnet_in = if i == 0 { in_ch } else { out_ch };
                ResnetBlock2D::load(&p.sub("resnets").sub(i), resnet_in, out_ch, cfg.time_embed_dim(), cfg.norm_num_groups, cfg.norm_eps)
            })
            .collect::<Result<_>>()?;
        let attentions = load_transformers(p, cfg, cfg.down_blocks[index], cfg.layers_per_block, out_ch, index)?;
        let downsampler = if is_last { None } else { Some(Downsample2D::load(&p.sub("downsamplers.0"), out_ch)?) };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Returns the block's output and pushes every intermediate state the up path will take as a skip.
    pub fn forward(&self, mut x: Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>) -> Tensor {
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, temb);
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context);
            }
            skips.push(x.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x);
            skips.push(x.shallow_clone());
        }
        x
    }
}

/// UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) pairs. Its output is h-space.
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn load(p: &WeightPath, cfg: &UNetConfig) -> Result<Self> {
        let last = cfg.block_out_channels.len() - 1;
        let ch = cfg.block_out_channels[last];
        let resnets = (0..2)
            .map(|i| ResnetBlock2D::load(&p.sub("resnets").sub(i), ch, ch, cfg.time_embed_dim(), cfg.norm_num_groups, cfg.norm_eps))
            .collect::<Result<_>>()?;
        let attentions = load_transformers(p, cfg, BlockKind::CrossAttn, 1, ch, last)?;
        Ok(Self { resnets, attentions })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> Tensor {
        let mut x = self.resnets[0].forward(x, temb);
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(&attn.forward(&x, context), temb);
        }
        x
    }
}

pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Up block `index` (counted from the bottom), reading `prev_ch` channels from the block below.
    pub fn load(p: &WeightPath, cfg: &UNetConfig, index: usize, prev_ch: i64) -> Result<Self> {
        let n = cfg.block_out_channels.len();
        let reversed = |i: usize| cfg.block_out_channels[n - 1 - i.min(n - 1)];
        let out_ch = reversed(index);
        // The channels of the down block that mirrors this one's input side, whose first skip this block takes last.
        let skip_in_ch = reversed(index + 1);
        let layers = cfg.layers_per_block + 1;
        let resnets = (0..layers)
            .map(|i| {
                let skip_ch = if i == layers - 1 { skip_in_ch } else { out_ch };
                let resnet_in = if i == 0 { prev_ch } else { out_ch };
                ResnetBlock2D::load(&p.sub("resnets").sub(i), resnet_in + skip_ch, out_ch, cfg.time_embed_dim(), cfg.norm_num_groups, cfg.norm_eps)
            })
            .collect::<Result<_>>()?;
        // Up blocks take their head counts in reverse block order, like everything else on the way up.
        let attentions = load_transformers(p, cfg, cfg.up_blocks[index], layers, out_ch, n - 1 - index)?;
        let upsampler = if index + 1 == n { None } else { Some(Upsample2D::load(&p.sub("upsamplers.0"), out_ch)?) };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// Consumes this block's skips from the end of `skips`.
    pub fn forward(&self, mut x: Tensor, temb: &Tensor, context: &Tensor, skips: &mut Vec<Tensor>) -> Tensor {
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("the down path pushes one skip per up-path resnet");
            x = resnet.forward(&Tensor::cat(&[x, skip], 1), temb);
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context);
            }
        }
        if let Some(up) = &self.upsampler {
            let next = skips.last().expect("an upsampling block is followed by another block's skips");
            let (_, _, h, w) = next.size4().unwrap();
            x = up.forward(&x, [h, w]);
        }
        x
    }
}
