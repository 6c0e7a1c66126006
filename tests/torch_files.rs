//! PyTorch checkpoint files (tests/fixtures/torch-files, scripts/make_torch_file_fixture.py, written by torch.save)
//! read to the tensors torch.load gives: every dtype, views with offsets and strides, shared storages, parameters,
//! nested dicts, a Lightning checkpoint's state dict; diffusers' .bin weights and an SD .ckpt load as their
//! safetensors twins do; a pickle that names any other global, the legacy format and a compressed archive are each
//! refused with one clear error.
mod common;
use common::fixture;
use dma::weights::torch_file::read_torch_file;
use dma::weights::{read_safetensors, read_weight_file};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

fn files(name: &str) -> std::path::PathBuf {
    fixture("torch-files").join(name)
}

fn by_name(tensors: Vec<(String, Tensor)>) -> BTreeMap<String, Tensor> {
    tensors.into_iter().collect()
}

/// Same keys, and each tensor identical in dtype, shape and every bit.
fn assert_same(read: &BTreeMap<String, Tensor>, expected: &BTreeMap<String, Tensor>) {
    assert_eq!(read.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (name, want) in expected {
        let got = &read[name];
        assert_eq!((got.kind(), got.size()), (want.kind(), want.size()), "`{name}`: dtype and shape");
        assert!(got.equal(want), "`{name}`: {got:?} where torch has {want:?}");
        assert!(got.is_contiguous(), "`{name}` is handed out contiguous");
    }
}

#[test]
fn a_state_dict_reads_as_torch_load_gives_it() {
    let read = by_name(read_torch_file(&files("state_dict.pt")).unwrap());
    let expected = by_name(read_safetensors(&files("expected.safetensors")).unwrap());
    assert_same(&read, &expected);
    // Tensors that shared a storage in the file are independent once read.
    let _ = read["base"].shallow_clone().fill_(0.0);
    assert_eq!(read["offset_view"].double_value(&[0]), 2.0, "the view starts at element 2 of its own copy");
    assert_eq!(read["transposed"].size(), [4, 3]);
}

#[test]
fn a_lightning_checkpoint_gives_its_state_dict() {
    let read = by_name(read_weight_file(&files("lightning.ckpt")).unwrap());
    assert_same(&read, &by_name(read_safetensors(&files("expected_lightning.safetensors")).unwrap()));
}

#[test]
fn checkpoints_that_are_not_plain_tensors_are_refused_naming_why() {
    for (file, says) in [
        ("hostile.pt", "the pickle names `posix.system`, which is not part of a tensor or a state dict; refused"),
        ("legacy.pt", "legacy format (before 1.6)"),
        ("deflated.pt", "is compressed (method 8)"),
        ("expected.safetensors", "not a zip archive"),
    ] {
        let error = format!("{:#}", read_torch_file(&files(file)).unwrap_err());
        assert!(error.contains(file) && error.contains(says), "{file}: {error}");
    }
    let error = format!("{:#}", read_torch_file(&fixture("torch-files")).unwrap_err());
    assert!(error.contains("is a folder, not a PyTorch checkpoint"), "{error}");
}

/// A diffusers folder whose transformer has only diffusion_pytorch_model.bin loads and predicts as the
/// safetensors folder does.
#[test]
fn a_diffusers_folder_with_bin_weights_loads_as_with_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("tiny-dit");
    common::copy_dir(&fixture("tiny-dit"), &folder);
    std::fs::remove_file(folder.join("transformer/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::copy(files("tiny-dit-transformer.bin"), folder.join("transformer/diffusion_pytorch_model.bin")).unwrap();
    let predict = |dir: &std::path::Path| {
        let model = dma::loaders::load_folder(dir, Device::Cpu, Kind::Float).unwrap();
        tch::manual_seed(0);
        let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
        tch::no_grad(|| model.denoiser.predict(&x, &Tensor::from(300i64), &model.condition("class 3").unwrap()).noise)
    };
    assert!(predict(&folder).equal(&predict(&fixture("tiny-dit"))));
}

/// An SD 1.x single-file .ckpt (a Lightning checkpoint) loads the same weights as its .safetensors twin (the tiny
/// model's configs from its folder, as `--config` gives them), and `--model x.ckpt` is a single-file checkpoint.
#[test]
fn a_single_file_ckpt_loads_as_its_safetensors_twin() {
    let configs = fixture("tiny-sd1");
    let load = |path: std::path::PathBuf| dma::loaders::single_file::load_with_configs(&path, &configs, Device::Cpu, Kind::Float).unwrap();
    let (ckpt, safetensors) = (load(files("ldm.ckpt")), load(configs.join("ldm.safetensors")));
    tch::manual_seed(0);
    let x = Tensor::randn([1, 4, 16, 16], (Kind::Float, Device::Cpu));
    let predict = |m: &dma::pipelines::DiffusionModel| tch::no_grad(|| m.denoiser.predict(&x, &Tensor::from(300i64), &m.condition("a photo of a dog").unwrap()).noise);
    assert!(predict(&ckpt).equal(&predict(&safetensors)));
    assert!(ckpt.decode(&x).equal(&safetensors.decode(&x)));
    let source = dma::loaders::ModelSource::resolve(files("ldm.ckpt").to_str().unwrap()).unwrap();
    assert!(matches!(source, dma::loaders::ModelSource::SingleFile(_)));
}
