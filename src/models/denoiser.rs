//! One way of calling a diffusion network, whatever its family: predict the noise of latents at a timestep under a
//! condition, and read h, where DMA aligns trajectories. The sampler, the method and the pipelines see only this;
//! the question "UNet or DiT?" is answered here and in the loaders, nowhere else.
use super::dit::DiTTransformer2DModel;
use super::unet::{AddedCondition, UNet2DConditionModel};
use crate::nn::Linear;
use anyhow::{bail, ensure, Result};
use tch::{Kind, Tensor};

/// The f32 bytes a DiT's alignment iteration keeps per token, channel and block run: DiT-XL/2-256 keeps 0.64 GB per
/// latent (BENCHMARKS.md, "Alignment iteration (DiT-XL/2-256 config, CPU)") over 256 tokens x 1152 x 28 blocks.
const DIT_BYTES_PER_TOKEN_CHANNEL_BLOCK: f64 = 0.64e9 / (256.0 * 1152.0 * 28.0);

/// What the network is conditioned on, per sample along the batch.
pub enum Condition {
    /// A text encoder's hidden states [B, L, D] (Stable Diffusion 1.x, 2.x).
    Text(Tensor),
    /// SDXL: both text encoders' hidden states [B, L, D], the second's pooled embedding [B, P] and the six size
    /// numbers [B, 6] (original size, crop corner, target size).
    TextTime { states: Tensor, pooled: Tensor, time_ids: Tensor },
    /// Class ids [B], int64 (DiT; the null class is the unconditional branch).
    Class(Tensor),
}

impl Condition {
    pub fn shallow_clone(&self) -> Self {
        self.map(&|t| t.shallow_clone())
    }

    /// The condition with `f` applied to each of its tensors.
    fn map(&self, f: &dyn Fn(&Tensor) -> Tensor) -> Self {
        match self {
            Self::Text(t) => Self::Text(f(t)),
            Self::TextTime { states, pooled, time_ids } => Self::TextTime { states: f(states), pooled: f(pooled), time_ids: f(time_ids) },
            Self::Class(c) => Self::Class(f(c)),
        }
    }

    fn tensor(&self) -> &Tensor {
        match self {
            Self::Text(t) | Self::Class(t) | Self::TextTime { states: t, .. } => t,
        }
    }

    /// The batch size.
    pub fn len(&self) -> i64 {
        self.tensor().size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` copies of a one-sample condition (a view, no copy).
    pub fn repeat(&self, n: i64) -> Self {
        self.map(&|t| {
            let mut shape = t.size();
            shape[0] = n;
            t.expand(shape, false)
        })
    }

    /// `first`'s samples, then `second`'s (both of one family).
    pub fn cat(first: &Self, second: &Self) -> Self {
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 0);
        match (first, second) {
            (Self::Text(a), Self::Text(b)) => Self::Text(cat(a, b)),
            (Self::TextTime { states: s1, pooled: p1, time_ids: t1 }, Self::TextTime { states: s2, pooled: p2, time_ids: t2 }) => {
                Self::TextTime { states: cat(s1, s2), pooled: cat(p1, p2), time_ids: cat(t1, t2) }
            }
            (Self::Class(a), Self::Class(b)) => Self::Class(cat(a, b)),
            _ => unreachable!("conditions of one model are of one kind"),
        }
    }

    /// A text condition in `kind` (class ids stay integers; SDXL's size numbers are read as f32 sinusoids).
    pub fn in_kind(&self, kind: Kind) -> Self {
        match self {
            Self::Text(t) => Self::Text(t.to_kind(kind)),
            Self::TextTime { states, pooled, time_ids } => {
                Self::TextTime { states: states.to_kind(kind), pooled: pooled.to_kind(kind), time_ids: time_ids.shallow_clone() }
            }
            Self::Class(c) => Self::Class(c.shallow_clone()),
        }
    }

    pub fn device(&self) -> tch::Device {
        self.tensor().device()
    }

    pub fn to_device(&self, device: tch::Device) -> Self {
        self.map(&|t| t.to_device(device))
    }
}

/// The network of a diffusion model.
pub enum Network {
    UNet(UNet2DConditionModel),
    DiT(DiTTransformer2DModel),
}

/// A network's prediction for a batch: the noise (or v) in the latents' channels (a DiT's learned-variance channels
/// dropped, as DiTPipeline drops them before the scheduler) and h.
pub struct Prediction {
    pub noise: Tensor,
    pub h: Tensor,
}

/// A network and where its h is read.
pub struct Denoiser {
    pub network: Network,
    /// The block h is read after: None for the family's h (a UNet's mid block, a DiT's last transformer block);
    /// Some(i): a UNet's down block i, a DiT's transformer block i.
    h_block: Option<usize>,
}

impl Denoiser {
    pub fn new(network: Network) -> Self {
        Self { network, h_block: None }
    }

    /// Reads h after block `block` instead of the family's default (`--hspace-block`).
    pub fn read_h_after(&mut self, block: Option<usize>) -> Result<()> {
        if let Some(i) = block {
            let (blocks, what) = match &self.network {
                Network::UNet(unet) => (unet.down_blocks.len(), "down blocks (h is the mid block's output unless a down block is named)"),
                Network::DiT(dit) => (dit.transformer_blocks.len(), "transformer blocks"),
            };
            ensure!(i < blocks, "--hspace-block {i}: this model has {blocks} {what}, numbered from 0");
        }
        self.h_block = block;
        Ok(())
    }

    pub fn h_block(&self) -> Option<usize> {
        self.h_block
    }

    /// The family's name, as run records and errors say it.
    pub fn family(&self) -> &'static str {
        match &self.network {
            Network::UNet(_) => "UNet",
            Network::DiT(_) => "DiT",
        }
    }

    /// The network's folder and attribute name in a diffusers pipeline (`unet`, `transformer`); adapter files
    /// prefix their keys with it.
    pub fn component(&self) -> &'static str {
        match &self.network {
            Network::UNet(_) => "unet",
            Network::DiT(_) => "transformer",
        }
    }

    /// Where h is read, in words (`mid block`, `down block 2`, `transformer block 27 (the last)`).
    pub fn hspace_name(&self) -> String {
        match (&self.network, self.h_block) {
            (Network::UNet(_), None) => "mid block".into(),
            (Network::UNet(_), Some(i)) => format!("down block {i}"),
            (Network::DiT(dit), block) => {
                let i = dit.h_block(block);
                let last = if i + 1 == dit.transformer_blocks.len() { " (the last)" } else { "" };
                format!("transformer block {i}{last}")
            }
        }
    }

    /// The latents' channels.
    pub fn in_channels(&self) -> i64 {
        match &self.network {
            Network::UNet(unet) => unet.config.in_channels,
            Network::DiT(dit) => dit.config.in_channels,
        }
    }

    /// The latents' native side, as the config gives it (64 where a UNet's config is silent).
    pub fn sample_size(&self) -> i64 {
        match &self.network {
            Network::UNet(unet) => unet.config.sample_size.unwrap_or(64),
            Network::DiT(dit) => dit.config.sample_size,
        }
    }

    /// Refuses a latent size the network cannot take: a UNet needs sides that each down block but the last can
    /// halve (and the up path meet again), a DiT a square of whole patches.
    pub fn check_latent_size(&self, height: i64, width: i64) -> Result<()> {
        let native = self.sample_size();
        match &self.network {
            Network::UNet(unet) => {
                let factor = 1i64 << (unet.config.block_out_channels.len().saturating_sub(1)).min(30);
                if [height, width].iter().any(|&side| side < factor || side % factor != 0) {
                    bail!("latents of {height}x{width}; this model's UNet needs a height and width that are multiples of {factor} (its native size is {native}x{native})");
                }
            }
            Network::DiT(dit) => {
                let patch = dit.config.patch_size;
                if height != width || height < patch || height % patch != 0 {
                    bail!("latents of {height}x{width}; this DiT needs a square whose side is a multiple of its patch size {patch} (its native size is {native}x{native})");
                }
            }
        }
        Ok(())
    }

    /// The f32 bytes one latent of `size` [height, width] keeps for a backward pass through h's path
    /// (`UNetConfig::encoder_activation_bytes`; for a DiT, tokens x width x blocks run times
    /// `DIT_BYTES_PER_TOKEN_CHANNEL_BLOCK`), what memory estimates count per latent of a batch.
    pub fn activation_bytes(&self, [height, width]: [i64; 2]) -> f64 {
        match &self.network {
            Network::UNet(unet) => unet.config.encoder_activation_bytes([height, width]),
            Network::DiT(dit) => {
                let tokens = (height / dit.config.patch_size) * (width / dit.config.patch_size);
                let blocks = dit.h_block(self.h_block) + 1;
                (tokens * dit.config.width() * blocks as i64) as f64 * DIT_BYTES_PER_TOKEN_CHANNEL_BLOCK
            }
        }
    }

    /// The elements of one latent's h at latent size [height, width] (where `--hspace-block` reads it: a UNet's
    /// mid block or down block; a DiT's tokens x width after any block).
    pub fn h_elements(&self, [height, width]: [i64; 2]) -> f64 {
        match &self.network {
            Network::UNet(unet) => unet.config.h_elements([height, width], self.h_block),
            Network::DiT(dit) => ((height / dit.config.patch_size) * (width / dit.config.patch_size) * dit.config.width()) as f64,
        }
    }

    /// The prediction for latents `x` [B,C,H,W] at `timesteps` (a scalar or [B]) under `condition` (B samples).
    pub fn predict(&self, x: &Tensor, timesteps: &Tensor, condition: &Condition) -> Prediction {
        match (&self.network, condition) {
            (Network::UNet(unet), Condition::Text(context)) => {
                let out = unet.forward(x, timesteps, context, None, self.h_block);
                Prediction { noise: out.sample, h: out.h }
            }
            (Network::UNet(unet), Condition::TextTime { states, pooled, time_ids }) => {
                let out = unet.forward(x, timesteps, states, Some(AddedCondition { text_embeds: pooled, time_ids }), self.h_block);
                Prediction { noise: out.sample, h: out.h }
            }
            (Network::DiT(dit), Condition::Class(labels)) => {
                let out = dit.forward(x, timesteps, labels, self.h_block);
                Prediction { noise: out.sample.narrow(1, 0, dit.config.in_channels), h: out.h }
            }
            _ => unreachable!("a model's conditions are of its network's kind"),
        }
    }

    /// h alone, running only what it depends on.
    pub fn encode_h(&self, x: &Tensor, timesteps: &Tensor, condition: &Condition) -> Tensor {
        match (&self.network, condition) {
            (Network::UNet(unet), Condition::Text(context)) => unet.encode_h(x, timesteps, context, None, self.h_block),
            (Network::UNet(unet), Condition::TextTime { states, pooled, time_ids }) => {
                unet.encode_h(x, timesteps, states, Some(AddedCondition { text_embeds: pooled, time_ids }), self.h_block)
            }
            (Network::DiT(dit), Condition::Class(labels)) => dit.encode_h(x, timesteps, labels, self.h_block),
            _ => unreachable!("a model's conditions are of its network's kind"),
        }
    }

    /// A class-conditional network's label-table rows for class `id`, one per block that holds a table.
    pub fn class_rows(&self, id: i64) -> Result<Vec<Tensor>> {
        match &self.network {
            Network::DiT(dit) => Ok(dit.class_rows(id)),
            Network::UNet(_) => bail!("a UNet has no class embeddings; it is conditioned on text"),
        }
    }

    /// Adds a class whose label-table rows are `rows` (one per block, used as given); returns its id.
    pub fn add_class(&mut self, rows: &[Tensor]) -> Result<i64> {
        match &mut self.network {
            Network::DiT(dit) => dit.add_class(rows),
            Network::UNet(_) => bail!("a UNet has no class embeddings; it is conditioned on text: use Textual Inversion"),
        }
    }

    /// Every linear projection of every attention layer by checkpoint path: where LoRA adapters attach.
    pub fn attention_projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match &mut self.network {
            Network::UNet(unet) => unet.attention_projections_mut(),
            Network::DiT(dit) => dit.attention_projections_mut(),
        }
    }
}
