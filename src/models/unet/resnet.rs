//! The UNet's convolutional pieces: the time-conditioned residual block and the resamplers.
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::WeightPath;
use anyhow::Result;
use tch::Tensor;

/// diffusers' ResnetBlock2D as the SD UNet configures it: two norm-SiLU-conv stages, the time embedding added
/// between them, and a 1x1 shortcut when the channel count changes.
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub fn load(p: &WeightPath, in_ch: i64, out_ch: i64, temb_dim: i64, groups: i64, eps: f64) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&p.sub("norm1"), groups, in_ch, eps)?,
            conv1: Conv2d::load(&p.sub("conv1"), in_ch, out_ch, 3, 1, 1)?,
            time_emb_proj: Linear::load(&p.sub("time_emb_proj"), temb_dim, out_ch, true)?,
            norm2: GroupNorm::load(&p.sub("norm2"), groups, out_ch, eps)?,
            conv2: Conv2d::load(&p.sub("conv2"), out_ch, out_ch, 3, 1, 1)?,
            conv_shortcut: if in_ch != out_ch { Some(Conv2d::load(&p.sub("conv_shortcut"), in_ch, out_ch, 1, 1, 0)?) } else { None },
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = h + self.time_emb_proj.forward(&temb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(shortcut) => shortcut.forward(x) + h,
            None => x + h,
        }
    }
}

/// Halves the resolution with a strided 3x3 conv (`downsamplers.0.conv`).
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn load(p: &WeightPath, channels: i64) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(&p.sub("conv"), channels, channels, 3, 2, 1)? })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling to the size of the skip connection it will meet, then a 3x3 conv
/// (`upsamplers.0.conv`). Targeting the skip's size handles odd resolutions the way diffusers' upsample_size does.
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(p: &WeightPath, channels: i64) -> Result<Self> {
        Ok(Self { conv: Conv2d::load(&p.sub("conv"), channels, channels, 3, 1, 1)? })
    }

    pub fn forward(&self, x: &Tensor, size: [i64; 2]) -> Tensor {
        self.conv.forward(&x.upsample_nearest2d(size, None, None))
    }
}
