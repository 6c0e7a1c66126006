//! Progressive trajectory alignment: at each of the first `align_steps` steps, pull every latent's h toward the
//! mean h of all latents, then let the sampler take its step from the aligned latents. Cheaper schedules vary it:
//! fewer iterations on later steps, optimising only some latents toward the mean of all ("mean of many, align
//! few"), ending once a step changes little (`AlignSettings`).
use crate::distributed::{exact, Ranks, Share};
use crate::optim::Adam;
use crate::passes::Passes;
use super::hspace::{distance_to, distances_over, HBranch, HSpace};
use crate::sampling::{ensure_finite, StepHooks};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AlignSettings {
    /// Steps aligned, counted from the first (the paper's t_stop, read as a count; NOTES §1).
    pub align_steps: usize,
    /// Adam iterations per aligned step, at most.
    pub iters: usize,
    pub lr: f64,
    /// A latent stops when its loss improved by less than this fraction over the last `window` iterations
    /// (0 runs every iteration, as the paper does).
    pub tol: f64,
    pub window: usize,
    pub branch: HBranch,
    /// Adam iterations of every aligned step after the first, at most (None: `iters`). The spread of h falls most
    /// in the first steps; later ones change it little (BENCHMARKS.md "Cost-quality frontier").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub later_iters: Option<usize>,
    /// "Mean of many, align few": only the first `optimised` of the K latents are optimised and make the result;
    /// the others are sampled unaligned while their h (forward passes only) is in the target, for the first
    /// `wide_target_steps` aligned steps (None: all of them), and dropped after. None: all K are optimised, as in
    /// the paper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimised: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide_target_steps: Option<usize>,
    /// Alignment ends after the first aligned step whose spread of h fell to more than this fraction of its
    /// spread before the step (the step changed little; the trajectories have met). None: all `align_steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle: Option<f64>,
    /// After every Adam iteration each latent is rescaled to the norm it had before the step, keeping it on the
    /// shell where Gaussian noise (and the sampler's latents at that step) lie.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_norm: bool,
}

impl AlignSettings {
    /// The paper's settings: 10 of 20 steps aligned, 300 Adam iterations at lr 2e-2. Early stopping is ours
    /// (most of the work happens in the first iterations; NOTES §4): stop a latent whose loss improved by
    /// less than 1% over 20 iterations.
    pub fn paper(branch: HBranch) -> Self {
        Self {
            align_steps: 10,
            iters: 300,
            lr: 2e-2,
            tol: 0.01,
            window: 20,
            branch,
            later_iters: None,
            optimised: None,
            wide_target_steps: None,
            settle: None,
            keep_norm: false,
        }
    }

    pub fn validate(&self, steps: usize) -> Result<()> {
        if self.align_steps > steps {
            bail!("--align-steps {} is more than --steps {steps}", self.align_steps);
        }
        if self.align_steps > 0 && self.iters == 0 {
            bail!("--iters 0 aligns nothing; give --iters 1 or more (plain samples come from `dma sample`)");
        }
        if self.later_iters == Some(0) {
            bail!("--later-iters 0 aligns nothing after the first step; give --align-steps 1 instead");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if !(self.tol >= 0.0 && self.tol.is_finite()) {
            bail!("--tol must be zero or positive, got {}", self.tol);
        }
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        if self.optimised.is_some_and(|m| m < 1) {
            bail!("--optimise must be at least 1 latent, got {}", self.optimised.unwrap_or_default());
        }
        if let Some(wide) = self.wide_target_steps {
            if self.optimised.is_none() {
                bail!("--wide-target-steps needs --optimise (without it every latent is optimised and in the target)");
            }
            if wide == 0 || wide > self.align_steps {
                bail!("--wide-target-steps {wide}: give 1 to --align-steps ({}), the aligned steps whose target is the mean of all the latents", self.align_steps);
            }
        }
        if let Some(settle) = self.settle {
            if !(settle > 0.0 && settle <= 1.0) {
                bail!("--settle must be a fraction in (0, 1], got {settle}");
            }
        }
        Ok(())
    }

    /// Refuses settings that do not fit a run of `latents` latents: more to optimise than it has.
    pub fn validate_for(&self, latents: i64) -> Result<()> {
        match self.optimised {
            Some(m) if m > latents => bail!("--optimise {m} is more than the run's {latents} latents (--latents)"),
            _ => Ok(()),
        }
    }

    /// Adam iterations of aligned step `index`, at most.
    pub fn iters_at(&self, index: usize) -> usize {
        if index == 0 {
            self.iters
        } else {
            self.later_iters.unwrap_or(self.iters)
        }
    }

    /// How many of a run's `latents` are optimised.
    pub fn optimised_of(&self, latents: i64) -> i64 {
        self.optimised.map_or(latents, |m| m.min(latents))
    }

    /// The step from which a run carries only its optimised latents: the others have moved their last target
    /// (after the wide-target steps, the aligned steps, or the step after which the alignment settled).
    fn wide_until(&self, log: &[StepLog]) -> usize {
        let settled = log.iter().position(|l| self.settles_after(l)).map_or(usize::MAX, |i| i + 1);
        self.wide_target_steps.unwrap_or(self.align_steps).min(self.align_steps).min(settled)
    }

    /// How many latents a run of `latents` holds once its first `steps` steps are done (with `log`, their
    /// alignment log): all of them until the others are dropped (`wide_until`), the optimised ones after.
    pub fn latents_after(&self, steps: usize, latents: i64, log: &[StepLog]) -> i64 {
        if steps > self.wide_until(log) {
            self.optimised_of(latents)
        } else {
            latents
        }
    }

    /// Whether alignment ends after the step `log` describes (`settle`).
    pub fn settles_after(&self, log: &StepLog) -> bool {
        self.settle.is_some_and(|fraction| log.spread_after > fraction * log.spread_before)
    }

    /// The aligned steps a run's log must hold once its first `steps` steps are done: 0, 1, ... up to
    /// `align_steps`, or to the step after which it settled.
    pub fn logged_steps(&self, log: &[StepLog], steps: usize) -> Vec<usize> {
        let mut expected = Vec::new();
        for index in 0..self.align_steps.min(steps) {
            expected.push(index);
            if log.get(index).is_some_and(|l| self.settles_after(l)) {
                break;
            }
        }
        expected
    }

    /// Adam iterations, at most, of the first `steps` steps of a run of `latents` in batches of `batch`: the units
    /// the alignment tells its progress in.
    pub fn iterations_until(&self, steps: usize, latents: i64, batch: i64) -> u64 {
        let optimised = self.optimised_of(latents);
        let batches = ((optimised + batch - 1) / batch.max(1)) as u64;
        (0..self.align_steps.min(steps)).map(|index| batches * self.iters_at(index) as u64).sum()
    }
}

/// What one aligned step did, for run.json and the tests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub timestep: i64,
    /// Mean squared distance of h to the step's target before and after the optimisation.
    pub loss_before: f64,
    pub loss_after: f64,
    /// Spread of h across latents (mean squared distance to their own mean) before and after.
    pub spread_before: f64,
    pub spread_after: f64,
    pub iterations_mean: f64,
    pub iterations_max: usize,
    pub seconds: f64,
    /// The step's passes through the encoder half: the target's and the check's forward passes, and one forward
    /// and backward per latent and Adam iteration (in bf16 one forward more, in f32: `loss_and_gradient`).
    #[serde(default)]
    pub passes: Passes,
}

/// Each latent's alignment loss (`distance_to`: mean square over h's elements) and the gradient of their sum with
/// respect to `x` [n,C,H,W], in `x`'s dtype. `target` is one h for all latents or one per latent.
///
/// In f32 and f64, autograd's gradient of the loss. In half precision, the gradient reaching h, 2 (h - target) /
/// numel(h) per element (RMS 1.1e-5 at the start of a step on a random-weight SD 1.5 UNet, whose h has 81,920
/// elements, and less as the loss falls), would enter the f16 backward among f16's subnormals (below 6.1e-5: bits
/// lost) or as zero. The backward is linear in it, so it gets the residual h - target scaled to unit RMS instead,
/// and its result is multiplied by the true size, 2 sqrt(loss) / numel(h), in `x`'s dtype. For bf16 the residual's
/// h is computed in f32 (`HSpace::values_in_latent_dtype`). BENCHMARKS.md "Half-precision alignment gradients" has
/// the figures.
pub fn loss_and_gradient(hspace: &HSpace, x: &Tensor, target: &Tensor, timestep: i64) -> (Vec<f64>, Tensor) {
    let to_vec = |losses: &Tensor| Vec::<f64>::try_from(losses.detach().to_kind(Kind::Double)).unwrap();
    let leaf = x.detach().set_requires_grad(true);
    hspace.passes.add(Passes { encoder_backward: x.size()[0] as u64, ..Passes::default() });
    if !hspace.half_precision() {
        let losses = distance_to(&hspace.h(&leaf, timestep), target);
        let grad = Tensor::run_backward(&[losses.sum(losses.kind())], &[&leaf], false, false).pop().unwrap();
        return (to_vec(&losses), grad);
    }
    // Before the differentiable forward, so its activations are not held beside the graph's.
    let exact = hspace.values_in_latent_dtype().then(|| hspace.h_all(x, timestep));
    let h = hspace.h(&leaf, timestep);
    let values = exact.unwrap_or_else(|| h.detach());
    let losses = distance_to(&values, target);
    let rms = losses.sqrt().reshape(per_row(x));
    // A latent already on its target (residual 0) gets a zero direction, not 0/0.
    let direction = (&values - target) / rms.clamp_min(f64::from(f32::MIN_POSITIVE));
    let grad = Tensor::run_backward(&[(h * direction).sum(x.kind())], &[&leaf], false, false).pop().unwrap();
    let elements = values.numel() as f64 / x.size()[0] as f64;
    (to_vec(&losses), grad * (rms * (2.0 / elements)))
}

pub struct Alignment<'a> {
    pub hspace: HSpace<'a>,
    pub settings: AlignSettings,
    pub log: Vec<StepLog>,
    /// Told how many Adam iterations (of `AlignSettings::iters_at` per batch and step) were done or skipped, for progress bars.
    pub progress: &'a dyn Fn(u64),
    /// The ranks the run's latents are spread over, and which of them this one holds (`distributed`): the hook
    /// sees this rank's latents; the target, the log and the prototype are over all of them.
    ranks: Ranks,
    share: Share,
}

impl<'a> Alignment<'a> {
    /// The alignment of all the latents, in this process.
    pub fn new(hspace: HSpace<'a>, settings: AlignSettings, progress: &'a dyn Fn(u64)) -> Self {
        let share = Share::whole(hspace.batch);
        Self { hspace, settings, log: Vec::new(), progress, ranks: Ranks::alone(), share }
    }

    /// The alignment of this rank's `share` of latents spread over `ranks`.
    pub fn spread_over(self, ranks: Ranks, share: Share) -> Self {
        Self { ranks, share, ..self }
    }

    /// The mean over all `total` latents of each one's distance of `h` to `target`.
    fn mean_distance(&self, h: &Tensor, target: &Tensor, total: i64) -> Result<f64> {
        Ok(exact::ordered_mean(&distances_over(self.ranks, &self.share, h, target, total)?))
    }

    /// The spread of all `total` latents' h (this rank's `h`): their mean distance to their own mean.
    fn spread(&self, h: &Tensor, total: i64) -> Result<f64> {
        let mean = exact::mean(&self.ranks, h, total)?;
        self.mean_distance(h, &mean, total)
    }

    /// Optimises each latent of `x` (rows `first..` of the step's latents) toward `target` with Adam; returns the
    /// new latents and each one's iteration count. A non-finite loss stops it, naming the latent.
    fn align_batch(&mut self, x: &Tensor, target: &Tensor, (index, timestep): (usize, i64), first: i64) -> Result<(Tensor, Vec<usize>)> {
        let s = &self.settings;
        let iters = s.iters_at(index);
        let n = x.size()[0] as usize;
        let mut out = x.copy();
        let mut iterations = vec![0usize; n];
        // The latents still being optimised: their rows in `out`, their values, their Adam state and loss history.
        let mut rows: Vec<i64> = (0..n as i64).collect();
        let mut work = x.copy();
        let mut adam = Adam::new(&work, s.lr);
        let mut history: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut norms = s.keep_norm.then(|| row_norms(x));
        for iter in 0..iters {
            let (losses, grad) = loss_and_gradient(&self.hspace, &work, target, timestep);
            work = tch::no_grad(|| adam.update(&work, &grad));
            if let Some(norms) = &norms {
                work = tch::no_grad(|| &work * (norms / row_norms(&work)));
            }
            let mut keep = Vec::with_capacity(rows.len());
            for (j, (&row, loss)) in rows.iter().zip(losses).enumerate() {
                if !loss.is_finite() {
                    bail!("step {index} (timestep {timestep}): the alignment loss of latent {} is not finite (NaN or Inf) at Adam iteration {}", first + row, iter + 1);
                }
                let h = &mut history[row as usize];
                h.push(loss);
                iterations[row as usize] = iter + 1;
                let stalled = s.tol > 0.0 && h.len() > s.window && {
                    let past = h[h.len() - 1 - s.window];
                    past - loss <= s.tol * past
                };
                if !stalled {
                    keep.push(j as i64);
                }
            }
            (self.progress)(1);
            if keep.len() < rows.len() {
                // Write the stopped latents back and drop them from the working set.
                let all_rows = Tensor::from_slice(&rows).to_device(out.device());
                out = out.index_copy(0, &all_rows, &work);
                let keep_t = Tensor::from_slice(&keep).to_device(out.device());
                work = work.index_select(0, &keep_t);
                adam.keep_rows(&keep_t);
                norms = norms.map(|n| n.index_select(0, &keep_t));
                rows = keep.iter().map(|&j| rows[j as usize]).collect();
                if rows.is_empty() {
                    (self.progress)((iters - iter - 1) as u64);
                    break;
                }
            }
        }
        if !rows.is_empty() {
            out = out.index_copy(0, &Tensor::from_slice(&rows).to_device(out.device()), &work);
        }
        Ok((out, iterations))
    }
}

/// The shape of one value per row of `x` that broadcasts over the row: [-1, 1, 1, ...].
fn per_row(x: &Tensor) -> Vec<i64> {
    std::iter::once(-1).chain(std::iter::repeat_n(1, x.dim() - 1)).collect()
}

/// Each row's Euclidean norm, shaped to broadcast over the row.
fn row_norms(x: &Tensor) -> Tensor {
    x.flatten(1, -1).norm_scalaropt_dim(2, [1], false).reshape(per_row(x))
}

impl StepHooks for Alignment<'_> {
    fn before_step(&mut self, index: usize, timestep: i64, latents: Tensor) -> Result<Tensor> {
        // How many latents the run carries, over all ranks; of them the first m are optimised (this rank's of
        // them are the first of its own, `Share`).
        let k = self.ranks.sum(&[latents.size()[0] as u64])[0] as i64;
        let m = self.settings.optimised_of(k);
        let (latents, k) = if m < k && index >= self.settings.wide_until(&self.log) {
            // The latents beyond the optimised ones have moved their last target: they are not sampled further.
            (latents.narrow(0, 0, self.share.count(m)), m)
        } else {
            (latents, k)
        };
        if index >= self.settings.align_steps {
            return Ok(latents);
        }
        let (local_k, local_m) = (latents.size()[0], self.share.count(m));
        if self.log.last().is_some_and(|last| self.settings.settles_after(last)) {
            // Settled: the step is sampled as it is; the bar still counts the iterations it could have had.
            (self.progress)(self.settings.iterations_until(index + 1, local_k, self.hspace.batch) - self.settings.iterations_until(index, local_k, self.hspace.batch));
            return Ok(latents);
        }
        let start = Instant::now();
        let passes_before = self.hspace.passes.get();
        // The target is the mean h over all the latents carried (past the wide-target steps, the optimised ones),
        // held fixed for the whole step.
        let wide = m < k;
        let optimised = if wide { latents.narrow(0, 0, local_m) } else { latents.shallow_clone() };
        let h = self.hspace.h_all(if wide { &latents } else { &optimised }, timestep);
        ensure_finite(&h, "h", index, timestep)?;
        let target = exact::mean(&self.ranks, &h, if wide { k } else { m })?;
        let h = if wide { h.narrow(0, 0, local_m) } else { h };
        let loss_before = self.mean_distance(&h, &target, m)?;
        let spread_before = if wide { self.spread(&h, m)? } else { loss_before };
        let mut aligned = Vec::new();
        let mut iterations = Vec::new();
        let rows = self.share.rows(m);
        for (c, chunk) in optimised.split(self.hspace.batch, 0).iter().enumerate() {
            let (x, its) = self.align_batch(chunk, &target, (index, timestep), rows[c * self.hspace.batch as usize])?;
            aligned.push(x);
            iterations.extend(its.into_iter().map(|i| i as f64));
        }
        let aligned = Tensor::cat(&aligned, 0);
        ensure_finite(&aligned, "aligned latent", index, timestep)?;
        let h_after = self.hspace.h_all(&aligned, timestep);
        ensure_finite(&h_after, "h after alignment", index, timestep)?;
        let loss_after = self.mean_distance(&h_after, &target, m)?;
        let spread_after = self.spread(&h_after, m)?;
        let iterations = self.ranks.gather_per_latent(&self.share, m, &iterations)?;
        let passes = self.hspace.passes.get() - passes_before;
        let [encoder_forward, encoder_backward, unet_forward] =
            self.ranks.sum(&[passes.encoder_forward, passes.encoder_backward, passes.unet_forward])[..] else { unreachable!("three sums") };
        self.log.push(StepLog {
            step: index,
            timestep,
            loss_before,
            loss_after,
            spread_before,
            spread_after,
            iterations_mean: exact::ordered_mean(&iterations),
            iterations_max: iterations.iter().fold(0.0f64, |a, &b| a.max(b)) as usize,
            seconds: start.elapsed().as_secs_f64(),
            passes: Passes { encoder_forward, encoder_backward, unet_forward },
        });
        Ok(if wide { Tensor::cat(&[aligned, latents.narrow(0, local_m, local_k - local_m)], 0) } else { aligned })
    }
}
