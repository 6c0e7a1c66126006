//! The DDIM scheduler against diffusers' DDIMScheduler on the committed tiny SD 1- and SD 2-style fixtures, and its
//! properties that need no fixture.
mod common;
use common::{fixture, max_abs_diff, reference_json, references};
use dma::schedulers::ddim::{BetaSchedule, DdimConfig, DdimScheduler, PredictionType};
use tch::{Device, Kind, Tensor};

/// The schedule and the step use the same float32 libtorch ops as diffusers, so on the same libtorch they agree
/// exactly; the tolerance leaves room for another libtorch build's rounding.
const TOLERANCE: f64 = 1e-6;

fn scheduler_config(name: &str) -> DdimConfig {
    DdimConfig::from_file(&fixture(name).join("scheduler").join("scheduler_config.json")).unwrap()
}

fn check_ddim(name: &str, prediction_type: PredictionType) {
    let refs = references(name);
    let json = reference_json(name);
    let config = scheduler_config(name);
    assert_eq!(config.prediction_type, prediction_type);
    for (steps, key) in [(10, "ddim_timesteps"), (20, "ddim_timesteps_20")] {
        let expected = Vec::<i64>::try_from(&refs[key]).unwrap();
        assert_eq!(DdimScheduler::new(&config, steps).unwrap().timesteps(), &expected[..], "{name}: {steps} steps");
    }
    let steps = json["num_inference_steps"].as_u64().unwrap() as usize;
    let timestep = json["ddim_step_timestep"].as_i64().unwrap();
    let scheduler = DdimScheduler::new(&config, steps).unwrap();
    let out = scheduler.step(&refs["ddim_step_model_output"], timestep, &refs["ddim_step_sample"]);
    let prev_diff = max_abs_diff(&out.prev_sample, &refs["ddim_step_prev"]);
    let x0_diff = max_abs_diff(&out.pred_original_sample, &refs["ddim_step_pred_x0"]);
    println!("{name}: step at t={timestep}: max |prev - ref| {prev_diff:.2e}, max |pred_x0 - ref| {x0_diff:.2e}");
    assert!(prev_diff < TOLERANCE, "{name}: prev_sample differs from diffusers by {prev_diff}");
    assert!(x0_diff < TOLERANCE, "{name}: pred_original_sample differs from diffusers by {x0_diff}");
}

#[test]
fn sd1_ddim_matches_diffusers() {
    check_ddim("tiny-sd1", PredictionType::Epsilon);
}

#[test]
fn sd2_ddim_matches_diffusers() {
    check_ddim("tiny-sd2", PredictionType::VPrediction);
}

/// The pixel-space step whose x0 is clipped, with and without re-deriving the noise from the clipped x0
/// (diffusers' `use_clipped_model_output`), on tests/fixtures/ddim-clipped (scripts/make_ddim_clipped_fixture.py).
#[test]
fn clipped_x0_steps_match_diffusers_with_and_without_clipped_model_output() {
    let refs = references("ddim-clipped");
    let json = reference_json("ddim-clipped");
    let config = DdimConfig::from_file(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(json["scheduler"].as_str().unwrap())).unwrap();
    assert!(config.clip_sample);
    let steps = json["num_inference_steps"].as_u64().unwrap() as usize;
    for timestep in json["timesteps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()) {
        let (output, sample) = (&refs[&format!("t{timestep}_model_output")], &refs[&format!("t{timestep}_sample")]);
        let mut prevs = Vec::new();
        for (name, on) in [("default", false), ("clipped", true)] {
            let out = DdimScheduler::new(&config, steps).unwrap().with_clipped_model_output(on).step(output, timestep, sample);
            let prev_diff = max_abs_diff(&out.prev_sample, &refs[&format!("t{timestep}_{name}_prev")]);
            let x0_diff = max_abs_diff(&out.pred_original_sample, &refs[&format!("t{timestep}_{name}_pred_x0")]);
            println!("t={timestep} {name}: max |prev - ref| {prev_diff:.2e}, max |pred_x0 - ref| {x0_diff:.2e}");
            assert!(prev_diff < TOLERANCE && x0_diff < TOLERANCE, "t={timestep}, {name}: differs from diffusers");
            prevs.push(out.prev_sample);
        }
        // The fixture clips x0, so the two ways differ: the check above could not pass with one of them ignored.
        assert!(max_abs_diff(&prevs[0], &prevs[1]) > 1e-3, "t={timestep}: x0 was not clipped, the case tests nothing");
    }
}

#[test]
fn leading_spacing_with_offset() {
    let config = DdimConfig { steps_offset: 1, ..DdimConfig::default() };
    let scheduler = DdimScheduler::new(&config, 20).unwrap();
    let expected: Vec<i64> = (0..20).rev().map(|i| 50 * i + 1).collect();
    assert_eq!(scheduler.timesteps(), &expected[..]);
    assert_eq!(scheduler.timesteps()[0], 951);
}

#[test]
fn step_counts_outside_the_schedule_are_refused() {
    let config = DdimConfig::default();
    assert!(DdimScheduler::new(&config, 0).is_err());
    assert!(DdimScheduler::new(&config, 1001).is_err());
    assert!(DdimScheduler::new(&config, 1000).is_ok());
    // Leading spacing shifted by steps_offset 1 would put the first of 1000 steps at timestep 1000.
    let err = DdimScheduler::new(&DdimConfig { steps_offset: 1, ..config }, 1000).err().unwrap();
    assert!(format!("{err}").contains("timestep 1000"), "{err}");
}

#[test]
fn other_schedulers_configs_are_read_and_unsupported_fields_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    // SD 1.5's scheduler folder: PNDMScheduler's config, from which pipelines build DDIM.
    std::fs::write(
        &path,
        r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
        "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#,
    )
    .unwrap();
    let config = DdimConfig::from_file(&path).unwrap();
    assert_eq!(config.prediction_type, PredictionType::Epsilon);
    assert!(!config.clip_sample && !config.set_alpha_to_one && config.steps_offset == 1);
    std::fs::write(&path, r#"{"trained_betas": [0.1, 0.2]}"#).unwrap();
    let err = format!("{:#}", DdimConfig::from_file(&path).unwrap_err());
    assert!(err.contains("scheduler_config.json") && err.contains("trained_betas"), "{err}");
    std::fs::write(&path, r#"{"prediction_type": "flow"}"#).unwrap();
    let err = format!("{:#}", DdimConfig::from_file(&path).unwrap_err());
    assert!(err.contains("scheduler_config.json") && err.contains("flow"), "{err}");
}

#[test]
fn step_recovers_the_clean_sample_that_add_noise_noised() {
    tch::manual_seed(0);
    let clean = Tensor::rand([2, 4, 8, 8], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
    let noise = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    for prediction_type in [PredictionType::Epsilon, PredictionType::VPrediction, PredictionType::Sample] {
        let config = DdimConfig { prediction_type, ..DdimConfig::default() };
        let scheduler = DdimScheduler::new(&config, 20).unwrap();
        for &t in scheduler.timesteps() {
            let noisy = scheduler.add_noise(&clean, &noise, t);
            let a = scheduler.alpha_cumprod(t);
            let output = match prediction_type {
                PredictionType::Epsilon => noise.shallow_clone(),
                PredictionType::VPrediction => &noise * a.sqrt() - &clean * (1.0 - a).sqrt(),
                PredictionType::Sample => clean.shallow_clone(),
            };
            let step = scheduler.step(&output, t, &noisy);
            // Epsilon prediction divides by sqrt(alpha_cumprod), small at the noisiest timesteps.
            let diff = max_abs_diff(&step.pred_original_sample, &clean);
            assert!(diff < 1e-4, "{prediction_type:?} at t={t}: x0 off by {diff}");
        }
    }
}

#[test]
fn step_is_differentiable_and_keeps_the_sample_dtype() {
    // Without clipping, which would zero the gradient of clipped elements.
    let config = DdimConfig { beta_schedule: BetaSchedule::ScaledLinear, clip_sample: false, ..DdimConfig::default() };
    let scheduler = DdimScheduler::new(&config, 10).unwrap();
    let t = scheduler.timesteps()[2];
    let prev_t = scheduler.timesteps()[3];
    for kind in [Kind::Float, Kind::Double, Kind::BFloat16] {
        let sample = Tensor::randn([1, 4, 8, 8], (kind, Device::Cpu)).set_requires_grad(true);
        // A model output that depends on the sample, as a UNet's does.
        let output = &sample * 0.5;
        let step = scheduler.step(&output, t, &sample);
        assert_eq!(step.prev_sample.kind(), kind);
        step.prev_sample.sum(Kind::Double).backward();
        // prev = sqrt(a_prev) * (x - sqrt(1 - a) * 0.5 x) / sqrt(a) + sqrt(1 - a_prev) * 0.5 x
        let (a, a_prev) = (scheduler.alpha_cumprod(t), scheduler.alpha_cumprod(prev_t));
        let expected = a_prev.sqrt() * (1.0 - 0.5 * (1.0 - a).sqrt()) / a.sqrt() + 0.5 * (1.0 - a_prev).sqrt();
        let grad = sample.grad().to_kind(Kind::Double);
        let diff = (grad - expected).abs().max().double_value(&[]);
        let tolerance = if kind == Kind::BFloat16 { 2e-2 } else { 1e-6 };
        assert!(diff < tolerance * expected, "{kind:?}: gradient off by {diff} (expected {expected})");
    }
}

/// Guidance that edits the noise estimate (MGD3's mode guidance) hands the sampler the output that noise means;
/// `output_for_epsilon` must invert `predictions` for every prediction type, and agree with the step's x0.
#[test]
fn output_for_epsilon_inverts_predictions_for_every_prediction_type() {
    let _rng = common::global_rng();
    tch::manual_seed(3);
    let sample = Tensor::randn([2, 4, 3, 3], (Kind::Double, Device::Cpu));
    let output = Tensor::randn([2, 4, 3, 3], (Kind::Double, Device::Cpu));
    for prediction_type in [PredictionType::Epsilon, PredictionType::VPrediction, PredictionType::Sample] {
        let config = DdimConfig { prediction_type, clip_sample: false, ..scheduler_config("tiny-sd1") };
        let scheduler = DdimScheduler::new(&config, 10).unwrap();
        let timestep = scheduler.timesteps()[3];
        let (original, epsilon) = scheduler.predictions(&output, timestep, &sample);
        let back = scheduler.output_for_epsilon(&epsilon, timestep, &sample);
        // The coefficients are float32 (as diffusers takes them): a round trip is exact to their rounding.
        assert!(max_abs_diff(&back, &output) < 1e-6, "{prediction_type:?}: {}", max_abs_diff(&back, &output));
        let step = scheduler.step(&output, timestep, &sample);
        assert!(max_abs_diff(&step.pred_original_sample, &original) < 1e-12, "{prediction_type:?}: the step's x0");
    }
}
