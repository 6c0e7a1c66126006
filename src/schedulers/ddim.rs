//! diffusers' DDIMScheduler with eta = 0 (deterministic DDIM), configured from any SD scheduler_config.json.
//!
//! The noise schedule and each step's coefficients are computed with the same float32 libtorch ops as diffusers
//! computes them, so on the same libtorch the results are bit-identical to diffusers', not one rounding away.
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    /// Linear in sqrt(beta): SD 1.x and 2.x.
    ScaledLinear,
    /// The cosine schedule of improved DDPM.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the model predicts: the noise, the velocity (SD 2.x 768 px), or the clean sample.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// How the inference timesteps are placed in the training schedule (table 2 of "Common Diffusion Noise Schedules
/// and Sample Steps are Flawed").
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The fields of scheduler/scheduler_config.json that DDIM reads, with DDIMScheduler's defaults for missing ones.
/// SD folders often ship another scheduler's config (PNDMScheduler for SD 1.x); diffusers builds DDIM from it the
/// same way, ignoring the rest, and so does this.
#[derive(Deserialize, Clone, Debug)]
#[serde(default)]
pub struct DdimConfig {
    pub num_train_timesteps: i64,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas; not supported, refused when set.
    pub trained_betas: Option<serde_json::Value>,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// The last step goes to alpha_cumprod = 1 (a clean sample) instead of to alpha_cumprod[0].
    pub set_alpha_to_one: bool,
    pub steps_offset: i64,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub rescale_betas_zero_snr: bool,
    /// Dynamic thresholding (for pixel-space models); not supported, refused when set.
    pub thresholding: bool,
}

impl Default for DdimConfig {
    /// DDIMScheduler's defaults in diffusers.
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            thresholding: false,
        }
    }
}

impl DdimConfig {
    /// Reads and checks the config, naming the file in any error (prefer this to deserializing it directly).
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = crate::files::read_json(path)?;
        cfg.check().with_context(|| format!("{}: unsupported scheduler config", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        ensure!(self.num_train_timesteps > 0, "num_train_timesteps = {} must be positive", self.num_train_timesteps);
        ensure!(self.trained_betas.is_none(), "`trained_betas` is not supported");
        ensure!(!self.thresholding, "`thresholding` (dynamic thresholding) is not supported");
        Ok(())
    }

    /// alphas_cumprod as diffusers computes it: float32 tensors, the same libtorch ops.
    fn alphas_cumprod(&self) -> Result<Vec<f32>> {
        let n = self.num_train_timesteps;
        let f32_cpu = (Kind::Float, Device::Cpu);
        let mut betas = match self.beta_schedule {
            BetaSchedule::Linear => Tensor::linspace(self.beta_start, self.beta_end, n, f32_cpu),
            BetaSchedule::ScaledLinear => {
                Tensor::linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n, f32_cpu).pow_tensor_scalar(2)
            }
            BetaSchedule::SquaredcosCapV2 => Tensor::from_slice(&cosine_betas(n)),
        };
        if self.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = (betas.neg() + 1.0).cumprod(0, Kind::Float);
        Vec::<f32>::try_from(&alphas_cumprod).context("cannot read the noise schedule")
    }

    /// The inference timesteps, in sampling order, as diffusers' `set_timesteps` places them.
    fn timesteps(&self, steps: i64) -> Vec<i64> {
        let n_train = self.num_train_timesteps;
        match self.timestep_spacing {
            TimestepSpacing::Leading => {
                let ratio = n_train / steps;
                (0..steps).rev().map(|i| i * ratio + self.steps_offset).collect()
            }
            TimestepSpacing::Trailing => {
                // numpy's arange(n_train, 0, -ratio) in float64: start + i * delta, with delta taken back from the
                // first two values as numpy does. numpy sometimes yields one value more (a spurious -1 at the end,
                // e.g. for 61 of 1000 steps); diffusers then steps from timestep -1, which indexes alphas_cumprod
                // from the end. We keep the requested number of steps.
                let start = n_train as f64;
                let delta = (start - start / steps as f64) - start;
                (0..steps).map(|i| (start + i as f64 * delta).round_ties_even() as i64 - 1).collect()
            }
            TimestepSpacing::Linspace => {
                // numpy's linspace(0, n_train - 1, steps).round(): i * step, and the last of several exactly the
                // end (a single step is [0]).
                if steps == 1 {
                    return vec![0];
                }
                let end = (n_train - 1) as f64;
                let step = end / (steps - 1) as f64;
                (0..steps)
                    .rev()
                    .map(|i| if i == steps - 1 { end } else { i as f64 * step }.round_ties_even() as i64)
                    .collect()
            }
        }
    }
}

/// diffusers' betas_for_alpha_bar with the cosine alpha_bar, in float64 like its Python loop, then rounded to f32.
fn cosine_betas(n: i64) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescales betas to zero terminal SNR (Lin et al. 2023, algorithm 1), with diffusers' float32 tensor ops.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Tensor {
    let sqrt_ac = (betas.neg() + 1.0).cumprod(0, Kind::Float).sqrt();
    let first = sqrt_ac.get(0);
    let last = sqrt_ac.get(-1);
    let sqrt_ac = (&sqrt_ac - &last) * (&first / (&first - &last));
    let ac = sqrt_ac.pow_tensor_scalar(2);
    let n = ac.size()[0];
    let alphas = Tensor::cat(&[ac.narrow(0, 0, 1), ac.narrow(0, 1, n - 1) / ac.narrow(0, 0, n - 1)], 0);
    alphas.neg() + 1.0
}

/// A step coefficient as diffusers takes it: `x ** 0.5` of a 0-dim float32 tensor on the CPU. libtorch's f32 sqrt
/// (this CPU build, AVX-512) is not always correctly rounded: about one value in five is one ulp off, so
/// `f32::sqrt` would leave the step one rounding away from diffusers'. Widening to f64 for tch is exact.
fn sqrt_like_torch(x: f32) -> f64 {
    Tensor::from(x).sqrt().double_value(&[])
}

/// One DDIM update: the sample at the previous timestep and the model's estimate of the clean sample.
pub struct DdimStep {
    pub prev_sample: Tensor,
    pub pred_original_sample: Tensor,
}

pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    /// alpha_cumprod "before" timestep 0, where the last step lands.
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
    /// diffusers steps from t to t - num_train_timesteps / num_inference_steps whatever the spacing, so this is
    /// not always the next entry of `timesteps` (trailing and linspace spacing); kept so for parity.
    step_ratio: i64,
    prediction_type: PredictionType,
    clip_sample_range: Option<f64>,
    /// Re-derive the noise from the clipped x0 (diffusers' `use_clipped_model_output`, as GLIDE does).
    use_clipped_model_output: bool,
}

impl DdimScheduler {
    pub fn new(cfg: &DdimConfig, num_inference_steps: usize) -> Result<Self> {
        cfg.check()?;
        let n_train = cfg.num_train_timesteps;
        let steps = i64::try_from(num_inference_steps).unwrap_or(i64::MAX);
        ensure!(
            (1..=n_train).contains(&steps),
            "{num_inference_steps} inference steps requested; the schedule allows 1 to num_train_timesteps = {n_train}"
        );
        let timesteps = cfg.timesteps(steps);
        if let Some(t) = timesteps.iter().find(|t| !(0..n_train).contains(*t)) {
            bail!(
                "{:?} timestep spacing with steps_offset {} and {num_inference_steps} steps gives timestep {t}, \
                 outside the training schedule 0..{n_train}",
                cfg.timestep_spacing,
                cfg.steps_offset
            );
        }
        let alphas_cumprod = cfg.alphas_cumprod()?;
        Ok(Self {
            final_alpha_cumprod: if cfg.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            timesteps,
            step_ratio: n_train / steps,
            prediction_type: cfg.prediction_type,
            clip_sample_range: cfg.clip_sample.then_some(cfg.clip_sample_range),
            use_clipped_model_output: false,
        })
    }

    /// With `on`, every step re-derives the noise it moves along from the clipped prediction of x0, as
    /// diffusers' `step(..., use_clipped_model_output=True)` and GLIDE do. Without it (diffusers' default) a
    /// clipped x0 is combined with the unclipped noise, and the two disagree by whatever was clipped: harmless
    /// in a VAE latent space, where `clip_sample` is off, but in pixel space classifier-free guidance pushes x0
    /// past the clip range and that disagreement compounds over the steps into saturated blobs.
    pub fn with_clipped_model_output(mut self, on: bool) -> Self {
        self.use_clipped_model_output = on;
        self
    }

    /// The timesteps to sample at, from the noisiest.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn alpha_cumprod_f32(&self, timestep: i64) -> f32 {
        let n = self.alphas_cumprod.len();
        match usize::try_from(timestep).ok().and_then(|t| self.alphas_cumprod.get(t)) {
            Some(&a) => a,
            None => panic!("timestep {timestep} is outside the training schedule 0..{n}"),
        }
    }

    /// alpha-bar for every training timestep, [num_train_timesteps] f32: what training noises samples with.
    pub fn alphas_cumprod(&self) -> Tensor {
        Tensor::from_slice(&self.alphas_cumprod)
    }

    /// The fraction of signal variance left at `timestep` (alpha-bar). Panics outside the training schedule.
    pub fn alpha_cumprod(&self, timestep: i64) -> f64 {
        self.alpha_cumprod_f32(timestep) as f64
    }

    /// One deterministic DDIM step (eta = 0) from `sample` at `timestep`. Works for any dtype and device of the
    /// tensors and is differentiable in both. Panics if `timestep` is outside the training schedule.
    pub fn step(&self, model_output: &Tensor, timestep: i64, sample: &Tensor) -> DdimStep {
        let alpha_t = self.alpha_cumprod_f32(timestep);
        let prev_timestep = timestep - self.step_ratio;
        let alpha_prev =
            if prev_timestep >= 0 { self.alpha_cumprod_f32(prev_timestep) } else { self.final_alpha_cumprod };
        let sqrt_alpha_t = sqrt_like_torch(alpha_t);
        let sqrt_beta_t = sqrt_like_torch(1.0 - alpha_t);
        let (pred_original_sample, pred_epsilon) = self.predictions(model_output, timestep, sample);
        let pred_original_sample = match self.clip_sample_range {
            Some(r) => pred_original_sample.clamp(-r, r),
            None => pred_original_sample,
        };
        let pred_epsilon = if self.use_clipped_model_output {
            (sample - &pred_original_sample * sqrt_alpha_t) / sqrt_beta_t
        } else {
            pred_epsilon
        };
        // With eta = 0 there is no noise term and the direction keeps all of 1 - alpha_prev.
        let direction = pred_epsilon * sqrt_like_torch(1.0 - alpha_prev);
        let prev_sample = &pred_original_sample * sqrt_like_torch(alpha_prev) + direction;
        DdimStep { prev_sample, pred_original_sample }
    }

    /// The clean sample and the noise that `model_output` (of the config's prediction type) implies for `sample`
    /// at `timestep`, unclipped. Panics if `timestep` is outside the training schedule.
    pub fn predictions(&self, model_output: &Tensor, timestep: i64, sample: &Tensor) -> (Tensor, Tensor) {
        let alpha_t = self.alpha_cumprod_f32(timestep);
        let (sqrt_alpha_t, sqrt_beta_t) = (sqrt_like_torch(alpha_t), sqrt_like_torch(1.0 - alpha_t));
        match self.prediction_type {
            PredictionType::Epsilon => ((sample - model_output * sqrt_beta_t) / sqrt_alpha_t, model_output.shallow_clone()),
            PredictionType::Sample => (model_output.shallow_clone(), (sample - model_output * sqrt_alpha_t) / sqrt_beta_t),
            PredictionType::VPrediction => {
                (sample * sqrt_alpha_t - model_output * sqrt_beta_t, model_output * sqrt_alpha_t + sample * sqrt_beta_t)
            }
        }
    }

    /// The inverse of `predictions`: the model output of the config's prediction type that means noise `epsilon`
    /// in `sample` at `timestep` (guidance that edits the noise estimate hands the sampler this).
    pub fn output_for_epsilon(&self, epsilon: &Tensor, timestep: i64, sample: &Tensor) -> Tensor {
        let alpha_t = self.alpha_cumprod_f32(timestep);
        let (sqrt_alpha_t, sqrt_beta_t) = (sqrt_like_torch(alpha_t), sqrt_like_torch(1.0 - alpha_t));
        let original = (sample - epsilon * sqrt_beta_t) / sqrt_alpha_t;
        match self.prediction_type {
            PredictionType::Epsilon => epsilon.shallow_clone(),
            PredictionType::Sample => original,
            PredictionType::VPrediction => epsilon * sqrt_alpha_t - original * sqrt_beta_t,
        }
    }

    /// A training example: `original` [B,...] noised to per-sample `timesteps` [B], and what the model is trained
    /// to predict there (the noise, the velocity or the clean sample, as the config's prediction type says).
    pub fn training_pair(&self, original: &Tensor, noise: &Tensor, timesteps: &Tensor) -> (Tensor, Tensor) {
        let mut shape = vec![-1i64];
        shape.resize(original.dim(), 1);
        let alpha = self.alphas_cumprod().index_select(0, &timesteps.to_device(Device::Cpu));
        let alpha = alpha.to_device(original.device()).to_kind(original.kind()).view(shape.as_slice());
        let (signal, sigma) = (alpha.sqrt(), (alpha.neg() + 1.0).sqrt());
        let noisy = original * &signal + noise * &sigma;
        let target = match self.prediction_type {
            PredictionType::Epsilon => noise.shallow_clone(),
            PredictionType::VPrediction => noise * &signal - original * &sigma,
            PredictionType::Sample => original.shallow_clone(),
        };
        (noisy, target)
    }

    /// The forward process: `original` noised to `timestep` (img2img starts, training targets). As in diffusers, the
    /// coefficients are taken in the sample's dtype and on its device.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, timestep: i64) -> Tensor {
        let alpha =
            Tensor::from(self.alpha_cumprod_f32(timestep)).to_device(original.device()).to_kind(original.kind());
        original * alpha.sqrt() + noise * (alpha.neg() + 1.0).sqrt()
    }
}
