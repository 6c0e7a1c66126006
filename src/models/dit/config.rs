//! transformer/config.json of a DiT, as `DiTTransformer2DModel` writes it or as older folders do (class
//! `Transformer2DModel` with the same weights); any setting this DiT cannot honour is refused by name.
use crate::files::read_json;
use anyhow::{bail, ensure, Result};
use serde::Deserialize;
use std::path::Path;

fn default_heads() -> i64 {
    16
}
fn default_head_dim() -> i64 {
    72
}
fn default_in_channels() -> i64 {
    4
}
fn default_layers() -> i64 {
    28
}
fn default_sample_size() -> i64 {
    32
}
fn default_patch() -> i64 {
    2
}
fn default_classes() -> Option<i64> {
    Some(1000)
}
fn default_true() -> bool {
    true
}
fn default_activation() -> String {
    "gelu-approximate".into()
}
fn default_norm_type() -> String {
    "ada_norm_zero".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// The config as written, defaults as diffusers' `DiTTransformer2DModel.__init__` has them.
#[derive(Deserialize, Clone, Debug)]
struct DiTConfigFile {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    #[serde(default = "default_heads")]
    num_attention_heads: i64,
    #[serde(default = "default_head_dim")]
    attention_head_dim: i64,
    #[serde(default = "default_in_channels")]
    in_channels: i64,
    #[serde(default)]
    out_channels: Option<i64>,
    #[serde(default = "default_layers")]
    num_layers: i64,
    #[serde(default = "default_true")]
    attention_bias: bool,
    #[serde(default = "default_sample_size")]
    sample_size: i64,
    #[serde(default)]
    patch_size: Option<i64>,
    #[serde(default = "default_activation")]
    activation_fn: String,
    #[serde(default = "default_classes")]
    num_embeds_ada_norm: Option<i64>,
    #[serde(default)]
    upcast_attention: bool,
    #[serde(default = "default_norm_type")]
    norm_type: String,
    #[serde(default)]
    norm_elementwise_affine: bool,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    // Transformer2DModel's keys for its other uses (text-conditioned or discrete); a DiT has them off.
    #[serde(default)]
    cross_attention_dim: Option<i64>,
    #[serde(default)]
    num_vector_embeds: Option<i64>,
    #[serde(default)]
    only_cross_attention: bool,
    #[serde(default)]
    double_self_attention: bool,
}

#[derive(Clone, Debug)]
pub struct DiTConfig {
    pub heads: i64,
    pub head_dim: i64,
    pub in_channels: i64,
    /// 2 x in_channels with learned sigma (the variance channels follow the noise prediction).
    pub out_channels: i64,
    pub layers: i64,
    pub attention_bias: bool,
    /// The latent's side in pixels of the latent grid (32 for DiT-XL/2-256).
    pub sample_size: i64,
    pub patch_size: i64,
    /// The number of classes; the label table has one more row, the null class used for guidance.
    pub classes: i64,
    pub norm_eps: f64,
}

impl DiTConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let file: DiTConfigFile = read_json(path)?;
        Self::from_config(file).map_err(|e| e.context(format!("{}: unsupported DiT config", path.display())))
    }

    fn from_config(f: DiTConfigFile) -> Result<Self> {
        let class = f.class_name.as_deref().unwrap_or("DiTTransformer2DModel");
        ensure!(
            matches!(class, "DiTTransformer2DModel" | "Transformer2DModel"),
            "`_class_name` is `{class}`; a DiT folder's transformer is DiTTransformer2DModel (or, in older folders, Transformer2DModel)"
        );
        // DiTTransformer2DModel defaults to patches of 2; Transformer2DModel without a patch size is a UNet's.
        let patch_size = match (f.patch_size, class) {
            (Some(p), _) => p,
            (None, "DiTTransformer2DModel") => default_patch(),
            (None, _) => bail!("`patch_size` is not set: this Transformer2DModel is not a DiT (it works on feature maps, not patches)"),
        };
        let Some(classes) = f.num_embeds_ada_norm else { bail!("`num_embeds_ada_norm` is not set: a DiT needs its number of classes") };
        ensure!(f.norm_type == "ada_norm_zero", "`norm_type` is `{}`; only DiT's `ada_norm_zero` is supported", f.norm_type);
        ensure!(f.activation_fn == "gelu-approximate", "`activation_fn` is `{}`; only DiT's `gelu-approximate` is supported", f.activation_fn);
        ensure!(!f.norm_elementwise_affine, "`norm_elementwise_affine` is true; DiT's layer norms have no weights");
        ensure!(f.cross_attention_dim.is_none(), "`cross_attention_dim` is set: a text-conditioned Transformer2DModel is not a DiT");
        ensure!(f.num_vector_embeds.is_none(), "`num_vector_embeds` is set: a discrete Transformer2DModel is not a DiT");
        ensure!(!f.only_cross_attention && !f.double_self_attention, "`only_cross_attention`/`double_self_attention` are not DiT's");
        // `upcast_attention` is ignored as diffusers' default attention processor (scaled dot-product attention)
        // ignores it.
        let _ = f.upcast_attention;
        ensure!(f.num_attention_heads > 0 && f.attention_head_dim > 0 && f.num_layers > 0, "heads, head width and layers must be positive");
        ensure!(patch_size > 0 && f.sample_size % patch_size == 0, "`sample_size` {} is not a multiple of `patch_size` {patch_size}", f.sample_size);
        ensure!((f.num_attention_heads * f.attention_head_dim) % 4 == 0, "the width (heads x head width) must be a multiple of 4 for the 2-D position embedding");
        let out_channels = f.out_channels.unwrap_or(f.in_channels);
        ensure!(
            out_channels == f.in_channels || out_channels == 2 * f.in_channels,
            "`out_channels` {out_channels} is neither `in_channels` {} nor twice it (learned sigma)",
            f.in_channels
        );
        Ok(Self {
            heads: f.num_attention_heads,
            head_dim: f.attention_head_dim,
            in_channels: f.in_channels,
            out_channels,
            layers: f.num_layers,
            attention_bias: f.attention_bias,
            sample_size: f.sample_size,
            patch_size,
            classes,
            norm_eps: f.norm_eps,
        })
    }

    pub fn width(&self) -> i64 {
        self.heads * self.head_dim
    }

    /// The label id of the null class, the unconditional branch of classifier-free guidance.
    pub fn null_class(&self) -> i64 {
        self.classes
    }
}
