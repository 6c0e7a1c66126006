//! DiT's transformer block with adaLN-Zero (diffusers' BasicTransformerBlock with `norm_type="ada_norm_zero"`): the
//! timestep and class embeddings modulate (shift, scale) both layer norms and gate both residual branches.
use crate::models::attention::{Activation, Attention, FeedForward};
use crate::models::embeddings::{timestep_features, TimestepEmbedding};
use crate::nn::Linear;
use crate::weights::WeightPath;
use anyhow::Result;
use tch::Tensor;

/// diffusers' CombinedTimestepLabelEmbeddings: MLP(sinusoids of t) + the class's row of the label table. Every
/// block holds its own copy (the original DiT shares one; diffusers' conversion copies it into each block).
pub struct TimestepLabelEmbedding {
    pub timestep: TimestepEmbedding,
    /// [classes + 1, width]: the last row is the null class.
    pub labels: Tensor,
    /// Rows [width] of classes added after the null class (learned class embeddings, ids classes + 1, ...). Kept
    /// apart and used as given, so rows that require gradients are learned through every forward pass.
    pub added: Vec<Tensor>,
}

/// The sinusoid count of DiT's timestep embedding (diffusers' `Timesteps(num_channels=256, ...)`).
const TIME_FEATURES: i64 = 256;

impl TimestepLabelEmbedding {
    pub fn load(p: &WeightPath, width: i64, classes: i64) -> Result<Self> {
        Ok(Self {
            timestep: TimestepEmbedding::load(&p.sub("timestep_embedder"), TIME_FEATURES, width)?,
            labels: p.get("class_embedder.embedding_table.weight", &[classes + 1, width])?,
            added: Vec::new(),
        })
    }

    /// [B, width] for timesteps [B] and class ids [B], in `like`'s dtype.
    pub fn forward(&self, timesteps: &Tensor, class_labels: &Tensor, like: &Tensor) -> Tensor {
        // flip_sin_to_cos true, downscale_freq_shift 1: DiT's sinusoids, unlike SD's shift 0.
        let features = timestep_features(timesteps, TIME_FEATURES, true, 1.0).to_kind(like.kind());
        let table = if self.added.is_empty() {
            self.labels.shallow_clone()
        } else {
            let rows: Vec<Tensor> = std::iter::once(self.labels.shallow_clone()).chain(self.added.iter().map(|row| row.to_kind(self.labels.kind()).unsqueeze(0))).collect();
            Tensor::cat(&rows, 0)
        };
        self.timestep.forward(&features) + table.to_kind(like.kind()).index_select(0, class_labels)
    }
}

/// The six modulations of one block, each [B, width].
struct Modulation {
    shift_attention: Tensor,
    scale_attention: Tensor,
    gate_attention: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

/// Layer norm without weights, then (1 + scale) and shift per sample: x [B, N, D], scale and shift [B, D].
pub fn modulated_norm(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Tensor {
    let width = x.size()[2];
    x.layer_norm([width], None::<Tensor>, None::<Tensor>, eps, true) * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

pub struct DiTBlock {
    /// `norm1.emb`.
    pub embedding: TimestepLabelEmbedding,
    /// `norm1.linear`: the conditioning to the six modulations.
    pub modulation: Linear,
    pub attn1: Attention,
    pub ff: FeedForward,
    /// norm3's epsilon (the config's `norm_eps`); norm1's is fixed at 1e-6 in diffusers' AdaLayerNormZero.
    pub norm_eps: f64,
}

impl DiTBlock {
    pub fn load(p: &WeightPath, width: i64, heads: i64, classes: i64, attention_bias: bool, norm_eps: f64) -> Result<Self> {
        Ok(Self {
            embedding: TimestepLabelEmbedding::load(&p.sub("norm1.emb"), width, classes)?,
            modulation: Linear::load(&p.sub("norm1.linear"), width, 6 * width, true)?,
            attn1: Attention::load(&p.sub("attn1"), width, width, heads, attention_bias)?,
            ff: FeedForward::load(&p.sub("ff"), width, Activation::GeluTanh)?,
            norm_eps,
        })
    }

    fn modulation(&self, conditioning: &Tensor) -> Modulation {
        let m = self.modulation.forward(&conditioning.silu()).chunk(6, 1);
        let [shift_attention, scale_attention, gate_attention, shift_mlp, scale_mlp, gate_mlp] = <[Tensor; 6]>::try_from(m).ok().unwrap();
        Modulation { shift_attention, scale_attention, gate_attention, shift_mlp, scale_mlp, gate_mlp }
    }

    /// Tokens [B, N, D] -> [B, N, D] at timesteps [B] for class ids [B].
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor, class_labels: &Tensor) -> Tensor {
        let m = self.modulation(&self.embedding.forward(timesteps, class_labels, x));
        let attention = self.attn1.forward(&modulated_norm(x, &m.shift_attention, &m.scale_attention, 1e-6), None);
        let x = attention * m.gate_attention.unsqueeze(1) + x;
        let mlp = self.ff.forward(&modulated_norm(&x, &m.shift_mlp, &m.scale_mlp, self.norm_eps));
        mlp * m.gate_mlp.unsqueeze(1) + x
    }
}
