//! Run settings a model folder may recommend in `dma_defaults.json`. The embedded model does (it is small and
//! runs on a CPU in under a minute with fewer latents and iterations); whatever the file leaves out, and every
//! model without the file, gets the paper's settings.
use super::mental_average::SamplingSettings;
use super::ModelSource;
use crate::files::read_json;
use crate::method::{AlignSettings, HBranch};
use anyhow::Result;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "dma_defaults.json";

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
    pub batch: i64,
    pub use_clipped_model_output: bool,
}

impl Default for RunDefaults {
    /// The paper's settings (N 20, w 7, lr 2e-2, 300 iterations, 10 aligned steps), with our K, batch and early stop.
    fn default() -> Self {
        Self { latents: 32, steps: 20, guidance: 7.0, align_steps: 10, iters: 300, lr: 2e-2, tol: 0.01, window: 20, batch: 8, use_clipped_model_output: false }
    }
}

impl RunDefaults {
    /// The defaults for a model: its folder's dma_defaults.json over the paper's.
    pub fn for_source(source: &ModelSource) -> Result<Self> {
        match source {
            ModelSource::Folder(dir) if dir.join(FILE).is_file() => read_json(&dir.join(FILE)),
            _ => Ok(Self::default()),
        }
    }

    /// Sampling settings for `prompt` from `seed` with these defaults.
    pub fn sampling(&self, prompt: &str, seed: u64) -> SamplingSettings {
        SamplingSettings {
            prompt: prompt.into(),
            steps: self.steps,
            guidance: self.guidance,
            seed,
            batch: self.batch,
            use_clipped_model_output: self.use_clipped_model_output,
        }
    }

    /// Alignment settings with these defaults, reading h from `branch`.
    pub fn align(&self, branch: HBranch) -> AlignSettings {
        AlignSettings { align_steps: self.align_steps, iters: self.iters, lr: self.lr, tol: self.tol, window: self.window, branch }
    }
}
