//! The DDIM scheduler against diffusers' DDIMScheduler on the committed tiny SD 1- and SD 2-style fixtures, and its
//! properties that need no fixture.
mod common;
use common::{assert_caught, assert_close, closeness, fixture, max_abs_diff, reference_json, references, Closeness, EPS_F32};
use dma::schedulers::ddim::{BetaSchedule, DdimConfig, DdimScheduler, PredictionType};
use tch::{Device, Kind, Tensor};

/// The step is a few float32 multiplications, a subtraction and a division per element (diffusers' ops in
/// diffusers' order), with coefficients from linspace, pow, cumprod and sqrt. Another CPU or math library may fuse
/// a multiply-add, divide where this one multiplies by a reciprocal, or round a coefficient one ulp apart (a vector
/// math library's CPU-specific path, say): a few ulps of the largest term. Dividing by sqrt(alpha_cumprod) (0.40 at
/// the fixture's t = 601, 0.07 at t = 999) scales the terms and their rounding alike, so the bound is relative to
/// the output's largest magnitude: 16 float32 epsilons of it (8 to 16 of its ulps). (An Intel Xeon measured 1.43e-6
/// on pred_x0 of magnitude 11.4, 1.5 ulps, where the old absolute 1e-6 failed; this bound is 2.2e-5 there.)
const RTOL: f64 = 16.0 * EPS_F32;

fn scheduler_config(name: &str) -> DdimConfig {
    DdimConfig::from_file(&fixture(name).join("scheduler").join("scheduler_config.json")).unwrap()
}

/// One DDIM step of the fixture `name` with the scheduler `config`, against diffusers' prev_sample and
/// pred_original_sample.
fn ddim_step(name: &str, config: &DdimConfig) -> Vec<Closeness> {
    let refs = references(name);
    let json = reference_json(name);
    let steps = json["num_inference_steps"].as_u64().unwrap() as usize;
    let timestep = json["ddim_step_timestep"].as_i64().unwrap();
    let scheduler = DdimScheduler::new(config, steps).unwrap();
    let out = scheduler.step(&refs["ddim_step_model_output"], timestep, &refs["ddim_step_sample"]);
    vec![
        closeness(&format!("{name} prev_sample at t={timestep}"), &out.prev_sample, &refs["ddim_step_prev"], RTOL, 0.0),
        closeness(&format!("{name} pred_original_sample at t={timestep}"), &out.pred_original_sample, &refs["ddim_step_pred_x0"], RTOL, 0.0),
    ]
}

fn check_ddim(name: &str, prediction_type: PredictionType) {
    let refs = references(name);
    let config = scheduler_config(name);
    assert_eq!(config.prediction_type, prediction_type);
    for (steps, key) in [(10, "ddim_timesteps"), (20, "ddim_timesteps_20")] {
        let expected = Vec::<i64>::try_from(&refs[key]).unwrap();
        assert_eq!(DdimScheduler::new(&config, steps).unwrap().timesteps(), &expected[..], "{name}: {steps} steps");
    }
    for c in ddim_step(name, &config) {
        c.check();
    }
}

#[test]
fn sd1_ddim_matches_diffusers() {
    check_ddim("tiny-sd1", PredictionType::Epsilon);
}

#[test]
fn sd2_ddim_matches_diffusers() {
    check_ddim("tiny-sd2", PredictionType::VPrediction);
}

/// The tolerance still catches a schedule that is slightly wrong: beta_end 1% too large (alpha_cumprod at t = 601
/// then off by about 1%) fails every comparison by two to three orders of magnitude (BENCHMARKS.md, "Parity tests:
/// tolerances and margins").
#[test]
fn a_slightly_wrong_schedule_fails_the_ddim_parity_by_orders_of_magnitude() {
    for name in ["tiny-sd1", "tiny-sd2"] {
        let config = scheduler_config(name);
        let wrong = DdimConfig { beta_end: config.beta_end * 1.01, ..config };
        for c in ddim_step(name, &wrong) {
            assert_caught("beta_end x 1.01", &c, 100.0);
        }
    }
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
            assert_close(&format!("t={timestep} {name} prev_sample"), &out.prev_sample, &refs[&format!("t{timestep}_{name}_prev")], RTOL, 0.0);
            assert_close(&format!("t={timestep} {name} pred_x0"), &out.pred_original_sample, &refs[&format!("t{timestep}_{name}_pred_x0")], RTOL, 0.0);
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
    let _rng = common::global_rng();
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
            // float32 rounding of the noisy sample and of the step's terms: a few ulps of the largest term, which
            // epsilon prediction divides by sqrt(alpha_cumprod) (0.010 at t = 950 here), so the bound is scaled so.
            let terms = noisy.abs().max().double_value(&[]) + output.abs().max().double_value(&[]);
            let amplification = if prediction_type == PredictionType::Epsilon { 1.0 / a.sqrt() } else { 1.0 };
            let tolerance = 16.0 * EPS_F32 * terms * amplification;
            let diff = max_abs_diff(&step.pred_original_sample, &clean);
            assert!(diff <= tolerance, "{prediction_type:?} at t={t}: x0 off by {diff:e}, tolerance {tolerance:e}");
        }
    }
}

#[test]
fn step_is_differentiable_and_keeps_the_sample_dtype() {
    let _rng = common::global_rng();
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
        // Relative bounds: the step's coefficients are float32 roundings of these square roots (also in float64,
        // as diffusers takes them), and the backward pass rounds each of its ~6 products and sums once: 8 ulps of
        // float32, or 4 of bfloat16 (2^-7 apart at 1) whose every rounding is 128 times coarser.
        let tolerance = if kind == Kind::BFloat16 { 4.0 * EPS_BF16 } else { 8.0 * EPS_F32 };
        println!("{kind:?}: gradient {expected:.6} off by {:.2e} (relative tolerance {tolerance:.1e})", diff / expected);
        assert!(diff <= tolerance * expected, "{kind:?}: gradient off by {diff} (expected {expected})");
    }
}

/// bfloat16's machine epsilon: 7 stored mantissa bits.
const EPS_BF16: f64 = 1.0 / 128.0;

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
        // The coefficients are float32 roundings of sqrt(alpha) and sqrt(1 - alpha) (as diffusers takes them), so
        // their squares sum to 1 only to a few float32 ulps, and the round trip through x0 divides by sqrt(alpha):
        // the float64 round trip is exact to 16 float32 ulps of its terms over sqrt(alpha).
        let a = scheduler.alpha_cumprod(timestep);
        let terms = sample.abs().max().double_value(&[]) + output.abs().max().double_value(&[]);
        let c = common::closeness(&format!("{prediction_type:?} round trip"), &back, &output, 0.0, 16.0 * EPS_F32 * terms / a.sqrt());
        c.check();
        // The step takes its x0 from `predictions` itself (clip_sample is off): the same function on the same
        // inputs, so exactly equal.
        let step = scheduler.step(&output, timestep, &sample);
        assert!(step.pred_original_sample.equal(&original), "{prediction_type:?}: the step's x0 differs from predictions'");
    }
}
