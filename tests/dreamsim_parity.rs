//! DreamSim against the `dreamsim` package, on the tiny random ensemble of tests/fixtures/tiny-dreamsim (built by
//! scripts/make_dreamsim_fixture.py with the package's own code, laid out as the package's cache folder).
mod common;
use common::{assert_caught, closeness, copy_dir, fixture, references, Closeness};
use dma::models::dreamsim::{distance, DreamSim};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn dir() -> PathBuf {
    fixture("tiny-dreamsim")
}

/// float32 through three two-layer ViTs (matmuls of depth 64 to 256) at 197 tokens, against the package in
/// float32, relative to each output's largest magnitude: another CPU or BLAS moves a result by a few ulps of its
/// scale (as for CLIP's towers, tests/clip_model_parity.rs), a hundredth of this.
const RTOL: f64 = 1e-5;

/// PIL rounds each of its two bicubic resize passes to 8 bits, which the resize here leaves out: at most 1.25 grey
/// levels (make_clip_fixture.py's bound for the same resize) of 1/255, on pixels in [0, 1] (DreamSim normalises per
/// backbone after).
const PREPROCESS_ATOL: f64 = 1.25 / 255.0;

/// The package's preprocessed pixels, stored as their 8-bit levels: as float32 in [0, 1], ToTensor's values.
fn stored_pixels(refs: &std::collections::HashMap<String, Tensor>) -> Tensor {
    refs["pixels"].to_kind(Kind::Float) / 255.0
}

/// Each backbone's features, the normalised embeddings and the pairwise distances from the reference pixels.
fn parity(model_dir: &Path, kind: Kind) -> Vec<Closeness> {
    let refs = references(dir());
    let model = DreamSim::load(model_dir, Device::Cpu, kind).unwrap();
    let pixels = stored_pixels(&refs).to_kind(kind);
    let label = |what: &str| format!("DreamSim {kind:?} {what}");
    let features = tch::no_grad(|| model.features(&pixels));
    let mut out = Vec::new();
    for (got, name) in features.iter().zip(["dino", "clip", "open_clip"]) {
        out.push(closeness(&label(&format!("{name} features")), got, &refs[&format!("features_{name}")], RTOL, 0.0));
    }
    let embeds = tch::no_grad(|| model.embed_pixels(&pixels));
    out.push(closeness(&label("embeddings"), &embeds, &refs["embeds"], RTOL, 0.0));
    let n = embeds.size()[0];
    let (i, j) = (Tensor::arange(n, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(n, 0, None), Tensor::arange(n, (Kind::Int64, Device::Cpu)).repeat([n]));
    let distances = distance(&embeds.index_select(0, &i), &embeds.index_select(0, &j)).view([n, n]);
    // Distances are differences of cosines near 1: relative to 1, the cosine's own scale.
    out.push(closeness(&label("distances"), &distances, &refs["distances"], 0.0, RTOL));
    out
}

#[test]
fn dreamsim_matches_the_dreamsim_package() {
    for kind in [Kind::Float, Kind::Double] {
        for c in parity(&dir(), kind) {
            c.check();
        }
    }
}

/// The LoRA matters: the embeddings without it (the reference's `embeds_without_lora`) are far from the model's.
#[test]
fn the_ensemble_lora_changes_the_embeddings() {
    let refs = references(dir());
    let c = closeness("embeddings with LoRA against without", &refs["embeds"], &refs["embeds_without_lora"], RTOL, 0.0);
    assert_caught("the adapter left out", &c, 100.0);
}

#[test]
fn dreamsim_preprocessing_matches_the_package_resize() {
    let refs = references(dir());
    let model = DreamSim::load(&dir(), Device::Cpu, Kind::Float).unwrap();
    closeness("DreamSim resize", &model.preprocess(&refs["images"]).unwrap(), &stored_pixels(&refs), 0.0, PREPROCESS_ATOL).check();
}

/// A copy of the fixture with one LoRA factor 1% larger fails the CLIP features by orders of magnitude; DINO's,
/// which it does not touch, still pass.
#[test]
fn a_lora_factor_one_percent_off_fails_the_dreamsim_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("dreamsim");
    copy_dir(&dir(), &copy);
    let adapter = ["adapter_model.safetensors", "adapter_model.bin"].map(|f| copy.join("ensemble_lora").join(f)).into_iter().find(|f| f.is_file()).unwrap();
    let mut tensors = dma::weights::read_weight_file(&adapter).unwrap();
    let key = "base_model.model.extractor_list.1.model.blocks.0.attn.qkv.lora_B.weight";
    let entry = tensors.iter_mut().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no `{key}`"));
    entry.1 = (&entry.1 * 1.01).to_kind(entry.1.kind());
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    std::fs::remove_file(&adapter).unwrap();
    dma::weights::write_safetensors(&copy.join("ensemble_lora/adapter_model.safetensors"), &named).unwrap();
    let mut results = parity(&copy, Kind::Float).into_iter();
    results.next().unwrap().check();
    assert_caught(&format!("{key} x 1.01"), &results.next().unwrap(), 100.0);
}

#[test]
fn dreamsim_bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = format!("{:#}", DreamSim::load(&tmp.path().join("nothing"), Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("nothing"), "{err}");
    // A backbone file missing, truncated, or another model's weights.
    for (name, damage) in [("missing", 0usize), ("truncated", 1), ("foreign", 2)] {
        let copy = tmp.path().join(name);
        copy_dir(&dir(), &copy);
        let file = copy.join("clip_vitb16_pretrain.pth.tar");
        match damage {
            0 => std::fs::remove_file(&file).unwrap(),
            1 => {
                let bytes = std::fs::read(&file).unwrap();
                std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
            }
            _ => {
                std::fs::copy(fixture("tiny-image-reward/ImageReward.pt"), &file).unwrap();
            }
        }
        let err = format!("{:#}", DreamSim::load(&copy, Device::Cpu, Kind::Float).err().unwrap());
        assert!(err.contains("clip_vitb16_pretrain.pth.tar"), "{name}: {err}");
    }
    // No adapter.
    let copy = tmp.path().join("no-adapter");
    copy_dir(&dir(), &copy);
    std::fs::remove_dir_all(copy.join("ensemble_lora")).unwrap();
    let err = format!("{:#}", DreamSim::load(&copy, Device::Cpu, Kind::Float).err().unwrap());
    assert!(err.contains("ensemble_lora"), "{err}");
}
