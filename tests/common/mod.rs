//! Shared by the integration tests: the committed fixtures and their diffusers reference outputs.
#![allow(dead_code)]
use dma::weights::read_safetensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// float32's machine epsilon, 2^-23: the spacing of floats just above 1, so a rounding moves a value x by at most
/// `EPS_F32 / 2 * |x|`. Tolerances below are written as multiples of it.
pub const EPS_F32: f64 = f32::EPSILON as f64;

/// How far a result is from its reference: the largest elementwise difference, against
/// `tolerance = rtol * max |want| + atol`.
///
/// The bound is scaled to the reference's largest magnitude rather than to each element: the rounding of a sum,
/// a matmul or a convolution (which another CPU, BLAS or oneDNN build does in another order, with or without FMA)
/// is relative to the terms it adds, so an element that cancels to near zero still carries the error of its large
/// terms, and a per-element relative bound would fail on it.
#[derive(Debug)]
pub struct Closeness {
    pub what: String,
    /// max |got - want|; NaN when either holds a NaN.
    pub diff: f64,
    /// max |want|.
    pub scale: f64,
    pub tolerance: f64,
}

impl Closeness {
    /// The difference in units of the tolerance: below 1 passes; a bug's ratio is the margin by which it fails.
    pub fn ratio(&self) -> f64 {
        self.diff / self.tolerance
    }

    pub fn passes(&self) -> bool {
        // Written so that a NaN difference fails.
        self.diff <= self.tolerance
    }
}

/// Measures `got` against `want` (same shape) with the tolerance `rtol * max |want| + atol`; asserts nothing.
pub fn closeness(what: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Closeness {
    assert_eq!(got.size(), want.size(), "{what}: shapes differ");
    let (got, want) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    let diff = (&got - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]);
    Closeness { what: what.to_string(), diff, scale, tolerance: rtol * scale + atol }
}

/// Asserts that `got` is within `rtol * max |want| + atol` of `want` everywhere, printing the measured difference,
/// the reference's scale and the share of the tolerance used.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Closeness {
    closeness(what, got, want, rtol, atol).check()
}

impl Closeness {
    /// Prints the measurement and asserts that it is within the tolerance.
    pub fn check(self) -> Self {
        println!(
            "{}: max |got - want| {:.2e}, max |want| {:.3e}, tolerance {:.2e}: {:.1}% used",
            self.what,
            self.diff,
            self.scale,
            self.tolerance,
            100.0 * self.ratio()
        );
        assert!(
            self.passes(),
            "{}: differs from the reference by {:e}, above the tolerance {:e} (max |want| {:e})",
            self.what,
            self.diff,
            self.tolerance,
            self.scale
        );
        self
    }
}

/// The other half of a parity test: with a deliberate bug (`bug` says which), the comparison must fail by at least
/// `min_ratio` times its tolerance, so a real mistake cannot hide inside it. Prints the margin (BENCHMARKS.md,
/// "Parity tests: tolerances and margins").
pub fn assert_caught(bug: &str, c: &Closeness, min_ratio: f64) {
    println!(
        "margin: {bug}: {} differs by {:.2e} against a tolerance of {:.2e}: {:.0}x the tolerance",
        c.what,
        c.diff,
        c.tolerance,
        c.ratio()
    );
    assert!(
        c.ratio() >= min_ratio,
        "{bug}: {} moved only {:.1}x its tolerance ({:e} against {:e}); a bug must fail by at least {min_ratio}x",
        c.what,
        c.ratio(),
        c.diff,
        c.tolerance
    );
}

/// A copy of the fixture folder `name` in `dir` with the tensor `key` of `file` (relative to the folder) replaced
/// by `edit` of it (kept in the file's dtype): the same model with one weight wrong, for the parity tests' margins.
pub fn fixture_with_edited_tensor(dir: &Path, name: &str, file: &str, key: &str, edit: impl Fn(&Tensor) -> Tensor) -> PathBuf {
    let source = fixture(name);
    let target = dir.join(name.replace('/', "_"));
    copy_dir(&source, &target);
    let path = target.join(file);
    let mut tensors = read_safetensors(&path).unwrap();
    let entry = tensors.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{file} has no `{key}`"));
    let edited = edit(&entry.1).to_kind(entry.1.kind()).contiguous();
    assert!(!edited.equal(&entry.1), "the edit of `{key}` changes nothing");
    entry.1 = edited;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    dma::weights::write_safetensors(&path, &named).unwrap();
    target
}

/// Copies the folder `from` (recursively) to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
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

/// Debian's Chromium (scripts/setup_chromium.sh installs it; `scripts/test.sh` runs that).
pub fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("DMA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(path.is_file(), "no Chromium at {}: run scripts/setup_chromium.sh (scripts/test.sh does)", path.display());
    path
}

/// What a headless Chromium makes of `page`: (images decoded, images in all, plot lines drawn), read from the DOM
/// after load by a script appended to a copy of the page (the report itself runs no script).
pub fn render(page: &Path) -> (usize, usize, usize) {
    let html = std::fs::read_to_string(page).unwrap();
    let probe = "<script>window.addEventListener('load', () => { const images = [...document.images]; \
        document.body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length; \
        document.body.dataset.total = images.length; \
        document.body.dataset.lines = document.querySelectorAll('svg polyline').length; });</script>";
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("probe.html");
    std::fs::write(&copy, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let output = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .arg(format!("file://{}", copy.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let attribute = |name: &str| -> usize {
        let key = format!("data-{name}=\"");
        let start = dom.find(&key).unwrap_or_else(|| panic!("Chromium did not render the page: {}", String::from_utf8_lossy(&output.stderr))) + key.len();
        dom[start..].split('"').next().unwrap().parse().unwrap()
    };
    (attribute("decoded"), attribute("total"), attribute("lines"))
}

/// `value` without the seconds anything took (they differ between any two runs): the keys that name seconds, at
/// any depth.
pub fn without_seconds(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(fields) => fields.iter().filter(|(k, _)| !k.contains("seconds")).map(|(k, v)| (k.clone(), without_seconds(v))).collect(),
        serde_json::Value::Array(items) => items.iter().map(without_seconds).collect(),
        other => other.clone(),
    }
}

/// The UNet of a Stable Diffusion model (panics for another family).
pub fn unet_of(model: &dma::pipelines::DiffusionModel) -> &dma::models::unet::UNet2DConditionModel {
    match &model.denoiser.network {
        dma::models::denoiser::Network::UNet(unet) => unet,
        _ => panic!("the model is not a UNet model"),
    }
}

/// The text encoder's output for `prompt` (panics for a class-conditional model).
pub fn text_condition(model: &dma::pipelines::DiffusionModel, prompt: &str) -> Tensor {
    match model.condition(prompt).unwrap() {
        dma::models::denoiser::Condition::Text(hidden) => hidden,
        _ => panic!("the model is not text-conditioned"),
    }
}

/// Every aligned step of a DMA run's log lowered both the spread of h and the alignment loss.
pub fn assert_every_step_aligns(log: &[dma::method::StepLog]) {
    for step in log {
        println!("{step:?}");
        assert!(step.spread_after < step.spread_before, "step {}: spread {} -> {}", step.step, step.spread_before, step.spread_after);
        assert!(step.loss_after < step.loss_before, "step {}: loss {} -> {}", step.step, step.loss_before, step.loss_after);
    }
}
