//! Shared by the integration tests: the committed fixtures and their diffusers reference outputs.
#![allow(dead_code)]
use dma::weights::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A fixture under tests/fixtures (`tiny-sd1`, `tiny-sd2`, `tiny-clip/grayscale`, ...); an absolute path is kept.
pub fn fixture(name: impl AsRef<Path>) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// The reference tensors the reference implementation produced for a fixture (reference.safetensors).
pub fn references(name: impl AsRef<Path>) -> HashMap<String, Tensor> {
    read_safetensors(&fixture(name).join("reference.safetensors")).unwrap().into_iter().collect()
}

/// reference.json of a fixture.
pub fn reference_json(name: impl AsRef<Path>) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON file a run wrote.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs().max().double_value(&[])
}

/// Seeded noise and training draw from libtorch's one global generator, so tests that need reproducible random
/// numbers hold this lock: the test harness runs a file's tests on parallel threads.
pub fn global_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Central finite differences of `loss` at the leaves `params` (shifted in place by `eps` along three random
/// directions), against autograd's directional derivative; fails above `tolerance` relative error.
pub fn check_gradient(params: &[Tensor], loss: &dyn Fn() -> Tensor, eps: f64, tolerance: f64) {
    let grads = Tensor::run_backward(&[loss()], params, false, false);
    for seed in 0..3 {
        tch::manual_seed(100 + seed);
        let directions: Vec<Tensor> = params.iter().map(Tensor::randn_like).collect();
        let analytic: f64 = grads.iter().zip(&directions).map(|(g, d)| (g * d).sum(Kind::Double).double_value(&[])).sum();
        let shift = |sign: f64| {
            tch::no_grad(|| {
                for (p, d) in params.iter().zip(&directions) {
                    let _ = p.shallow_clone().g_add_(&(d * (sign * eps)));
                }
            })
        };
        shift(1.0);
        let plus = tch::no_grad(loss).double_value(&[]);
        shift(-2.0);
        let minus = tch::no_grad(loss).double_value(&[]);
        shift(1.0);
        let numeric = (plus - minus) / (2.0 * eps);
        let relative = (analytic - numeric).abs() / numeric.abs().max(1e-12);
        println!("direction {seed}: autograd {analytic:.10e}, finite differences {numeric:.10e}, relative error {relative:.2e}");
        assert!(relative < tolerance, "gradient disagrees with finite differences: {analytic} vs {numeric}");
    }
}
