//! A latent to tokens and back: diffusers' PatchEmbed (a strided convolution plus fixed 2-D sine-cosine positions)
//! and DiT's unpatchify.
use crate::nn::Conv2d;
use crate::weights::WeightPath;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub struct PatchEmbed {
    pub proj: Conv2d,
    pub patch: i64,
    /// The grid side at the config's sample size: positions are laid out for it (diffusers' `base_size`).
    pub base_grid: i64,
}

impl PatchEmbed {
    pub fn load(p: &WeightPath, in_channels: i64, width: i64, patch: i64, sample_size: i64) -> Result<Self> {
        Ok(Self { proj: Conv2d::load(&p.sub("proj"), in_channels, width, patch, patch, 0)?, patch, base_grid: sample_size / patch })
    }

    /// Latents [B, C, H, W] -> tokens [B, (H/p)(W/p), D], row by row, with their positions added.
    pub fn forward(&self, latents: &Tensor) -> Tensor {
        let tokens = self.proj.forward(latents);
        let (_, width, rows, cols) = tokens.size4().unwrap();
        let positions = positions(width, rows, cols, self.base_grid, latents.device());
        tokens.flatten(2, -1).transpose(1, 2) + positions.to_kind(latents.kind()).unsqueeze(0)
    }
}

/// diffusers' get_2d_sincos_pos_embed for a rows x cols grid [rows*cols, width]: the first half of each vector
/// encodes the column, the second the row, each as sines then cosines of position x 10000^(-2i/(width/2)),
/// positions scaled so the grid spans `base_grid` units. Frequencies in f64, as diffusers computes them.
pub fn positions(width: i64, rows: i64, cols: i64, base_grid: i64, device: Device) -> Tensor {
    let axis = |n: i64| Tensor::arange(n, (Kind::Float, device)) / (n as f64 / base_grid as f64);
    let (col, row) = (axis(cols), axis(rows));
    // Each token's column and row coordinate, token k = r * cols + c.
    let col = col.unsqueeze(0).expand([rows, cols], false).reshape([-1]);
    let row = row.unsqueeze(1).expand([rows, cols], false).reshape([-1]);
    let quarter = width / 4;
    let omega = (Tensor::arange(quarter, (Kind::Double, device)) / (width as f64 / 4.0) * 10000f64.ln()).neg().exp();
    let sincos = |pos: Tensor| {
        let angles = pos.to_kind(Kind::Double).unsqueeze(1) * omega.unsqueeze(0);
        Tensor::cat(&[angles.sin(), angles.cos()], 1)
    };
    Tensor::cat(&[sincos(col), sincos(row)], 1).to_kind(Kind::Float)
}

/// Tokens [B, g*g, p*p*C] -> latents [B, C, g*p, g*p] (square grids, as diffusers' DiT assumes).
pub fn unpatchify(tokens: &Tensor, patch: i64, channels: i64) -> Tensor {
    let (b, n, _) = tokens.size3().unwrap();
    let grid = (n as f64).sqrt().round() as i64;
    assert_eq!(grid * grid, n, "DiT's tokens form a square grid");
    tokens.reshape([b, grid, grid, patch, patch, channels]).permute([0, 5, 1, 3, 2, 4]).reshape([b, channels, grid * patch, grid * patch])
}
