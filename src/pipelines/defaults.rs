//! Run settings a model folder may recommend in `dma_defaults.json`. The embedded model does (it is small and
//! runs on a CPU in under a minute with fewer latents and iterations); whatever the file leaves out, and every
//! model without the file, gets the paper's settings (`loaders::run_defaults` reads a model's).
use super::mental_average::SamplingSettings;
use crate::adapters::training::AdapterTraining;
use crate::adapters::AdapterKind;
use crate::method::{AlignSettings, HBranch};
use crate::sampling::guidance::GuidanceInterval;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "dma_defaults.json";
/// DiTPipeline's default guidance scale.
pub const DIT_GUIDANCE: f64 = 4.0;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunDefaults {
    pub latents: i64,
    pub steps: usize,
    pub guidance: f64,
    pub align_steps: usize,
    pub iters: usize,
    pub lr: f64,
    pub tol: f64,
    pub window: usize,
    /// The cheaper schedules' settings (`AlignSettings`); unset, a model runs the plain schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub later_iters: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimise: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wide_target_steps: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_norm: bool,
    pub batch: i64,
    pub use_clipped_model_output: bool,
    /// Where guidance applies (`[FROM, TO]` timesteps); unset, at every step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<GuidanceInterval>,
    /// `dma modes`: samples drawn and clustered, and the principal components the mixture is fitted in.
    pub mode_samples: i64,
    pub pca_dims: usize,
    /// Adapters per mode: Textual Inversion's and LoRA's steps and learning rates, LoRA's rank, the guidance DMA
    /// samples with under LoRA, and samples per training step.
    pub ti_steps: usize,
    pub ti_lr: f64,
    pub lora_steps: usize,
    pub lora_lr: f64,
    pub lora_rank: i64,
    pub lora_guidance: f64,
    pub adapter_batch: i64,
}

impl Default for RunDefaults {
    /// The paper's settings (N 20, w 7, lr 2e-2, 300 iterations, 10 aligned steps; Textual Inversion 3000 steps at
    /// lr 1e-2, rank-1 LoRA 2000 steps at lr 1e-4 sampled with guidance 3), with our K, batch, early stop, sample
    /// count and PCA width.
    fn default() -> Self {
        Self {
            latents: 32,
            steps: 20,
            guidance: 7.0,
            align_steps: 10,
            iters: 300,
            lr: 2e-2,
            tol: 0.01,
            window: 20,
            later_iters: None,
            optimise: None,
            wide_target_steps: None,
            settle: None,
            keep_norm: false,
            batch: 8,
            use_clipped_model_output: false,
            guidance_interval: None,
            mode_samples: 100,
            pca_dims: 4,
            ti_steps: 3000,
            ti_lr: 1e-2,
            lora_steps: 2000,
            lora_lr: 1e-4,
            lora_rank: 1,
            lora_guidance: 3.0,
            adapter_batch: 4,
        }
    }
}

impl RunDefaults {
    /// Sampling settings for `prompt` from `seed` with these defaults.
    pub fn sampling(&self, prompt: &str, seed: u64) -> SamplingSettings {
        SamplingSettings {
            prompt: prompt.into(),
            steps: self.steps,
            guidance: self.guidance,
            seed,
            batch: self.batch,
            use_clipped_model_output: self.use_clipped_model_output,
            guidance_interval: self.guidance_interval,
        }
    }

    /// Training settings for an adapter of `kind` with these defaults.
    pub fn adapter(&self, kind: AdapterKind, seed: u64) -> AdapterTraining {
        let (steps, lr) = match kind {
            // A class embedding is Textual Inversion's analogue (one learned row per label table, of the scale of
            // a token embedding): it trains with TI's settings.
            AdapterKind::Ti | AdapterKind::ClassEmbedding => (self.ti_steps, self.ti_lr),
            AdapterKind::Lora => (self.lora_steps, self.lora_lr),
        };
        AdapterTraining { kind, steps, lr, batch: self.adapter_batch, rank: self.lora_rank, seed }
    }

    /// Alignment settings with these defaults, reading h from `branch`.
    pub fn align(&self, branch: HBranch) -> AlignSettings {
        AlignSettings {
            align_steps: self.align_steps,
            iters: self.iters,
            lr: self.lr,
            tol: self.tol,
            window: self.window,
            later_iters: self.later_iters,
            optimised: self.optimise,
            wide_target_steps: self.wide_target_steps,
            settle: self.settle,
            keep_norm: self.keep_norm,
            branch,
        }
    }
}
