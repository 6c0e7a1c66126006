//! The timestep embedding: sinusoids of the timestep, then a two-layer MLP (diffusers' Timesteps + TimestepEmbedding).
use crate::nn::Linear;
use crate::weights::WeightPath;
use anyhow::Result;
use tch::{Kind, Tensor};

/// Sinusoidal features of the timesteps [B] -> [B, dim], computed in f32 as diffusers does.
pub fn timestep_features(timesteps: &Tensor, dim: i64, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor {
    let half = dim / 2;
    // diffusers' order of operations: at t near 1000 one f32 rounding of an angle moves its sine by 6e-5.
    let exponent = Tensor::arange(half, (Kind::Float, timesteps.device())) * -(10000f64.ln()) / (half as f64 - freq_shift);
    let angles = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (angles.sin(), angles.cos());
    let features = if flip_sin_to_cos { Tensor::cat(&[cos, sin], -1) } else { Tensor::cat(&[sin, cos], -1) };
    if dim % 2 == 1 {
        features.constant_pad_nd([0, 1])
    } else {
        features
    }
}

pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(p: &WeightPath, in_dim: i64, dim: i64) -> Result<Self> {
        Ok(Self { linear_1: Linear::load(&p.sub("linear_1"), in_dim, dim, true)?, linear_2: Linear::load(&p.sub("linear_2"), dim, dim, true)? })
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(features).silu())
    }
}
