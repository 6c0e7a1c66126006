//! The few layers every model here is built from, loaded by checkpoint path like torch.nn modules.
//!
//! A layer computes in its input's dtype, converting its weights when theirs differs (a no-op when it does not):
//! alignment computes h of a bf16 UNet in f32 (`method::hspace::HSpace::values_in_latent_dtype`).
use crate::weights::WeightPath;
use anyhow::Result;
use tch::Tensor;

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A LoRA update added to the layer's output (set by an adapter; None in the checkpoint's model).
    pub lora: Option<LowRank>,
}

impl Linear {
    pub fn load(p: &WeightPath, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let weight = p.get("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(p.get("bias", &[out_dim])?) } else { None };
        Ok(Self { weight, bias, lora: None })
    }

    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }

    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight.to_kind(x.kind()), self.bias.as_ref().map(|b| b.to_kind(x.kind())).as_ref());
        match &self.lora {
            Some(lora) => y + lora.forward(x),
            None => y,
        }
    }
}

/// LoRA's low-rank update of a linear layer, scale * up(down(x)), as peft's `lora_A` (down, [r, in]) and `lora_B`
/// (up, [out, r]). Kept beside the frozen weight rather than merged into it, so the same layer trains the factors
/// and an adapter can be taken off again.
pub struct LowRank {
    pub down: Tensor,
    pub up: Tensor,
    /// lora_alpha / r.
    pub scale: f64,
}

impl LowRank {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let down = self.down.to_kind(x.kind());
        let up = self.up.to_kind(x.kind());
        x.linear(&down, None::<&Tensor>).linear(&up, None::<&Tensor>) * self.scale
    }
}

pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
}

impl Conv2d {
    /// A square-kernel convolution with bias, as every conv in SD's UNet, VAE and CLIP is.
    pub fn load(p: &WeightPath, in_ch: i64, out_ch: i64, kernel: i64, stride: i64, padding: i64) -> Result<Self> {
        let weight = p.get("weight", &[out_ch, in_ch, kernel, kernel])?;
        let bias = Some(p.get("bias", &[out_ch])?);
        Ok(Self { weight, bias, stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let bias = self.bias.as_ref().map(|b| b.to_kind(x.kind()));
        x.conv2d(&self.weight.to_kind(x.kind()), bias.as_ref(), [self.stride; 2], [self.padding; 2], [1, 1], 1)
    }
}

pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: i64,
    pub eps: f64,
}

impl GroupNorm {
    pub fn load(p: &WeightPath, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        anyhow::ensure!(
            groups > 0 && channels % groups == 0,
            "{channels} channels cannot be split into {groups} normalisation groups (norm_num_groups in the config)"
        );
        Ok(Self { weight: p.get("weight", &[channels])?, bias: p.get("bias", &[channels])?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(self.groups, Some(&self.weight.to_kind(x.kind())), Some(&self.bias.to_kind(x.kind())), self.eps, true)
    }
}

pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(p: &WeightPath, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: p.get("weight", &[dim])?, bias: p.get("bias", &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size()[0];
        x.layer_norm([dim], Some(&self.weight.to_kind(x.kind())), Some(&self.bias.to_kind(x.kind())), self.eps, true)
    }
}
