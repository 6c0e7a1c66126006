//! BLIP's text transformer: BERT (post-norm layers) with a cross-attention over image tokens in every layer,
//! as transformers' `BlipTextModel` and BLIP's own `med.py` `BertModel` build it (both use BERT's weight names:
//! `embeddings.{word_embeddings,position_embeddings,LayerNorm}`, `encoder.layer.N.{attention,crossattention}.
//! {self.query,self.key,self.value,output.dense,output.LayerNorm}`, `intermediate.dense`, `output.{dense,LayerNorm}`).
//! The same stack encodes (bidirectional, with a padding mask) and decodes (causal), and an LM head
//! (`cls.predictions`) turns a decoder's states into next-token logits.
use crate::nn::{LayerNorm, Linear};
use crate::weights::WeightPath;
use anyhow::{bail, ensure, Result};
use serde::Deserialize;
use tch::Tensor;

/// BLIP's text config (transformers' `text_config`, or ImageReward's med_config.json, a BertConfig); missing
/// fields take transformers' `BlipTextConfig` defaults, unknown ones are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// The first token a decoder is given (`[DEC]` in BLIP's vocabulary).
    pub bos_token_id: i64,
    /// Ends an answer (`[SEP]`).
    pub sep_token_id: i64,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            sep_token_id: 102,
        }
    }
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.hidden_act == "gelu", "hidden_act `{}` is not supported (BLIP's text models use \"gelu\")", self.hidden_act);
        ensure!(
            self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0,
            "hidden_size {} cannot be split into {} attention heads",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(self.vocab_size > 0 && self.max_position_embeddings > 0, "vocab_size and max_position_embeddings must be positive");
        Ok(())
    }

    /// A decoder's start and end tokens must be in its vocabulary.
    pub fn validate_decoder_tokens(&self) -> Result<()> {
        for (name, id) in [("bos_token_id", self.bos_token_id), ("sep_token_id", self.sep_token_id)] {
            ensure!((0..self.vocab_size).contains(&id), "{name} {id} is outside the vocabulary of {}", self.vocab_size);
        }
        Ok(())
    }
}

/// Attention with its residual and post-norm (BERT's `attention.self` + `attention.output`).
struct AttentionBlock {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: i64,
}

impl AttentionBlock {
    fn load(p: &WeightPath, cfg: &BertConfig, context_width: i64) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            query: Linear::load(&p.sub("self.query"), d, d, true)?,
            key: Linear::load(&p.sub("self.key"), context_width, d, true)?,
            value: Linear::load(&p.sub("self.value"), context_width, d, true)?,
            dense: Linear::load(&p.sub("output.dense"), d, d, true)?,
            norm: LayerNorm::load(&p.sub("output.LayerNorm"), d, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `mask`: which keys each query may see, broadcast to [B, heads, L, K] (true: attend).
    fn forward(&self, x: &Tensor, context: &Tensor, mask: Option<&Tensor>, causal: bool) -> Tensor {
        let split = |t: Tensor| {
            let (b, n, c) = t.size3().expect("states are [batch, length, width]");
            t.view([b, n, self.heads, c / self.heads]).transpose(1, 2)
        };
        let (q, k, v) = (split(self.query.forward(x)), split(self.key.forward(context)), split(self.value.forward(context)));
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, causal, None, false);
        let (b, _, n, _) = out.size4().expect("attention output is [batch, heads, length, head width]");
        self.norm.forward(&(self.dense.forward(&out.transpose(1, 2).reshape([b, n, -1])) + x))
    }
}

struct Layer {
    attention: AttentionBlock,
    crossattention: AttentionBlock,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(p: &WeightPath, cfg: &BertConfig, image_width: i64) -> Result<Self> {
        let (d, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: AttentionBlock::load(&p.sub("attention"), cfg, d)?,
            crossattention: AttentionBlock::load(&p.sub("crossattention"), cfg, image_width)?,
            intermediate: Linear::load(&p.sub("intermediate.dense"), d, m, true)?,
            output: Linear::load(&p.sub("output.dense"), m, d, true)?,
            output_norm: LayerNorm::load(&p.sub("output.LayerNorm"), d, cfg.layer_norm_eps)?,
        })
    }

    fn forward(&self, x: &Tensor, self_mask: Option<&Tensor>, causal: bool, image: &Tensor) -> Tensor {
        let x = self.attention.forward(x, x, self_mask, causal);
        // Every image token is attended to (BLIP's image attention mask is all ones).
        let x = self.crossattention.forward(&x, image, None, false);
        self.output_norm.forward(&(self.output.forward(&self.intermediate.forward(&x).gelu("none")) + x))
    }
}

/// The text stack; `forward` gives every token's final state.
pub struct BlipTextModel {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    pub config: BertConfig,
}

impl BlipTextModel {
    /// `image_width`: the width of the image tokens the cross-attention reads (the vision model's).
    pub fn load(p: &WeightPath, cfg: &BertConfig, image_width: i64) -> Result<Self> {
        cfg.validate()?;
        let (d, positions) = (cfg.hidden_size, cfg.max_position_embeddings);
        let e = p.sub("embeddings");
        // med.py saves the `position_ids` buffer (0..positions); positions are implied by the order, so it is only
        // checked for shape, which also marks it as used.
        if e.contains("position_ids") {
            let _ = e.get("position_ids", &[1, positions])?;
        }
        Ok(Self {
            word_embeddings: e.sub("word_embeddings").get("weight", &[cfg.vocab_size, d])?,
            position_embeddings: e.sub("position_embeddings").get("weight", &[positions, d])?,
            embeddings_norm: LayerNorm::load(&e.sub("LayerNorm"), d, cfg.layer_norm_eps)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(&p.sub("encoder.layer").sub(i), cfg, image_width))
                .collect::<Result<_>>()?,
            config: cfg.clone(),
        })
    }

    /// Token ids [B, L] (with `attention_mask` [B, L], 1 for tokens and 0 for padding, when encoding a padded
    /// batch) read against image tokens [B, N, image width]: [B, L, hidden]. `causal` for a decoder, whose
    /// padding (at the end) never reaches the tokens before it.
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>, image: &Tensor, causal: bool) -> Result<Tensor> {
        let (_, length) = ids.size2().map_err(|_| anyhow::anyhow!("token ids must be [batch, length], got {:?}", ids.size()))?;
        ensure!(length <= self.config.max_position_embeddings, "{length} tokens exceed the text model's {} positions", self.config.max_position_embeddings);
        if let Some(mask) = attention_mask {
            ensure!(mask.size() == ids.size(), "an attention mask of shape {:?} for token ids of shape {:?}", mask.size(), ids.size());
            ensure!(!causal, "a decoder takes no padding mask");
        }
        let kind = image.kind();
        let words = self.word_embeddings.to_kind(kind).index_select(0, &ids.flatten(0, 1)).view([ids.size()[0], length, -1]);
        let positions = self.position_embeddings.to_kind(kind).narrow(0, 0, length).unsqueeze(0);
        let mut x = self.embeddings_norm.forward(&(words + positions));
        let keys = attention_mask.map(|m| m.ne(0).view([m.size()[0], 1, 1, length]));
        for layer in &self.layers {
            x = layer.forward(&x, keys.as_ref(), causal, image);
        }
        Ok(x)
    }

    pub fn word_embeddings(&self) -> &Tensor {
        &self.word_embeddings
    }
}

/// BERT's LM head (`cls.predictions`): dense, GELU, layer norm, then the output embedding (tied to the word
/// embeddings where the checkpoint stores none) and its bias.
pub struct LmHead {
    dense: Linear,
    norm: LayerNorm,
    decoder: Tensor,
    bias: Tensor,
}

impl LmHead {
    pub fn load(p: &WeightPath, cfg: &BertConfig, word_embeddings: &Tensor) -> Result<Self> {
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let decoder = if p.contains("decoder.weight") { p.get("decoder.weight", &[v, d])? } else { word_embeddings.shallow_clone() };
        // transformers ties `decoder.bias` to `bias`; a checkpoint may hold both (the same values) or either.
        let bias = match (p.contains("bias"), p.contains("decoder.bias")) {
            (true, true) => {
                let (bias, tied) = (p.get("bias", &[v])?, p.get("decoder.bias", &[v])?);
                ensure!(bias.equal(&tied), "`bias` and `decoder.bias` of the LM head differ; they are one parameter");
                bias
            }
            (true, false) => p.get("bias", &[v])?,
            (false, true) => p.get("decoder.bias", &[v])?,
            (false, false) => bail!("the LM head has no bias (`cls.predictions.bias`)"),
        };
        Ok(Self {
            dense: Linear::load(&p.sub("transform.dense"), d, d, true)?,
            norm: LayerNorm::load(&p.sub("transform.LayerNorm"), d, cfg.layer_norm_eps)?,
            decoder,
            bias,
        })
    }

    /// Next-token logits [B, L, vocab] from decoder states [B, L, hidden].
    pub fn forward(&self, states: &Tensor) -> Tensor {
        let kind = states.kind();
        let x = self.norm.forward(&self.dense.forward(states).gelu("none"));
        x.linear(&self.decoder.to_kind(kind), Some(&self.bias.to_kind(kind)))
    }
}

/// The log-probability a decoder gives each sequence [B, T] after its first token: the sum over t >= 1 of
/// log softmax(logits[t - 1])[ids[t]], from its logits [B, T, vocab], in their kind.
pub fn sequence_log_likelihood(logits: &Tensor, ids: &Tensor) -> Tensor {
    let t = ids.size()[1];
    let log_probs = logits.narrow(1, 0, t - 1).log_softmax(-1, logits.kind());
    let next = ids.narrow(1, 1, t - 1).unsqueeze(-1);
    log_probs.gather(-1, &next, false).squeeze_dim(-1).sum_dim_intlist(1, false, logits.kind())
}
