//! Classifier-free guidance around a denoiser, evaluated in memory-bounded batches, optionally only in an interval
//! of noise levels.
use crate::models::denoiser::{Condition, Denoiser};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tch::{Kind, Tensor};

/// The timesteps (of the model's training schedule, e.g. 0..=999) at which guidance applies, both ends included;
/// elsewhere the conditional prediction alone is used. Guidance at the highest noise levels decides little of
/// what makes a sample its class but draws every sample of a broad prompt to the same few modes (Kynkäänniemi et
/// al. 2024, "Applying guidance in a limited interval improves sample and distribution quality in diffusion
/// models"); steps outside the interval also cost one pass instead of two.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "[i64; 2]", into = "[i64; 2]")]
pub struct GuidanceInterval {
    pub from: i64,
    pub to: i64,
}

impl GuidanceInterval {
    pub fn new(from: i64, to: i64) -> Result<Self> {
        if from < 0 || to < from {
            bail!("a guidance interval is two timesteps FROM,TO with 0 <= FROM <= TO, got {from},{to}");
        }
        Ok(Self { from, to })
    }

    pub fn contains(&self, timestep: i64) -> bool {
        (self.from..=self.to).contains(&timestep)
    }
}

impl TryFrom<[i64; 2]> for GuidanceInterval {
    type Error = anyhow::Error;
    fn try_from([from, to]: [i64; 2]) -> Result<Self> {
        Self::new(from, to)
    }
}

impl From<GuidanceInterval> for [i64; 2] {
    fn from(interval: GuidanceInterval) -> Self {
        [interval.from, interval.to]
    }
}

impl FromStr for GuidanceInterval {
    type Err = anyhow::Error;
    /// `FROM,TO`, e.g. `0,600`.
    fn from_str(text: &str) -> Result<Self> {
        let (from, to) = text.split_once(',').with_context(|| format!("a guidance interval is FROM,TO (two timesteps, e.g. 0,600), got {text:?}"))?;
        let timestep = |s: &str| s.trim().parse::<i64>().with_context(|| format!("a guidance interval's timesteps are whole numbers, got {s:?} in {text:?}"));
        Self::new(timestep(from)?, timestep(to)?)
    }
}

pub struct GuidedDenoiser<'a> {
    pub denoiser: &'a Denoiser,
    /// The conditions (one sample each) of the prompt and of the empty prompt.
    pub cond: &'a Condition,
    pub uncond: &'a Condition,
    /// The dtype the model runs in.
    pub kind: Kind,
    pub guidance: f64,
    /// Where guidance applies; None: at every step.
    pub interval: Option<GuidanceInterval>,
    /// Latents per network call (each guided call runs 2x this many samples: both CFG branches).
    pub batch: i64,
}

impl GuidedDenoiser<'_> {
    /// Whether the step at `timestep` is guided (runs both branches) or conditional only.
    pub fn guides_at(&self, timestep: i64) -> bool {
        self.interval.is_none_or(|interval| interval.contains(timestep))
    }

    /// Passes through the network per latent at `timestep`: one per branch run.
    pub fn branches_at(&self, timestep: i64) -> u64 {
        if self.guides_at(timestep) {
            2
        } else {
            1
        }
    }

    /// uncond + w (cond - uncond) for every latent (cond alone outside the guidance interval), without autograd, in
    /// the dtype of `x`; the network runs in its own. (DiTPipeline guides only the noise channels and drops the
    /// learned variance: `Denoiser::predict` has dropped it already.)
    pub fn predict(&self, x: &Tensor, timestep: i64) -> Tensor {
        let device = self.cond.device();
        let guided = self.guides_at(timestep);
        tch::no_grad(|| {
            let chunks: Vec<Tensor> = x
                .split(self.batch, 0)
                .iter()
                .map(|chunk| {
                    let n = chunk.size()[0];
                    let t = Tensor::from(timestep).to_device(device);
                    let cond = self.cond.in_kind(self.kind).repeat(n);
                    if !guided {
                        let input = chunk.to_device(device).to_kind(self.kind);
                        return self.denoiser.predict(&input, &t, &cond).noise.to_kind(x.kind());
                    }
                    let input = Tensor::cat(&[chunk, chunk], 0).to_device(device).to_kind(self.kind);
                    let condition = Condition::cat(&self.uncond.in_kind(self.kind).repeat(n), &cond);
                    let out = self.denoiser.predict(&input, &t, &condition).noise.to_kind(x.kind());
                    let (uncond, cond) = (out.narrow(0, 0, n), out.narrow(0, n, n));
                    &uncond + (cond - &uncond) * self.guidance
                })
                .collect();
            Tensor::cat(&chunks, 0).to_device(x.device())
        })
    }
}
