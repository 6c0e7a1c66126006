//! Multi-head attention and the transformer feed-forward, as diffusers' `Attention` and `FeedForward` (shared by the
//! UNet's spatial transformers and DiT's blocks).
use crate::nn::Linear;
use crate::weights::WeightPath;
use anyhow::Result;
use tch::Tensor;

/// Multi-head attention: q/k/v projections (biased in DiT, `attention_bias`; not in SD's UNets) and a biased output
/// projection (`to_out.0`). Self-attention when no context is given, cross-attention over the text context otherwise.
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: i64,
}

impl Attention {
    pub fn load(p: &WeightPath, dim: i64, context_dim: i64, heads: i64, qkv_bias: bool) -> Result<Self> {
        Ok(Self {
            to_q: Linear::load(&p.sub("to_q"), dim, dim, qkv_bias)?,
            to_k: Linear::load(&p.sub("to_k"), context_dim, dim, qkv_bias)?,
            to_v: Linear::load(&p.sub("to_v"), context_dim, dim, qkv_bias)?,
            to_out: Linear::load(&p.sub("to_out.0"), dim, dim, true)?,
            heads,
        })
    }

    /// The four projections by their checkpoint names, where LoRA attaches (peft's target modules for SD).
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 4] {
        [("to_q", &mut self.to_q), ("to_k", &mut self.to_k), ("to_v", &mut self.to_v), ("to_out.0", &mut self.to_out)]
    }

    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let context = context.unwrap_or(x);
        let split_heads = |t: Tensor| {
            let (b, n, c) = t.size3().unwrap();
            t.view([b, n, self.heads, c / self.heads]).transpose(1, 2)
        };
        let q = split_heads(self.to_q.forward(x));
        let k = split_heads(self.to_k.forward(context));
        let v = split_heads(self.to_v.forward(context));
        let out = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let (b, _, n, _) = out.size4().unwrap();
        self.to_out.forward(&out.transpose(1, 2).reshape([b, n, -1]))
    }
}

/// The feed-forward's activation, diffusers' `activation_fn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// "geglu" (SD's UNets): `ff.net.0.proj` doubles the width into value and gate.
    Geglu,
    /// "gelu-approximate" (DiT): GELU with the tanh approximation.
    GeluTanh,
}

/// Feed-forward of width 4 x dim: `ff.net.0.proj`, the activation, `ff.net.2` back to dim.
pub struct FeedForward {
    pub proj: Linear,
    pub out: Linear,
    pub activation: Activation,
}

impl FeedForward {
    pub fn load(p: &WeightPath, dim: i64, activation: Activation) -> Result<Self> {
        let inner = dim * 4;
        let proj_out = if activation == Activation::Geglu { inner * 2 } else { inner };
        Ok(Self {
            proj: Linear::load(&p.sub("net.0.proj"), dim, proj_out, true)?,
            out: Linear::load(&p.sub("net.2"), inner, dim, true)?,
            activation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let hidden = match self.activation {
            Activation::Geglu => {
                let halves = self.proj.forward(x).chunk(2, -1);
                &halves[0] * halves[1].gelu("none")
            }
            Activation::GeluTanh => self.proj.forward(x).gelu("tanh"),
        };
        self.out.forward(&hidden)
    }
}

