//! CLIP's text encoder as transformers' `CLIPTextModel`: token and position embeddings, pre-norm transformer layers
//! with causal self-attention, a final layer norm. Its last hidden state is SD's text conditioning.
use crate::files::read_json_section;
use crate::nn::{LayerNorm, Linear};
use crate::weights::WeightPath;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Kind, Tensor};

/// text_encoder/config.json; missing fields take transformers' `CLIPTextConfig` defaults, unknown ones are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub eos_token_id: i64,
    /// The width of `text_projection` in a CLIPTextModelWithProjection (SDXL's second text encoder).
    pub projection_dim: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: 512,
        }
    }
}

impl ClipTextConfig {
    /// Reads a text encoder's config.json, or the `text_config` of a full CLIP model's config.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json_section(path, "text_config", "a CLIP text config")?;
        cfg.checked_activation()
            .with_context(|| format!("{} describes an unsupported text encoder", path.display()))?;
        Ok(cfg)
    }

    /// Checks what the model relies on; gives the activation the config names.
    pub(crate) fn checked_activation(&self) -> Result<Activation> {
        ensure!(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            "hidden_size {} does not split into {} attention heads",
            self.hidden_size,
            self.num_attention_heads
        );
        Activation::parse(&self.hidden_act)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Activation {
    /// x * sigmoid(1.702 x): OpenAI's CLIP, SD 1.x.
    QuickGelu,
    /// The exact (erf) GELU: OpenCLIP, SD 2.x.
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Self::QuickGelu,
            "gelu" => Self::Gelu,
            other => bail!("hidden_act `{other}` is not supported (expected \"quick_gelu\" or \"gelu\")"),
        })
    }

    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Self::QuickGelu => x * (x * 1.702).sigmoid(),
            Self::Gelu => x.gelu("none"),
        }
    }
}

struct Embeddings {
    token_embedding: Tensor,
    position_embedding: Tensor,
    /// Rows for tokens added after training (Textual Inversion), ids from the table's end on, each [D]. Kept
    /// apart from the table so a learned row is a leaf that trains and a large vocabulary is never copied.
    added_tokens: Vec<Tensor>,
}

impl Embeddings {
    fn load(p: &WeightPath, cfg: &ClipTextConfig) -> Result<Self> {
        let (d, positions) = (cfg.hidden_size, cfg.max_position_embeddings);
        // Some checkpoints carry the `position_ids` buffer (0..positions); positions are implied by the order, so it
        // is only checked for shape, which also marks it as used for `Weights::check_all_used`.
        if p.contains("position_ids") {
            let _ = p.get("position_ids", &[1, positions])?;
        }
        Ok(Self {
            token_embedding: p.sub("token_embedding").get("weight", &[cfg.vocab_size, d])?,
            position_embedding: p.sub("position_embedding").get("weight", &[positions, d])?,
            added_tokens: Vec::new(),
        })
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
}

impl Attention {
    fn load(p: &WeightPath, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(&p.sub("q_proj"), d, d, true)?,
            k_proj: Linear::load(&p.sub("k_proj"), d, d, true)?,
            v_proj: Linear::load(&p.sub("v_proj"), d, d, true)?,
            out_proj: Linear::load(&p.sub("out_proj"), d, d, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// Self-attention; causal (a token sees itself and the tokens before it) for text, full for image patches.
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, l, d) = x.size3().expect("hidden states are [batch, length, width]");
        let split = |t: Tensor| t.view([b, l, self.heads, d / self.heads]).transpose(1, 2);
        let (q, k, v) = (split(self.q_proj.forward(x)), split(self.k_proj.forward(x)), split(self.v_proj.forward(x)));
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, causal, None, false);
        self.out_proj.forward(&out.transpose(1, 2).reshape([b, l, d]))
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn load(p: &WeightPath, cfg: &ClipTextConfig, act: Activation) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&p.sub("fc1"), cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Linear::load(&p.sub("fc2"), cfg.intermediate_size, cfg.hidden_size, true)?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)))
    }
}

struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn load(p: &WeightPath, cfg: &ClipTextConfig, act: Activation) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: Attention::load(&p.sub("self_attn"), cfg)?,
            layer_norm1: LayerNorm::load(&p.sub("layer_norm1"), d, eps)?,
            mlp: Mlp::load(&p.sub("mlp"), cfg, act)?,
            layer_norm2: LayerNorm::load(&p.sub("layer_norm2"), d, eps)?,
        })
    }

    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x), causal);
        &x + self.mlp.forward(&self.layer_norm2.forward(&x))
    }
}

/// The layer stack, shared with CLIP's vision tower (`clip_vision`), whose layers are the same but not causal.
pub(crate) struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub(crate) fn load(p: &WeightPath, cfg: &ClipTextConfig, act: Activation) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(&p.sub("layers").sub(i), cfg, act))
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub(crate) fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        self.forward_layers(x, causal, self.layers.len())
    }

    /// The output of the first `count` layers.
    fn forward_layers(&self, x: &Tensor, causal: bool, count: usize) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in &self.layers[..count] {
            x = layer.forward(&x, causal);
        }
        x
    }
}

pub struct ClipTextModel {
    embeddings: Embeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    eos_token_id: i64,
}

impl ClipTextModel {
    /// Loads from the checkpoint root: keys under `text_model.` as transformers saves them, or without that prefix.
    /// Weights take `p`'s device and kind.
    pub fn load(p: &WeightPath, cfg: &ClipTextConfig) -> Result<Self> {
        let act = cfg.checked_activation()?;
        let p = if p.contains("embeddings.token_embedding.weight") { p.clone() } else { p.sub("text_model") };
        Ok(Self {
            embeddings: Embeddings::load(&p.sub("embeddings"), cfg)?,
            encoder: Encoder::load(&p.sub("encoder"), cfg, act)?,
            final_layer_norm: LayerNorm::load(&p.sub("final_layer_norm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// Token embeddings [B, L, D] of ids [B, L] (int64, any device); ids past the table are added tokens.
    pub fn embed_tokens(&self, ids: &Tensor) -> Tensor {
        let table = &self.embeddings.token_embedding;
        let ids = ids.to_device(table.device());
        let base = table.size()[0];
        let embeds = Tensor::embedding(table, &ids.clamp_max(base - 1), -1, false, false);
        if self.embeddings.added_tokens.is_empty() {
            return embeds;
        }
        let rows: Vec<Tensor> = self.embeddings.added_tokens.iter().map(|r| r.to_kind(table.kind())).collect();
        let added = Tensor::embedding(&Tensor::stack(&rows, 0), &(&ids - base).clamp(0, rows.len() as i64 - 1), -1, false, false);
        added.where_self(&ids.ge(base).unsqueeze(-1), &embeds)
    }

    /// The width of a token embedding.
    pub fn hidden_size(&self) -> i64 {
        self.embeddings.token_embedding.size()[1]
    }

    /// Number of token ids the encoder knows: its table's rows and the added tokens.
    pub fn vocab_size(&self) -> i64 {
        self.embeddings.token_embedding.size()[0] + self.embeddings.added_tokens.len() as i64
    }

    /// Gives the next token id (`vocab_size()`) the embedding `row` [D]: the row itself is used (not a copy), so a
    /// row that requires gradients is learned through every later forward pass.
    pub fn add_token_embedding(&mut self, row: &Tensor) -> Result<i64> {
        let d = self.hidden_size();
        ensure!(row.size() == [d], "a token embedding of shape {:?} does not fit this text encoder (width {d})", row.size());
        self.embeddings.added_tokens.push(row.shallow_clone());
        Ok(self.vocab_size() - 1)
    }

    /// The last hidden state after the final layer norm [B, L, D]: SD's text conditioning.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        self.forward_embeds(&self.embed_tokens(ids))
    }

    /// As `forward`, from token embeddings [B, L, D] (position embeddings are added here), so that Textual
    /// Inversion can feed learned embeddings and differentiate through the encoder.
    pub fn forward_embeds(&self, token_embeds: &Tensor) -> Tensor {
        self.final_layer_norm.forward(&self.encoder.forward(&self.with_positions(token_embeds), true))
    }

    /// Token embeddings [B, L, D] plus the position embeddings.
    fn with_positions(&self, token_embeds: &Tensor) -> Tensor {
        let len = token_embeds.size()[1];
        let positions = self.embeddings.position_embedding.size()[0];
        assert!(len <= positions, "{len} tokens exceed the text encoder's {positions} positions");
        token_embeds + self.embeddings.position_embedding.narrow(0, 0, len).unsqueeze(0)
    }

    /// SDXL's reading of the encoder, in one pass over token embeddings [B, L, D] (`embed_tokens`): the penultimate layer's output [B, L, D]
    /// (transformers' `hidden_states[-2]`, without the final layer norm), which conditions the UNet, and the last
    /// hidden state after the final layer norm [B, L, D], which `pooled` reads.
    pub fn forward_penultimate(&self, token_embeds: &Tensor) -> (Tensor, Tensor) {
        let x = self.with_positions(token_embeds);
        let layers = self.encoder.layers.len();
        let penultimate = self.encoder.forward_layers(&x, true, layers - 1);
        let last = self.encoder.layers[layers - 1].forward(&penultimate, true);
        (penultimate, self.final_layer_norm.forward(&last))
    }

    /// The hidden state at each sequence's end token [B, D], as transformers' `pooler_output`: the first position
    /// holding `eos_token_id`, except for old configs with `eos_token_id` 2, where the largest id marks the end.
    pub fn pooled(&self, hidden: &Tensor, ids: &Tensor) -> Tensor {
        let ids = ids.to_device(hidden.device());
        let end = if self.eos_token_id == 2 {
            ids.argmax(-1, false)
        } else {
            ids.eq(self.eos_token_id).to_kind(Kind::Int).argmax(-1, false)
        };
        let rows = Tensor::arange(hidden.size()[0], (Kind::Int64, hidden.device()));
        hidden.index(&[Some(rows), Some(end)])
    }
}
