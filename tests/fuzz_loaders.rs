//! The loaders against mutated copies of real fixtures (issue "Long runs that survive"): safetensors headers,
//! config.json files, tokenizer files, a single-file checkpoint, a CLIP model and an init-latents file. Every case must end in
//! `Ok` or a clear `Err` within a time limit: no panic, no hang, no allocation a lying header asks for.
//!
//! The mutations are seeded, so a failing case reproduces from its number. `DMA_FUZZ_CASES` sets the cases per
//! target (default 60, which keeps the suite quick; a longer run is recorded in BENCHMARKS.md).
mod common;
use common::fixture;
use dma::evaluation::clip_embedder::ClipEmbedder;
use dma::pipelines::mental_average::check_latents;
use dma::models::tokenizer::Tokenizer;
use dma::pipelines::defaults::RunDefaults;
use dma::pipelines::{single_file, ModelSource, StableDiffusion};
use dma::weights::{read_safetensors, write_safetensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Longest a single load may take before it counts as a hang.
const LIMIT: Duration = Duration::from_secs(20);

fn cases() -> u64 {
    std::env::var("DMA_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

/// xorshift64*: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values a lying or careless file might hold where a number or a list is expected.
fn extreme(rng: &mut Rng) -> Value {
    let choices = [
        Value::from(0),
        Value::from(-1),
        Value::from(1u64 << 40),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1e300),
        Value::from(0.5),
        Value::Null,
        Value::from("x"),
        Value::Array(vec![]),
        Value::Array(vec![Value::from(1u64 << 40); 3]),
        serde_json::json!({}),
    ];
    choices[rng.below(choices.len())].clone()
}

/// Replaces one leaf of `value` (or deletes one key) at random.
fn mutate_json(value: &mut Value, rng: &mut Rng) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
            match rng.below(4) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(key, extreme(rng));
                }
                _ => mutate_json(map.get_mut(&key).unwrap(), rng),
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.below(items.len());
            if rng.below(3) == 0 {
                items[i] = extreme(rng);
            } else {
                mutate_json(&mut items[i], rng);
            }
        }
        leaf => *leaf = extreme(rng),
    }
}

/// Byte-level damage: flipped bits, overwritten runs, truncation, insertion, within `hot` bytes of the start
/// (where headers are) most of the time.
fn mutate_bytes(bytes: &[u8], hot: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let span = if rng.below(4) == 0 { out.len() } else { hot.clamp(1, out.len().max(1)) };
    for _ in 0..1 + rng.below(3) {
        if out.is_empty() {
            break;
        }
        let at = rng.below(span.min(out.len()));
        match rng.below(5) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                for b in &mut out[at..end] {
                    *b = rng.next() as u8;
                }
            }
            2 => out.truncate(at),
            3 => {
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, junk);
            }
            _ => out[at] = [b'0', b'9', b'-', b'"', b'{', b']', b',', 0xff][rng.below(8)],
        }
    }
    out
}

/// A safetensors file's header length, as stored in its first 8 bytes.
fn header_length(bytes: &[u8]) -> usize {
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Damages a safetensors file: its header's JSON (shapes, offsets, dtypes), its header length, or its bytes.
fn mutate_safetensors(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let n = header_length(bytes);
    match rng.below(4) {
        0 => {
            // The header JSON, edited as JSON: a tensor whose shape or offsets lie about the data.
            let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
            mutate_json(&mut header, rng);
            let text = serde_json::to_vec(&header).unwrap();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text);
            out.extend(&bytes[8 + n..]);
            out
        }
        1 => {
            // A lying header length: larger than the file, or absurdly large.
            let lie: u64 = [u64::MAX, 1 << 62, bytes.len() as u64, n as u64 + 1, 0][rng.below(5)];
            let mut out = bytes.to_vec();
            out[..8].copy_from_slice(&lie.to_le_bytes());
            out
        }
        _ => mutate_bytes(bytes, 8 + n, rng),
    }
}

/// Damages a text or JSON file.
fn mutate_text(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    if let (0 | 1, Ok(mut json)) = (rng.below(3), serde_json::from_slice::<Value>(bytes)) {
        mutate_json(&mut json, rng);
        return serde_json::to_vec_pretty(&json).unwrap();
    }
    mutate_bytes(bytes, bytes.len(), rng)
}

/// Runs `load` on its own thread; fails the test on a panic or when it takes longer than `LIMIT`.
fn survives(what: &str, case: u64, load: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(result)) => result.is_err(),
        Ok(Err(panic)) => {
            let message = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{what}, case {case}: the loader panicked: {message:?}");
        }
        Err(_) => panic!("{what}, case {case}: the loader did not return within {LIMIT:?}"),
    }
}

/// A copy of the fixture folder `name` in `dir`.
fn copy_fixture(dir: &Path, name: &str) -> PathBuf {
    let target = dir.join(name);
    let source = fixture(name);
    for entry in walk(&source) {
        let relative = entry.strip_prefix(&source).unwrap();
        let to = target.join(relative);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    target
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Mutates `file` (relative to a fresh copy of the fixture) `cases()` times and loads the whole model each time.
fn fuzz_model_file(file: &str, seed: u64, mutate: fn(&[u8], &mut Rng) -> Vec<u8>) {
    fuzz_file("tiny-sd1", file, seed, mutate, |dir| StableDiffusion::load_folder(dir, Device::Cpu, Kind::Float).map(|_| ()));
}

/// Mutates `file` of a fresh copy of the fixture `name` `cases()` times, and runs `load` on the folder each time.
fn fuzz_file(name: &str, file: &str, seed: u64, mutate: fn(&[u8], &mut Rng) -> Vec<u8>, load: fn(&Path) -> anyhow::Result<()>) {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture(tmp.path(), name);
    let original = std::fs::read(model.join(file)).unwrap();
    let (started, mut rejected) = (Instant::now(), 0);
    for case in 0..cases() {
        let mut rng = Rng::new(seed * 1_000_003 + case);
        std::fs::write(model.join(file), mutate(&original, &mut rng)).unwrap();
        let dir = model.clone();
        rejected += survives(file, case, move || load(&dir)) as u64;
    }
    println!("{name}/{file}: {} cases, {rejected} rejected with an error, {:.1} s", cases(), started.elapsed().as_secs_f64());
}

#[test]
fn damaged_unet_weights_never_panic() {
    fuzz_model_file("unet/diffusion_pytorch_model.safetensors", 1, mutate_safetensors);
}

#[test]
fn damaged_text_encoder_and_vae_weights_never_panic() {
    fuzz_model_file("text_encoder/model.safetensors", 2, mutate_safetensors);
    fuzz_model_file("vae/diffusion_pytorch_model.safetensors", 3, mutate_safetensors);
}

#[test]
fn damaged_configs_never_panic() {
    for (i, file) in ["unet/config.json", "text_encoder/config.json", "vae/config.json", "scheduler/scheduler_config.json", "model_index.json"]
        .iter()
        .enumerate()
    {
        fuzz_model_file(file, 10 + i as u64, mutate_text);
    }
}

#[test]
fn damaged_tokenizer_files_never_panic() {
    for (i, file) in ["tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json"].iter().enumerate() {
        fuzz_model_file(file, 20 + i as u64, mutate_text);
    }
}

#[test]
fn the_embedded_model_s_word_tokenizer_and_defaults_never_panic() {
    let embedded = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/embedded");
    let tmp = tempfile::tempdir().unwrap();
    for (i, (file, load)) in [
        ("tokenizer/tokenizer.json", (|dir: &Path| Tokenizer::from_folder(&dir.join("tokenizer")).map(|_| ())) as fn(&Path) -> anyhow::Result<()>),
        ("tokenizer/tokenizer_config.json", |dir: &Path| Tokenizer::from_folder(&dir.join("tokenizer")).map(|_| ())),
        ("dma_defaults.json", |dir: &Path| RunDefaults::for_source(&ModelSource::Folder(dir.to_path_buf())).map(|_| ())),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("case{i}"));
        std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
        for name in ["tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "dma_defaults.json"] {
            std::fs::copy(embedded.join(name), dir.join(name)).unwrap();
        }
        let original = std::fs::read(dir.join(file)).unwrap();
        for case in 0..cases() {
            let mut rng = Rng::new((60 + i as u64) * 1_000_003 + case);
            std::fs::write(dir.join(file), mutate_text(&original, &mut rng)).unwrap();
            let folder = dir.clone();
            survives(file, case, move || load(&folder));
        }
    }
}

#[test]
fn damaged_clip_files_never_panic() {
    let load: fn(&Path) -> anyhow::Result<()> = |dir| ClipEmbedder::load(dir, Device::Cpu).map(|_| ());
    fuzz_file("tiny-clip", "config.json", 50, mutate_text, load);
    fuzz_file("tiny-clip", "preprocessor_config.json", 51, mutate_text, load);
    fuzz_file("tiny-clip", "model.safetensors", 52, mutate_safetensors, load);
}

#[test]
fn a_damaged_single_file_checkpoint_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let original = std::fs::read(fixture("tiny-sd1").join("ldm.safetensors")).unwrap();
    let file = tmp.path().join("ldm.safetensors");
    let (started, mut rejected) = (Instant::now(), 0);
    for case in 0..cases() {
        let mut rng = Rng::new(30 * 1_000_003 + case);
        std::fs::write(&file, mutate_safetensors(&original, &mut rng)).unwrap();
        let path = file.clone();
        rejected += survives("ldm.safetensors", case, move || {
            single_file::load_with_configs(&path, &fixture("tiny-sd1"), Device::Cpu, Kind::Float).map(|_| ())
        }) as u64;
    }
    println!("ldm.safetensors: {} cases, {rejected} rejected, {:.1} s", cases(), started.elapsed().as_secs_f64());
}

#[test]
fn damaged_init_latents_never_panic() {
    let _rng = common::global_rng();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("latents.safetensors");
    tch::manual_seed(0);
    write_safetensors(&file, &[("latents", &Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu)))]).unwrap();
    let original = std::fs::read(&file).unwrap();
    for case in 0..cases() {
        let mut rng = Rng::new(40 * 1_000_003 + case);
        std::fs::write(&file, mutate_safetensors(&original, &mut rng)).unwrap();
        let path = file.clone();
        survives("init latents", case, move || {
            // The model is loaded on the loader's thread: tensors cannot be shared across threads.
            let model = StableDiffusion::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Float)?;
            let tensors = read_safetensors(&path)?;
            let (_, latents) = tensors.into_iter().find(|(n, _)| n == "latents").ok_or_else(|| anyhow::anyhow!("no `latents`"))?;
            check_latents(&model, &latents, "--init-latents")
        });
    }
}

#[test]
fn a_header_that_claims_more_than_the_file_holds_is_refused_without_allocating_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lying.safetensors");
    // A header naming a 2^40-element tensor in a file of a few bytes.
    let header = br#"{"x":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 16]);
    std::fs::write(&file, bytes).unwrap();
    let error = read_safetensors(&file).unwrap_err().to_string();
    assert!(error.contains("lying.safetensors") && error.contains("not a valid safetensors file"), "{error}");
}
