//! diffusers' AutoencoderKL, the Stable Diffusion VAE: images in [-1, 1] to latents (the mean of the encoder's
//! Gaussian) and back. Struct fields mirror the keys of vae/diffusion_pytorch_model.safetensors.
//!
//! Everything here is private to the VAE: its residual blocks have no time embedding and its attention is a single
//! head over all pixels, so nothing is shared with the UNet's blocks of the same diffusers names.
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::WeightPath;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::Tensor;

/// diffusers builds every norm of the VAE (resnets, attention, conv_norm_out) with this eps; the config has no say.
const EPS: f64 = 1e-6;

/// vae/config.json; missing fields take AutoencoderKL's defaults, fields this VAE does not need are ignored
/// (`sample_size`, `latents_mean`/`latents_std`, which SD pipelines do not read either).
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub norm_num_groups: i64,
    pub act_fn: String,
    pub scaling_factor: f64,
    /// Null for SD 1/2; SD3-style VAEs shift latents before scaling.
    pub shift_factor: Option<f64>,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// Whether the VAE overflows in f16 and SDXL's pipeline decodes in f32 instead (SDXL's own VAE does; the
    /// community's fp16-fix VAE says false).
    pub force_upcast: bool,
}

impl Default for VaeConfig {
    /// AutoencoderKL's defaults in diffusers.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![64],
            layers_per_block: 1,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            norm_num_groups: 32,
            act_fn: "silu".into(),
            scaling_factor: 0.18215,
            shift_factor: None,
            mid_block_add_attention: true,
            use_quant_conv: true,
            force_upcast: true,
            use_post_quant_conv: true,
        }
    }
}

impl VaeConfig {
    /// Reads and checks the config, naming the file in any error (prefer this to deserializing it directly).
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::files::read_json(path)?;
        cfg.check().with_context(|| format!("{}: unsupported VAE config", path.display()))?;
        Ok(cfg)
    }

    /// Refuses what this VAE cannot build, naming the field and its value.
    fn check(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!(
                "block_out_channels ({n}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                self.down_block_types.len(),
                self.up_block_types.len()
            );
        }
        for (i, t) in self.down_block_types.iter().enumerate() {
            ensure!(
                t == "DownEncoderBlock2D",
                "down_block_types[{i}] = `{t}` is not supported (only DownEncoderBlock2D)"
            );
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            ensure!(t == "UpDecoderBlock2D", "up_block_types[{i}] = `{t}` is not supported (only UpDecoderBlock2D)");
        }
        // diffusers' get_activation lowercases the name; "swish" is its alias of SiLU.
        let act = self.act_fn.to_lowercase();
        ensure!(act == "silu" || act == "swish", "act_fn = `{}` is not supported (only silu)", self.act_fn);
        ensure!(self.layers_per_block >= 1, "layers_per_block = {} must be at least 1", self.layers_per_block);
        ensure!(self.scaling_factor != 0.0, "scaling_factor must not be 0");
        Ok(())
    }
}

/// diffusers' ResnetBlock2D as the VAE builds it: no time embedding, output scale 1.
struct VaeResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl VaeResnetBlock {
    fn load(p: &WeightPath, in_ch: i64, out_ch: i64, groups: i64) -> Result<Self> {
        let conv_shortcut =
            if in_ch != out_ch { Some(Conv2d::load(&p.sub("conv_shortcut"), in_ch, out_ch, 1, 1, 0)?) } else { None };
        Ok(Self {
            norm1: GroupNorm::load(&p.sub("norm1"), groups, in_ch, EPS)?,
            conv1: Conv2d::load(&p.sub("conv1"), in_ch, out_ch, 3, 1, 1)?,
            norm2: GroupNorm::load(&p.sub("norm2"), groups, out_ch, EPS)?,
            conv2: Conv2d::load(&p.sub("conv2"), out_ch, out_ch, 3, 1, 1)?,
            conv_shortcut,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(shortcut) => shortcut.forward(x) + h,
            None => x + h,
        }
    }
}

/// The mid block's self-attention: one head over the H*W positions, with a residual.
struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    fn load(p: &WeightPath, channels: i64, groups: i64) -> Result<Self> {
        // Hub copies of SD 1.x VAEs predate diffusers' rename of these layers; diffusers renames them on load.
        let [q, k, v, out] = if p.contains("query.weight") {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        let linear = |name: &str| Linear::load(&p.sub(name), channels, channels, true);
        Ok(Self {
            group_norm: GroupNorm::load(&p.sub("group_norm"), groups, channels, EPS)?,
            to_q: linear(q)?,
            to_k: linear(k)?,
            to_v: linear(v)?,
            to_out: linear(out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("the VAE's attention takes [batch, channels, height, width]");
        // [b, c, h, w] -> [b, 1 head, h*w positions, c]
        let tokens = self.group_norm.forward(x).view([b, c, h * w]).transpose(1, 2).unsqueeze(1);
        let (q, k, v) = (self.to_q.forward(&tokens), self.to_k.forward(&tokens), self.to_v.forward(&tokens));
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let out = self.to_out.forward(&attended.squeeze_dim(1));
        out.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// resnets.0, the optional attention, resnets.1 (UNetMidBlock2D without time embedding).
struct VaeMidBlock {
    resnets: [VaeResnetBlock; 2],
    attention: Option<VaeAttention>,
}

impl VaeMidBlock {
    fn load(p: &WeightPath, channels: i64, cfg: &VaeConfig) -> Result<Self> {
        let resnet = |i: usize| VaeResnetBlock::load(&p.sub("resnets").sub(i), channels, channels, cfg.norm_num_groups);
        let attention = if cfg.mid_block_add_attention {
            Some(VaeAttention::load(&p.sub("attentions.0"), channels, cfg.norm_num_groups)?)
        } else {
            None
        };
        Ok(Self { resnets: [resnet(0)?, resnet(1)?], attention })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.resnets[0].forward(x);
        let h = match &self.attention {
            Some(attention) => attention.forward(&h),
            None => h,
        };
        self.resnets[1].forward(&h)
    }
}

/// DownEncoderBlock2D: resnets, then (except in the last block) a stride-2 conv.
struct DownEncoderBlock {
    resnets: Vec<VaeResnetBlock>,
    downsampler: Option<Conv2d>,
}

impl DownEncoderBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.resnets.iter().fold(x.shallow_clone(), |h, r| r.forward(&h));
        match &self.downsampler {
            // The original LDM encoder pads only right and bottom, and its weights were trained that way.
            Some(conv) => conv.forward(&h.constant_pad_nd([0, 1, 0, 1])),
            None => h,
        }
    }
}

/// UpDecoderBlock2D: resnets, then (except in the last block) nearest 2x upsampling and a 3x3 conv.
struct UpDecoderBlock {
    resnets: Vec<VaeResnetBlock>,
    upsampler: Option<Conv2d>,
}

impl UpDecoderBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.resnets.iter().fold(x.shallow_clone(), |h, r| r.forward(&h));
        match &self.upsampler {
            Some(conv) => {
                let (_, _, height, width) = h.size4().expect("the VAE decoder takes [batch, channels, height, width]");
                conv.forward(&h.upsample_nearest2d([2 * height, 2 * width], 2.0, 2.0))
            }
            None => h,
        }
    }
}

struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn load(p: &WeightPath, cfg: &VaeConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let mut down_blocks = Vec::with_capacity(ch.len());
        for (i, &out_ch) in ch.iter().enumerate() {
            let bp = p.sub("down_blocks").sub(i);
            let in_ch = if i == 0 { ch[0] } else { ch[i - 1] };
            let resnets = resnet_chain(&bp, cfg.layers_per_block, in_ch, out_ch, groups)?;
            let downsampler = if i + 1 < ch.len() {
                Some(Conv2d::load(&bp.sub("downsamplers.0.conv"), out_ch, out_ch, 3, 2, 0)?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock { resnets, downsampler });
        }
        let last = *ch.last().expect("checked non-empty");
        Ok(Self {
            conv_in: Conv2d::load(&p.sub("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: VaeMidBlock::load(&p.sub("mid_block"), last, cfg)?,
            conv_norm_out: GroupNorm::load(&p.sub("conv_norm_out"), groups, last, EPS)?,
            // Mean and log-variance of the latent Gaussian.
            conv_out: Conv2d::load(&p.sub("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.down_blocks.iter().fold(self.conv_in.forward(x), |h, b| b.forward(&h));
        let h = self.mid_block.forward(&h);
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// A block's `count` resnets (`resnets.0` ...), the first taking `in_ch` channels to `out_ch`.
fn resnet_chain(p: &WeightPath, count: i64, in_ch: i64, out_ch: i64, groups: i64) -> Result<Vec<VaeResnetBlock>> {
    (0..count)
        .map(|j| VaeResnetBlock::load(&p.sub("resnets").sub(j), if j == 0 { in_ch } else { out_ch }, out_ch, groups))
        .collect()
}

struct Decoder {
    conv_in: Conv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn load(p: &WeightPath, cfg: &VaeConfig) -> Result<Self> {
        let reversed: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let mut up_blocks = Vec::with_capacity(reversed.len());
        for (i, &out_ch) in reversed.iter().enumerate() {
            let bp = p.sub("up_blocks").sub(i);
            let in_ch = if i == 0 { reversed[0] } else { reversed[i - 1] };
            // One resnet more than the encoder's blocks, as in diffusers.
            let resnets = resnet_chain(&bp, cfg.layers_per_block + 1, in_ch, out_ch, groups)?;
            let upsampler = if i + 1 < reversed.len() {
                Some(Conv2d::load(&bp.sub("upsamplers.0.conv"), out_ch, out_ch, 3, 1, 1)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsampler });
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: Conv2d::load(&p.sub("conv_in"), cfg.latent_channels, reversed[0], 3, 1, 1)?,
            mid_block: VaeMidBlock::load(&p.sub("mid_block"), reversed[0], cfg)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&p.sub("conv_norm_out"), groups, first, EPS)?,
            conv_out: Conv2d::load(&p.sub("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
        })
    }

    fn forward(&self, z: &Tensor) -> Tensor {
        let h = self.mid_block.forward(&self.conv_in.forward(z));
        let h = self.up_blocks.iter().fold(h, |h, b| b.forward(&h));
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// The VAE. Inputs must be on the weights' device and of their kind; everything is differentiable.
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent_channels: i64,
    scaling_factor: f64,
    shift_factor: f64,
    /// Image channels, and image pixels per latent pixel (2 per downsampling stage).
    pub image_channels: i64,
    pub scale: i64,
    pub force_upcast: bool,
}

impl AutoencoderKL {
    /// Loads from the root of the VAE's checkpoint (keys `encoder.*`, `decoder.*`, `quant_conv.*`, ...).
    pub fn load(p: &WeightPath, cfg: &VaeConfig) -> Result<Self> {
        cfg.check()?;
        let z = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::load(&p.sub("encoder"), cfg)?,
            decoder: Decoder::load(&p.sub("decoder"), cfg)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::load(&p.sub("quant_conv"), 2 * z, 2 * z, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::load(&p.sub("post_quant_conv"), z, z, 1, 1, 0)?)
            } else {
                None
            },
            latent_channels: z,
            scaling_factor: cfg.scaling_factor,
            shift_factor: cfg.shift_factor.unwrap_or(0.0),
            image_channels: cfg.out_channels,
            scale: 1 << (cfg.block_out_channels.len().saturating_sub(1)),
            force_upcast: cfg.force_upcast,
        })
    }

    /// The mean of the latent distribution (diffusers' `encode(x).latent_dist.mean`), unscaled.
    /// `images`: [batch, in_channels, height, width] in [-1, 1].
    pub fn encode_mean(&self, images: &Tensor) -> Tensor {
        let moments = self.encoder.forward(images);
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments),
            None => moments,
        };
        // The second half of the channels is the log-variance, which a deterministic encoding does not need.
        moments.narrow(1, 0, self.latent_channels)
    }

    /// diffusers' `decode(z).sample`: unscaled latents to images in about [-1, 1] (not clamped).
    pub fn decode(&self, z: &Tensor) -> Tensor {
        match &self.post_quant_conv {
            Some(conv) => self.decoder.forward(&conv.forward(z)),
            None => self.decoder.forward(z),
        }
    }

    /// Images in [0, 1] to the scaled latents the UNet works on, as SD pipelines prepare them (img2img, averages).
    pub fn latents_from_images(&self, images: &Tensor) -> Tensor {
        let mean = self.encode_mean(&(images * 2.0 - 1.0));
        (mean - self.shift_factor) * self.scaling_factor
    }

    /// The UNet's scaled latents to images in [0, 1], as SD pipelines postprocess them.
    pub fn images_from_latents(&self, latents: &Tensor) -> Tensor {
        let images = self.decode(&(latents / self.scaling_factor + self.shift_factor));
        (images / 2.0 + 0.5).clamp(0.0, 1.0)
    }
}
