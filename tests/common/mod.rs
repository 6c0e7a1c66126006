//! Shared by the integration tests: the committed fixtures and their diffusers reference outputs.
#![allow(dead_code)]
use dma::weights::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

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

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)).abs().max().double_value(&[])
}

/// Seeded noise and training draw from libtorch's one global generator, so tests that need reproducible random
/// numbers hold this lock: the test harness runs a file's tests on parallel threads.
pub fn global_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
