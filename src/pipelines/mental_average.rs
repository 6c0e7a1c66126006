//! The whole computation behind `dma average` and `dma sample`: prompts to contexts, noise to latents through
//! guided DDIM (with DMA's alignment hooked in when asked), latents to images. No files, no UI.
use crate::checkpoint::sampling::{share_start, Start, StepState};
use crate::checkpoint::{Checkpoints, NoCheckpoints};
use crate::distributed::{Ranks, Share};
use super::DiffusionModel;
use crate::method::hspace::distances_over;
use crate::method::{AlignSettings, Alignment, HBranch, StepLog};
use crate::passes::{PassCounter, Passes};
use crate::stop::status_of;
use crate::sampling::guidance::GuidanceInterval;
use crate::sampling::{sample_from, StepHooks, TrajectoryRecorder};
use crate::schedulers::ddim::DdimScheduler;
use crate::weights::read_safetensors;
use anyhow::{bail, Context, Result};
use std::path::Path;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplingSettings {
    pub prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    /// Latents per network call.
    pub batch: i64,
    /// DDIM re-derives the noise from the clipped x0 (matters only where the scheduler clips, i.e. pixel space).
    #[serde(default)]
    pub use_clipped_model_output: bool,
    /// The timesteps at which guidance applies; None: every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<GuidanceInterval>,
}

impl SamplingSettings {
    /// The DDIM schedule these settings sample with.
    pub fn scheduler(&self, model: &DiffusionModel) -> Result<DdimScheduler> {
        Ok(DdimScheduler::new(&model.scheduler, self.steps)?.with_clipped_model_output(self.use_clipped_model_output))
    }
}

/// K seeded Gaussian latents, drawn on the CPU so a seed gives the same noise on every device.
pub fn seeded_latents(model: &DiffusionModel, count: i64, seed: u64) -> Tensor {
    let [c, h, w] = model.latent_shape();
    tch::manual_seed(seed as i64);
    Tensor::randn([count, c, h, w], (Kind::Float, Device::Cpu))
}

/// Checks latents given by the user (or read back from a checkpoint) against the model: [K, C, H, W] with the
/// model's channels, a height and width its network can take (`Denoiser::check_latent_size`), and finite values.
pub fn check_latents(model: &DiffusionModel, latents: &Tensor, what: &str) -> Result<()> {
    let [c, h, w] = model.latent_shape();
    let size = latents.size();
    if size.len() != 4 || size[0] == 0 || size[1] != c {
        bail!("{what}: latents have shape {size:?}; this model needs [K, {c}, H, W] with K > 0 (e.g. [K, {c}, {h}, {w}])");
    }
    model.denoiser.check_latent_size(size[2], size[3]).with_context(|| what.to_string())?;
    if !bool::try_from(latents.isfinite().all())? {
        bail!("{what}: the latents hold NaN or infinite values");
    }
    Ok(())
}

/// The latents of a file given by the user (`--init-latents`): the tensor `latents` of a safetensors file, of
/// floating-point values checked against the model (`check_latents`), as f32.
pub fn read_latents(path: &Path, model: &DiffusionModel) -> Result<Tensor> {
    let what = format!("--init-latents {}", path.display());
    let tensors = read_safetensors(path).with_context(|| what.clone())?;
    let (_, latents) = tensors.into_iter().find(|(name, _)| name == "latents").with_context(|| format!("{what}: no tensor named `latents`"))?;
    if !latents.is_floating_point() {
        bail!("{what}: `latents` holds {:?} values; expected floating-point numbers", latents.kind());
    }
    check_latents(model, &latents, &what)?;
    Ok(latents.to_kind(Kind::Float))
}

pub struct SamplingResult {
    pub latents: Tensor,
    /// Predicted clean samples of the first few latents after every step.
    pub trajectory: Vec<(usize, i64, Tensor)>,
    pub log: Vec<StepLog>,
    /// The run's passes: sampling's through the whole UNet, the alignment's through its encoder half (each
    /// aligned step's, from the log, so a resumed run counts the steps done before it stopped).
    pub passes: Passes,
    /// How many latents the run started with (K); `latents` holds only the optimised ones of a run of --optimise.
    pub run_latents: i64,
}

/// Refuses a start (a checkpoint read back) that a run of `steps` steps aligned by `align` on `model` cannot have
/// reached: a step out of range, a log of other steps, frames from the future, another number of latents than
/// the run holds by then, latents of the wrong shape or not finite.
fn check_start(start: &Start, model: &DiffusionModel, steps: usize, align: &AlignSettings) -> Result<()> {
    let what = format!("the checkpoint at step {} of {steps}", start.first_step);
    if start.first_step > steps {
        bail!("{what}: the step is past the run's end; it is damaged or belongs to another run");
    }
    let logged: Vec<usize> = start.log.iter().map(|l| l.step).collect();
    let expected = align.logged_steps(&start.log, start.first_step);
    if logged != expected {
        bail!("{what}: it logs aligned steps {logged:?}, but the run aligns steps {expected:?} by then; it is damaged or belongs to another run");
    }
    if start.frames.iter().any(|(step, _, _)| *step >= start.first_step) {
        bail!("{what}: it holds trajectory frames of steps not yet done; it is damaged");
    }
    let rows = align.latents_after(start.first_step, start.run_latents, &start.log);
    if start.latents.size().first() != Some(&rows) {
        bail!("{what}: it holds latents of shape {:?}, but a run of {} latents holds {rows} by then; it is damaged or belongs to another run", start.latents.size(), start.run_latents);
    }
    check_latents(model, &start.latents, &what)
}

/// The hooks of one run: the alignment (a no-op past its steps), the trajectory recorder, the progress count, and
/// the caller's look at the state after each step (a checkpoint, a stop on Ctrl-C). Spread over ranks, rank 0
/// gathers the state of all the latents after each step, records and shows it, and every rank follows its outcome.
struct RunHooks<'a, 'b> {
    alignment: Alignment<'a>,
    recorder: TrajectoryRecorder,
    steps: usize,
    progress: &'a dyn Fn(u64),
    /// The sampler's network passes, counted by the denoiser (this rank's).
    unet_passes: &'a PassCounter,
    run_latents: i64,
    ranks: Ranks,
    share: Share,
    after_each_step: &'b mut dyn FnMut(StepState) -> Result<()>,
}

impl StepHooks for RunHooks<'_, '_> {
    fn before_step(&mut self, index: usize, timestep: i64, latents: Tensor) -> Result<Tensor> {
        self.alignment.before_step(index, timestep, latents)
    }

    fn after_step(&mut self, index: usize, timestep: i64, latents: &Tensor, pred_x0: &Tensor) -> Result<()> {
        let rows = self.alignment.settings.latents_after(index + 1, self.run_latents, &self.alignment.log);
        let all = self.ranks.gather_rows(&self.share, rows, latents, false)?;
        // The recorded latents are the first few of all: each rank sends its own of them.
        let recorded = self.recorder.latents.min(rows);
        let pred_x0 = self.ranks.gather_rows(&self.share, recorded, &pred_x0.narrow(0, 0, self.share.count(recorded)), false)?;
        (self.progress)(1);
        let unet_passes = self.ranks.sum(&[self.unet_passes.get().unet_forward])[0];
        let outcome = match (all, pred_x0) {
            (Some(latents), Some(pred_x0)) => self.recorder.after_step(index, timestep, &latents, &pred_x0).and_then(|()| {
                (self.after_each_step)(StepState { next_step: index + 1, steps: self.steps, latents: &latents, log: &self.alignment.log, frames: &self.recorder.frames, unet_passes, run_latents: self.run_latents })
            }),
            _ => Ok(()),
        };
        self.ranks.follow_root(outcome, status_of)
    }
}

/// Runs guided DDIM from `init` (f32, [K,C,H,W]), aligning the first `align.align_steps` steps when given
/// (`None` is plain sampling). `progress` is told of every Adam iteration and every sampling step.
pub fn run(
    model: &DiffusionModel,
    settings: &SamplingSettings,
    init: &Tensor,
    align: Option<&AlignSettings>,
    trajectory_latents: i64,
    progress: &dyn Fn(u64),
) -> Result<SamplingResult> {
    run_stage(model, settings, init, align, trajectory_latents, progress, ("sampling", &mut NoCheckpoints), Ranks::alone())
}

/// As `run`, as stage `stage` of a longer run: from the stage's checkpoint when `checkpoints` has one (telling
/// `progress` of the work behind it), showing them the state after every step; the latents spread over `ranks`
/// (rank 0 alone reads and keeps the checkpoints, and every rank ends with all the final latents).
#[allow(clippy::too_many_arguments)]
pub fn run_stage(
    model: &DiffusionModel,
    settings: &SamplingSettings,
    init: &Tensor,
    align: Option<&AlignSettings>,
    trajectory_latents: i64,
    progress: &dyn Fn(u64),
    (stage, checkpoints): (&str, &mut dyn Checkpoints),
    ranks: Ranks,
) -> Result<SamplingResult> {
    // Rank 0 keeps the checkpoints; every rank starts where it says, or stops with it.
    let decided = match ranks.is_root() {
        true => checkpoints.sampling_start(stage, settings.steps).and_then(|resumed| match resumed {
            // How many it holds by then is `check_start`'s to say.
            Some(start) if start.run_latents != init.size()[0] || start.latents.size().get(1..) != init.size().get(1..) => {
                bail!("the checkpoint of {stage} is of a run of {} latents of shape {:?}, but this run starts from {:?}", start.run_latents, start.latents.size(), init.size())
            }
            Some(start) => Ok(Some(start)),
            None => Ok(Some(Start::fresh(init))),
        }),
        false => Ok(None),
    };
    let (outcome, start) = match decided {
        Ok(start) => (Ok(()), start),
        Err(error) => (Err(error), None),
    };
    ranks.follow_root(outcome, status_of)?;
    let start = share_start(ranks, start)?;
    let share = Share::new(settings.batch, ranks.rank(), ranks.size());
    progress(work_until(align, settings, share.count(init.size()[0]), start.first_step));
    run_from(model, settings, start, align, trajectory_latents, progress, ranks, &mut |state| checkpoints.after_sampling_step(stage, state))
}

/// As `run`, from `start` (a fresh start or a checkpoint), with the latents spread over `ranks` (`distributed`;
/// `Ranks::alone()` in one process): every rank is given the same `start` (all the latents) and works on its share;
/// rank 0 is shown the state of all of them after every step in `after_each_step` (the others are not), and every
/// rank gets the whole result (all final latents; the trajectory on rank 0). The same bits on any number of ranks.
#[allow(clippy::too_many_arguments)]
pub fn run_from(
    model: &DiffusionModel,
    settings: &SamplingSettings,
    start: Start,
    align: Option<&AlignSettings>,
    trajectory_latents: i64,
    progress: &dyn Fn(u64),
    ranks: Ranks,
    after_each_step: &mut dyn FnMut(StepState) -> Result<()>,
) -> Result<SamplingResult> {
    if settings.batch <= 0 {
        bail!("--batch must be at least 1, got {}", settings.batch);
    }
    let scheduler = settings.scheduler(model)?;
    let (cond, uncond) = model.guidance_conditions(&settings.prompt)?;
    let denoiser = model.guided(&cond, &uncond, settings.guidance, settings.guidance_interval, settings.batch);
    let unet_passes = PassCounter::default();
    let mut denoise = |x: &Tensor, t: i64| {
        unet_passes.add(Passes { unet_forward: denoiser.branches_at(t) * x.size()[0] as u64, ..Passes::default() });
        Ok(denoiser.predict(x, t))
    };
    // The steps before a checkpoint were counted by the run that wrote it.
    unet_passes.add(Passes { unet_forward: start.unet_passes, ..Passes::default() });
    let share = Share::new(settings.batch, ranks.rank(), ranks.size());
    // Plain sampling is alignment of zero steps: the hook then returns every latent untouched.
    let align = align.cloned().unwrap_or(AlignSettings { align_steps: 0, ..AlignSettings::paper(HBranch::Cond) });
    align.validate(settings.steps)?;
    align.validate_for(start.run_latents)?;
    check_start(&start, model, settings.steps, &align)?;
    share.check(start.latents.size()[0], "the run's")?;
    let latents = share.take(&start.latents).to_device(model.device).to_kind(model.latent_kind());
    let context = if align.branch == HBranch::Cond { cond.shallow_clone() } else { uncond.shallow_clone() };
    let mut alignment = Alignment::new(model.hspace(context, settings.batch), align, progress).spread_over(ranks, share);
    alignment.log = start.log;
    // Trajectories of latents that are kept to the end: of a run of --optimise, the optimised ones.
    let recorder = TrajectoryRecorder { latents: trajectory_latents.min(alignment.settings.optimised_of(start.run_latents)), frames: start.frames };
    let run_latents = start.run_latents;
    let mut hooks = RunHooks { alignment, recorder, steps: settings.steps, progress, unet_passes: &unet_passes, run_latents, ranks, share, after_each_step };
    let latents = sample_from(&scheduler, start.first_step, latents, &mut denoise, &mut hooks)?;
    let rows = hooks.alignment.settings.latents_after(settings.steps, run_latents, &hooks.alignment.log);
    let latents = ranks.gather_rows(&share, rows, &latents, true)?.expect("gathered on every rank");
    let unet_forward = ranks.sum(&[unet_passes.get().unet_forward])[0];
    let passes = Passes { unet_forward, ..Passes::default() } + hooks.alignment.log.iter().map(|l| l.passes).sum();
    Ok(SamplingResult { latents, trajectory: hooks.recorder.frames, log: hooks.alignment.log, passes, run_latents })
}

/// The progress units of one DMA run (Adam iterations at most, plus sampling steps), as `run` reports them.
pub fn alignment_work(align: &AlignSettings, sampling: &SamplingSettings, latents: i64) -> u64 {
    work_until(Some(align), sampling, latents, sampling.steps)
}

/// The progress units of the first `steps` steps of a run, aligned by `align` or plain sampling (one per step):
/// what a resumed run has behind it.
pub fn work_until(align: Option<&AlignSettings>, sampling: &SamplingSettings, latents: i64, steps: usize) -> u64 {
    align.map_or(0, |a| a.iterations_until(steps, latents, sampling.batch)) + steps as u64
}

/// A mental average from `count` latents seeded by `settings.seed`, as stage `stage` of `checkpoints`: the run
/// and the index of its prototype.
pub fn seeded_mental_average(
    model: &DiffusionModel,
    settings: &SamplingSettings,
    align: &AlignSettings,
    count: i64,
    progress: &dyn Fn(u64),
    stage: (&str, &mut dyn Checkpoints),
    ranks: Ranks,
) -> Result<(SamplingResult, i64)> {
    mental_average_from(model, settings, align, &seeded_latents(model, count, settings.seed), progress, stage, ranks)
}

/// DMA from the given initial noise [K,C,H,W] as stage `stage` of `checkpoints`, and the index of its prototype
/// among the final latents (the K, or the optimised ones of `--optimise`).
pub fn mental_average_from(
    model: &DiffusionModel,
    settings: &SamplingSettings,
    align: &AlignSettings,
    init: &Tensor,
    progress: &dyn Fn(u64),
    stage: (&str, &mut dyn Checkpoints),
    ranks: Ranks,
) -> Result<(SamplingResult, i64)> {
    let mut result = run_stage(model, settings, init, Some(align), 0, progress, stage, ranks)?;
    let prototype = prototype_index(model, settings, align, &mut result, ranks)?;
    Ok((result, prototype))
}

/// The index of the latent whose h (at the last timestep, from the alignment's branch) is nearest the mean h of the
/// run's final latents (every rank of `ranks` computes h for its share); its forward passes are added to the run's.
pub fn prototype_index(model: &DiffusionModel, settings: &SamplingSettings, align: &AlignSettings, result: &mut SamplingResult, ranks: Ranks) -> Result<i64> {
    let scheduler = settings.scheduler(model)?;
    let last = *scheduler.timesteps().last().expect("at least one step");
    let context = model.condition(if align.branch == HBranch::Cond { &settings.prompt } else { "" })?;
    let hspace = model.hspace(context, settings.batch);
    // A run of --optimise ends with its optimised latents only (the others were dropped after their last target).
    let share = Share::new(settings.batch, ranks.rank(), ranks.size());
    let total = result.latents.size()[0];
    let h = hspace.h_all(&share.take(&result.latents).to_device(model.device).to_kind(model.latent_kind()), last);
    let mean = crate::distributed::exact::mean(&ranks, &h, total)?;
    let distances = distances_over(ranks, &share, &h, &mean, total)?;
    let passes = hspace.passes.get();
    result.passes += Passes { encoder_forward: ranks.sum(&[passes.encoder_forward])[0], ..Passes::default() };
    // The first of the nearest, as an argmin over all of them would give.
    let nearest = distances.iter().enumerate().fold(0, |best, (i, d)| if *d < distances[best] { i } else { best });
    Ok(nearest as i64)
}
