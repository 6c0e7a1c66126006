//! DMA's cheaper schedules (issue 15) on the tiny SD 1-style fixture: each one's degenerate case is plain DMA bit for
//! bit, what each changes is what it says, the passes counted equal a hand count, and the progress told adds up to
//! the work announced.
mod common;
use common::{fixture, max_abs_diff};
use dma::method::{AlignSettings, HBranch};
use dma::checkpoint::sampling::{self as checkpoint, Start, StepState};
use dma::checkpoint::training::{Resume, TrainingState};
use dma::checkpoint::Checkpoints;
use dma::pipelines::mental_average::{alignment_work, run, run_stage, seeded_latents, SamplingResult, SamplingSettings};
use dma::pipelines::DiffusionModel;
use dma::distributed::Ranks;
use dma::passes::Passes;
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

fn model() -> DiffusionModel {
    dma::loaders::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Float).unwrap()
}

fn sampling(batch: i64) -> SamplingSettings {
    SamplingSettings { prompt: "a photo of a dog".into(), steps: 3, guidance: 7.0, seed: 3, batch, use_clipped_model_output: false, guidance_interval: None }
}

/// Every iteration run (tol 0), so the counts are exact.
fn align() -> AlignSettings {
    AlignSettings { align_steps: 2, iters: 3, lr: 2e-2, tol: 0.0, window: 5, ..AlignSettings::paper(HBranch::Cond) }
}

/// A run of `k` latents in batches of 2, checking that the progress it tells equals the work it announced.
fn dma(model: &DiffusionModel, k: i64, align: &AlignSettings) -> SamplingResult {
    let told = Cell::new(0u64);
    let result = run(model, &sampling(2), &seeded_latents(model, k, 3), Some(align), 0, &|n| told.set(told.get() + n)).unwrap();
    assert_eq!(told.get(), alignment_work(align, &sampling(2), k), "the progress told adds up to the work announced: {align:?}");
    result
}

fn passes(encoder_forward: u64, encoder_backward: u64, unet_forward: u64) -> Passes {
    Passes { encoder_forward, encoder_backward, unet_forward }
}

#[test]
fn passes_are_counted_as_a_hand_count_gives_them() {
    let _rng = common::global_rng();
    let model = model();
    // K 4, 3 steps (2 aligned), 3 iterations. Sampling: 3 steps x 4 latents x 2 guidance branches = 24 UNet passes.
    // Each aligned step: 4 forward for the target, 3 x 4 forward+backward, 4 forward to log h after it. (Choosing
    // the prototype, K forward more, is the mental average's: tests/sweep.rs counts it.)
    let plain = dma(&model, 4, &align());
    assert_eq!(plain.passes, passes(16, 24, 24));
    // Later steps with 1 iteration: 12 + 4 forward+backward.
    assert_eq!(dma(&model, 4, &AlignSettings { later_iters: Some(1), ..align() }).passes, passes(16, 16, 24));
    // Two of four optimised, all four in both targets: per step 4 + 2 forward, 3 x 2 forward+backward; the other
    // two are dropped after the last aligned step (the third is sampled with 2 latents).
    let few = AlignSettings { optimised: Some(2), ..align() };
    let result = dma(&model, 4, &few);
    assert_eq!(result.passes, passes(12, 12, 8 + 8 + 4));
    assert_eq!(result.latents.size()[0], 2, "the result is the optimised latents");
    // ... all four in the first step's target only: the others are dropped before the second step.
    assert_eq!(dma(&model, 4, &AlignSettings { wide_target_steps: Some(1), ..few }).passes, passes(6 + 4, 12, 8 + 4 + 4));
    // Settling after the first step (any fall in spread is "too little" at a fraction of 1e-9): one step aligned.
    let settled = dma(&model, 4, &AlignSettings { settle: Some(1e-9), ..align() });
    assert_eq!(settled.log.len(), 1);
    assert_eq!(settled.passes, passes(8, 12, 24));
}

#[test]
fn each_schedule_s_degenerate_case_is_plain_dma_bit_for_bit() {
    let _rng = common::global_rng();
    let model = model();
    let plain = dma(&model, 4, &align());
    let same = [
        AlignSettings { optimised: Some(4), ..align() },
        AlignSettings { later_iters: Some(3), ..align() },
        AlignSettings { settle: Some(1.0), ..align() },
    ];
    for settings in same {
        let result = dma(&model, 4, &settings);
        assert_eq!(max_abs_diff(&result.latents, &plain.latents), 0.0, "{settings:?}");
        assert_eq!(result.passes, plain.passes, "{settings:?}");
    }
    // The wide target over all the aligned steps is what --optimise does without --wide-target-steps.
    let few = dma(&model, 4, &AlignSettings { optimised: Some(2), ..align() });
    let wide = dma(&model, 4, &AlignSettings { optimised: Some(2), wide_target_steps: Some(2), ..align() });
    assert_eq!(max_abs_diff(&few.latents, &wide.latents), 0.0);
    // And each one, set to do something, does change the result.
    for settings in [AlignSettings { optimised: Some(2), ..align() }, AlignSettings { later_iters: Some(1), ..align() }, AlignSettings { settle: Some(1e-9), ..align() }] {
        let latents = dma(&model, 4, &settings).latents;
        assert!(max_abs_diff(&latents, &plain.latents.narrow(0, 0, latents.size()[0])) > 1e-4, "{settings:?}");
    }
}

#[test]
fn align_few_optimises_its_latents_toward_the_mean_of_all() {
    let _rng = common::global_rng();
    let model = model();
    let few = dma(&model, 4, &AlignSettings { optimised: Some(2), wide_target_steps: Some(1), ..align() });
    assert!(few.log.iter().all(|step| step.spread_after < step.spread_before), "{:?}", few.log);
    // The first two of the same noise, aligned on their own, reach another result: the other two moved the target.
    let init = seeded_latents(&model, 4, 3).narrow(0, 0, 2);
    let alone = run(&model, &sampling(2), &init, Some(&align()), 0, &|_| {}).unwrap();
    assert!(max_abs_diff(&few.latents, &alone.latents) > 1e-3);
}

#[test]
fn keep_norm_keeps_each_latent_on_its_sphere() {
    let _rng = common::global_rng();
    let model = model();
    let settings = AlignSettings { align_steps: 1, keep_norm: true, ..align() };
    let init = seeded_latents(&model, 4, 3);
    // One aligned step at the first timestep: the aligned latents are what the sampler's first step received, so
    // their norms are read back by running the alignment hook alone.
    use dma::method::Alignment;
    use dma::sampling::StepHooks;
    let context = model.condition("a photo of a dog").unwrap();
    for keep_norm in [true, false] {
        let mut alignment = Alignment::new(model.hspace(context.shallow_clone(), 2), AlignSettings { keep_norm, ..settings.clone() }, &|_| {});
        let aligned = alignment.before_step(0, 999, init.shallow_clone()).unwrap();
        let norms = |x: &Tensor| x.flatten(1, -1).norm_scalaropt_dim(2, [1], false);
        let change = (norms(&aligned) / norms(&init) - 1.0).abs().max().double_value(&[]);
        // Rescaling in float32: the norm is kept to a few float32 roundings (1e-7 each) of a 64-element sum.
        if keep_norm {
            assert!(change < 1e-5, "norm changed by {change}");
        } else {
            assert!(change > 1e-4, "without it the alignment moves the norm: {change}");
        }
        assert!(alignment.log[0].spread_after < alignment.log[0].spread_before);
    }
}

/// Saves the state after step `at` of a run as its checkpoint files (`dma::checkpoint::sampling`), and gives it back
/// as the start of the next run.
struct KeepOne {
    at: usize,
    dir: tempfile::TempDir,
}

impl Checkpoints for KeepOne {
    fn sampling_start(&self, _: &str, steps: usize) -> anyhow::Result<Option<Start>> {
        checkpoint::load(self.dir.path(), steps)
    }
    fn after_sampling_step(&mut self, _: &str, state: StepState) -> anyhow::Result<()> {
        if state.next_step == self.at {
            checkpoint::save(self.dir.path(), &state)?;
        }
        Ok(())
    }
    fn training_start(&self, stage: &str, _: &serde_json::Value) -> anyhow::Result<Resume> {
        Ok(Resume::fresh(stage))
    }
    fn after_training_step(&mut self, _: &str, _: &TrainingState) -> anyhow::Result<()> {
        Ok(())
    }
}

#[test]
fn a_run_stopped_before_or_after_its_extra_latents_were_dropped_resumes_to_the_same_result() {
    let _rng = common::global_rng();
    let model = model();
    let init = seeded_latents(&model, 4, 3);
    // Dropped after the first aligned step by --wide-target-steps 1, or after it by settling (no --wide-target-steps).
    for settings in [
        AlignSettings { optimised: Some(2), wide_target_steps: Some(1), ..align() },
        AlignSettings { optimised: Some(2), settle: Some(1e-9), ..align() },
    ] {
        let whole = run(&model, &sampling(2), &init, Some(&settings), 0, &|_| {}).unwrap();
        // Checkpointed after its first step the run still holds 4 latents (the other two are dropped as the second
        // begins); after its second, 2.
        for (at, rows) in [(1, 4), (2, 2)] {
            let mut keep = KeepOne { at, dir: tempfile::tempdir().unwrap() };
            run_stage(&model, &sampling(2), &init, Some(&settings), 0, &|_| {}, ("dma", &mut keep), Ranks::alone()).unwrap();
            let kept = checkpoint::load(keep.dir.path(), 3).unwrap().unwrap();
            assert_eq!((kept.latents.size()[0], kept.run_latents), (rows, 4), "after step {at}: {settings:?}");
            let resumed = run_stage(&model, &sampling(2), &init, Some(&settings), 0, &|_| {}, ("dma", &mut keep), Ranks::alone()).unwrap();
            assert_eq!(max_abs_diff(&resumed.latents, &whole.latents), 0.0, "resumed after step {at}: {settings:?}");
            assert_eq!(resumed.passes, whole.passes, "the steps before the checkpoint are counted once");
        }
    }
    // A checkpoint that holds another number of latents than the run has by then is refused.
    let settings = AlignSettings { optimised: Some(2), wide_target_steps: Some(1), ..align() };
    let other = AlignSettings { optimised: Some(2), ..align() };
    let mut keep_two = KeepOne { at: 2, dir: tempfile::tempdir().unwrap() };
    run_stage(&model, &sampling(2), &init, Some(&settings), 0, &|_| {}, ("dma", &mut keep_two), Ranks::alone()).unwrap();
    let error = run_stage(&model, &sampling(2), &init, Some(&other), 0, &|_| {}, ("dma", &mut keep_two), Ranks::alone()).err().expect("refused");
    assert!(format!("{error:#}").contains("holds latents of shape [2,"), "{error:#}");
}

#[test]
fn more_latents_to_optimise_than_the_run_has_or_a_wide_target_of_no_steps_are_refused() {
    let model = model();
    let init = seeded_latents(&model, 4, 3);
    for (settings, says) in [
        (AlignSettings { optimised: Some(5), ..align() }, "--optimise 5 is more than the run's 4 latents"),
        (AlignSettings { optimised: Some(2), wide_target_steps: Some(0), ..align() }, "--wide-target-steps 0"),
        (AlignSettings { optimised: Some(2), wide_target_steps: Some(3), ..align() }, "--wide-target-steps 3"),
    ] {
        let error = run(&model, &sampling(2), &init, Some(&settings), 0, &|_| {}).err().expect("refused");
        assert!(format!("{error:#}").contains(says), "{error:#}");
    }
}

/// A model folder's dma_defaults.json may choose a cheaper schedule; the run takes it, records it and counts its
/// passes; flags override it (`--keep-norm false` included), and a run smaller than the defaults' schedule gets the
/// schedule capped rather than an error about flags it did not give.
#[test]
fn a_model_s_defaults_choose_its_schedule_and_flags_override_them() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("model");
    common::copy_dir(&fixture("tiny-sd1"), &folder);
    let defaults = r#"{"latents": 3, "optimise": 2, "wide_target_steps": 1, "steps": 3, "align_steps": 2, "iters": 3,
        "later_iters": 1, "tol": 0, "keep_norm": true, "batch": 2}"#;
    std::fs::write(folder.join("dma_defaults.json"), defaults).unwrap();
    let average = |name: &str, flags: &[&str]| {
        let out = tmp.path().join(name);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dma"))
            .args(["average", "--prompt", "a photo of a dog", "--quiet", "--model"])
            .arg(&folder)
            .args(flags)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        common::read_json(&out.join("run.json"))
    };
    let run = average("defaults", &[]);
    assert_eq!(run["alignment"]["later_iters"], 1);
    assert_eq!(run["alignment"]["keep_norm"], true);
    assert_eq!(run["alignment"]["optimised"], 2);
    // 2 of the 3 latents optimised: 3 Adam iterations in the first aligned step, 1 in the second.
    assert_eq!(run["passes"]["encoder_backward"], 2 * (3 + 1));
    let run = average("flags", &["--keep-norm", "false", "--later-iters", "3", "--latents", "1"]);
    assert_eq!(run["alignment"]["later_iters"], 3);
    assert!(run["alignment"].get("keep_norm").is_none(), "false is not written: {}", run["alignment"]);
    assert_eq!(run["alignment"]["optimised"], 1, "the default --optimise 2 capped at --latents 1");
    assert_eq!(run["passes"]["encoder_backward"], 3 + 3, "1 latent, 3 iterations in each aligned step");
    let run = average("unaligned", &["--align-steps", "0"]);
    assert!(run["alignment"].get("wide_target_steps").is_none(), "{}", run["alignment"]);
    assert_eq!(run["passes"]["encoder_backward"], 0);
}
