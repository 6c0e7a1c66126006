//! unet/config.json, with the fields this UNet honours; any setting it cannot honour is refused by name.
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// A setting given either once for all blocks or per block (diffusers accepts both).
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum PerBlock {
    One(i64),
    Each(Vec<i64>),
}

impl PerBlock {
    fn expand(&self, n: usize, field: &str) -> Result<Vec<i64>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => bail!("`{field}` has {} entries but there are {n} down blocks", v.len()),
        }
    }
}

fn default_groups() -> i64 {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_one() -> PerBlock {
    PerBlock::One(1)
}
fn default_heads() -> PerBlock {
    PerBlock::One(8)
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_act() -> String {
    "silu".into()
}
fn default_layers() -> i64 {
    2
}
fn default_conv_kernel() -> i64 {
    3
}
fn default_scale() -> f64 {
    1.0
}

#[derive(Deserialize, Clone, Debug)]
pub struct UNetConfigFile {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "default_layers")]
    pub layers_per_block: i64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    pub cross_attention_dim: i64,
    /// For historical reasons the number of heads when `num_attention_heads` is null (see NOTES §5).
    #[serde(default = "default_heads")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_act")]
    pub act_fn: String,
    #[serde(default = "default_conv_kernel")]
    pub conv_in_kernel: i64,
    #[serde(default = "default_conv_kernel")]
    pub conv_out_kernel: i64,
    #[serde(default = "default_scale")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub sample_size: Option<i64>,
    // Features of other UNets (SDXL, Kandinsky, ...) this one does not implement; refused when set.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL's `text_time` conditioning: the width of each size number's sinusoids, and of everything the added
    /// embedding reads (the pooled text embedding and the six numbers' sinusoids).
    #[serde(default)]
    pub addition_time_embed_dim: Option<i64>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<i64>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "default_scale")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "default_scale")]
    pub downsample_padding: f64,
}

/// The kinds of blocks this UNet is built from; the config's names map onto them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// CrossAttnDownBlock2D / CrossAttnUpBlock2D: resnets interleaved with transformers.
    CrossAttn,
    /// DownBlock2D / UpBlock2D: resnets only.
    Plain,
}

/// The config resolved to what the model code needs: one entry per block, heads counted, checks done.
#[derive(Clone, Debug)]
pub struct UNetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub down_blocks: Vec<BlockKind>,
    pub up_blocks: Vec<BlockKind>,
    pub cross_attention_dim: i64,
    pub heads: Vec<i64>,
    pub transformer_layers: Vec<i64>,
    pub use_linear_projection: bool,
    pub norm_num_groups: i64,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub conv_in_kernel: i64,
    pub conv_out_kernel: i64,
    pub sample_size: Option<i64>,
    /// SDXL's added conditioning (`addition_embed_type: "text_time"`), where the config asks for it.
    pub text_time: Option<TextTimeConfig>,
}

/// SDXL's `text_time` added embedding: sinusoids of width `time_embed_dim` for each of the six size numbers, and
/// an MLP from the pooled text embedding and those (`input_dim` in all) to the time embedding's width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextTimeConfig {
    pub time_embed_dim: i64,
    pub input_dim: i64,
}

/// The size numbers SDXL conditions on: original height and width, crop top and left, target height and width.
pub const TIME_IDS: i64 = 6;

impl UNetConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let file: UNetConfigFile = crate::files::read_json(path)?;
        Self::resolve(&file).with_context(|| format!("{}: unsupported UNet config", path.display()))
    }

    pub fn resolve(f: &UNetConfigFile) -> Result<Self> {
        let n = f.block_out_channels.len();
        if n == 0 || f.down_block_types.len() != n || f.up_block_types.len() != n {
            bail!(
                "block_out_channels ({}), down_block_types ({}) and up_block_types ({}) must have the same non-zero length",
                n,
                f.down_block_types.len(),
                f.up_block_types.len()
            );
        }
        let refuse = |set: bool, what: &str| if set { bail!("`{what}` is not supported") } else { Ok(()) };
        refuse(f.class_embed_type.is_some(), "class_embed_type")?;
        let text_time = match f.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let (Some(time_embed_dim), Some(input_dim)) = (f.addition_time_embed_dim, f.projection_class_embeddings_input_dim) else {
                    bail!("addition_embed_type \"text_time\" needs addition_time_embed_dim and projection_class_embeddings_input_dim");
                };
                if time_embed_dim <= 0 || input_dim <= TIME_IDS * time_embed_dim {
                    bail!(
                        "projection_class_embeddings_input_dim {input_dim} leaves no room for a pooled text embedding beside \
                         {TIME_IDS} x addition_time_embed_dim {time_embed_dim}"
                    );
                }
                Some(TextTimeConfig { time_embed_dim, input_dim })
            }
            Some(other) => bail!("addition_embed_type {other:?} is not supported (only SDXL's \"text_time\")"),
        };
        refuse(f.encoder_hid_dim_type.is_some(), "encoder_hid_dim_type")?;
        refuse(f.time_cond_proj_dim.is_some(), "time_cond_proj_dim")?;
        refuse(f.timestep_post_act.is_some(), "timestep_post_act")?;
        refuse(f.dual_cross_attention, "dual_cross_attention")?;
        refuse(f.center_input_sample, "center_input_sample")?;
        refuse(matches!(f.only_cross_attention, serde_json::Value::Bool(true) | serde_json::Value::Array(_)), "only_cross_attention")?;
        refuse(f.resnet_time_scale_shift.as_deref().is_some_and(|s| s != "default"), "resnet_time_scale_shift")?;
        refuse(f.time_embedding_type.as_deref().is_some_and(|s| s != "positional"), "time_embedding_type")?;
        refuse(f.time_embedding_dim.is_some(), "time_embedding_dim")?;
        refuse(f.time_embedding_act_fn.is_some(), "time_embedding_act_fn")?;
        refuse(f.attention_type.as_deref().is_some_and(|s| s != "default"), "attention_type other than default")?;
        refuse(f.cross_attention_norm.is_some(), "cross_attention_norm")?;
        refuse(f.resnet_skip_time_act, "resnet_skip_time_act")?;
        refuse(f.resnet_out_scale_factor != 1.0, "resnet_out_scale_factor other than 1")?;
        refuse(f.downsample_padding != 1.0, "downsample_padding other than 1")?;
        refuse(f.act_fn != "silu", "act_fn other than silu")?;
        refuse(f.mid_block_scale_factor != 1.0, "mid_block_scale_factor other than 1")?;
        if f.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            bail!("mid_block_type {:?} is not supported (only UNetMidBlock2DCrossAttn)", f.mid_block_type);
        }
        let kind = |name: &str, cross: &str, plain: &str| -> Result<BlockKind> {
            match name {
                n if n == cross => Ok(BlockKind::CrossAttn),
                n if n == plain => Ok(BlockKind::Plain),
                other => bail!("block type `{other}` is not supported (only {cross} and {plain})"),
            }
        };
        let down_blocks = f
            .down_block_types
            .iter()
            .map(|t| kind(t, "CrossAttnDownBlock2D", "DownBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        let up_blocks =
            f.up_block_types.iter().map(|t| kind(t, "CrossAttnUpBlock2D", "UpBlock2D")).collect::<Result<Vec<_>>>()?;
        // diffusers itself refuses num_attention_heads and reads attention_head_dim as the head count (NOTES §5).
        refuse(f.num_attention_heads.is_some(), "num_attention_heads")?;
        let heads = f.attention_head_dim.expand(n, "attention_head_dim")?;
        let transformer_layers = f.transformer_layers_per_block.expand(n, "transformer_layers_per_block")?;
        for (i, (&ch, &h)) in f.block_out_channels.iter().zip(&heads).enumerate() {
            if h <= 0 || ch % h != 0 {
                bail!("block {i}: {ch} channels cannot be split into {h} attention heads");
            }
        }
        Ok(Self {
            in_channels: f.in_channels,
            out_channels: f.out_channels,
            block_out_channels: f.block_out_channels.clone(),
            layers_per_block: f.layers_per_block,
            down_blocks,
            up_blocks,
            cross_attention_dim: f.cross_attention_dim,
            heads,
            transformer_layers,
            use_linear_projection: f.use_linear_projection,
            norm_num_groups: f.norm_num_groups,
            norm_eps: f.norm_eps,
            flip_sin_to_cos: f.flip_sin_to_cos,
            freq_shift: f.freq_shift,
            conv_in_kernel: f.conv_in_kernel,
            conv_out_kernel: f.conv_out_kernel,
            sample_size: f.sample_size,
            text_time,
        })
    }

    /// Channels of the time embedding (4x the first block's width, as in diffusers).
    pub fn time_embed_dim(&self) -> i64 {
        self.block_out_channels[0] * 4
    }
}

/// Bytes (f32) one latent of an alignment iteration keeps for the backward pass, per element (channels x pixels) of
/// each resnet's output and of each transformer layer's: the two coefficients that make the encoder-half count
/// below equal what was measured on SD 1.5 at 64x64 (0.646 GB per latent) and on SDXL base at 128x128 (6.30 GB)
/// (BENCHMARKS.md, "Peak memory of one alignment iteration" and "Alignment iteration (SDXL base config, CPU)"). A
/// transformer layer keeps about six times a resnet's (attention's projections, GEGLU's 8x-wide feed-forward);
/// counting channel-pixels alone, as before SDXL, put SDXL at 2.5 GB.
const RESNET_BYTES_PER_ELEMENT: f64 = 18.777;
const TRANSFORMER_LAYER_BYTES_PER_ELEMENT: f64 = 118.58;

impl UNetConfig {
    /// The elements of one latent's h at latent size [height, width]: the output of down block `h_block` (its
    /// downsampler included, so halved once per block run, but never past the last level) or, for None, the mid
    /// block's (the last level's width and size).
    pub fn h_elements(&self, [height, width]: [i64; 2], h_block: Option<usize>) -> f64 {
        let levels = self.block_out_channels.len();
        let block = h_block.unwrap_or(levels - 1);
        let halvings = 2f64.powi((block + 1).min(levels - 1) as i32);
        self.block_out_channels[block] as f64 * (height as f64 / halvings).ceil() * (width as f64 / halvings).ceil()
    }

    /// The f32 bytes one latent of `height` x `width` keeps through an alignment iteration (the encoder half's
    /// forward and backward): each down block's resnets and transformer layers at its resolution (halved after
    /// every block but the last), and the mid block's two resnets and transformer of the last block's depth.
    pub fn encoder_activation_bytes(&self, [height, width]: [i64; 2]) -> f64 {
        let (mut height, mut width) = (height as f64, width as f64);
        let (mut resnets, mut transformer_layers) = (0.0, 0.0);
        let levels = self.block_out_channels.len();
        for (i, &channels) in self.block_out_channels.iter().enumerate() {
            let elements = channels as f64 * height * width;
            resnets += self.layers_per_block as f64 * elements;
            if self.down_blocks[i] == BlockKind::CrossAttn {
                transformer_layers += (self.layers_per_block * self.transformer_layers[i]) as f64 * elements;
            }
            if i + 1 < levels {
                height = (height / 2.0).ceil();
                width = (width / 2.0).ceil();
            }
        }
        let mid = *self.block_out_channels.last().unwrap_or(&0) as f64 * height * width;
        resnets += 2.0 * mid;
        transformer_layers += *self.transformer_layers.last().unwrap_or(&0) as f64 * mid;
        RESNET_BYTES_PER_ELEMENT * resnets + TRANSFORMER_LAYER_BYTES_PER_ELEMENT * transformer_layers
    }
}
