//! Resolving --model: a folder, or a Hugging Face repo id found offline in the local cache.
mod common;
use common::fixture;
use dma::loaders::ModelSource;
use std::process::Command;

/// A fake HF cache holding the tiny SD 1 fixture as `tiny-org/tiny-sd1` at revision `0123abc`.
fn fake_hf_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub").join("models--tiny-org--tiny-sd1");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abc").unwrap();
    std::os::unix::fs::symlink(fixture("tiny-sd1"), repo.join("snapshots").join("0123abc")).unwrap();
    home
}

#[test]
fn a_repo_id_runs_from_the_local_cache() {
    let home = fake_hf_home();
    let out = home.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_CACHE")
        .args(["sample", "--model", "tiny-org/tiny-sd1", "--prompt", "a dog", "--num", "2", "--steps", "2", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert!(run["model"]["source"].as_str().unwrap().contains("snapshots/0123abc"));
}

#[test]
fn a_repo_id_missing_from_the_cache_says_where_it_looked() {
    let home = fake_hf_home();
    std::env::set_var("HF_HUB_CACHE", home.path().join("hub"));
    let err = ModelSource::resolve("someone/not-there").unwrap_err().to_string();
    assert!(err.contains("models--someone--not-there") && err.contains("Hugging Face cache"), "{err}");
}

#[test]
fn a_folder_resolves_to_its_absolute_path() {
    let source = ModelSource::resolve(fixture("tiny-sd1").to_str().unwrap()).unwrap();
    assert!(matches!(source, ModelSource::Folder(ref p) if p.is_absolute()));
}

/// A copy of the tiny SD 1 fixture with a dma_defaults.json.
fn model_with_defaults(json: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-sd1")).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), model.join(entry.file_name())).unwrap();
    }
    std::fs::write(model.join("dma_defaults.json"), json).unwrap();
    tmp
}

#[test]
fn a_model_folder_can_recommend_its_run_defaults() {
    let tmp = model_with_defaults(r#"{"latents": 3, "steps": 4, "iters": 2, "align_steps": 2}"#);
    let out = tmp.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", tmp.path().join("model").to_str().unwrap(), "--prompt", "a dog", "--quiet", "--iters", "3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["latents"], 3, "from dma_defaults.json");
    assert_eq!(run["sampling"]["steps"], 4, "from dma_defaults.json");
    assert_eq!(run["alignment"]["iters"], 3, "a flag overrides the model's default");
    assert_eq!(run["sampling"]["guidance"], 7.0, "what the file leaves out keeps the paper's default");
}

#[test]
fn a_bad_defaults_file_is_named() {
    let tmp = model_with_defaults(r#"{"latent": 3}"#);
    let output = Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(["average", "--model", tmp.path().join("model").to_str().unwrap(), "--prompt", "a dog", "--quiet", "--out"])
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("dma_defaults.json"));
}

#[test]
fn a_tokenizer_longer_than_the_text_encoder_is_refused_at_load() {
    // tiny-sd1 with its tokenizer padding prompts to 78 tokens; its text encoder has 77 positions.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-sd1")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "tokenizer" {
            std::os::unix::fs::symlink(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tokenizer = dir.path().join("tokenizer");
    std::fs::create_dir(&tokenizer).unwrap();
    for file in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixture("tiny-sd1/tokenizer").join(file), tokenizer.join(file)).unwrap();
    }
    std::fs::write(tokenizer.join("tokenizer_config.json"), r#"{"model_max_length": 78}"#).unwrap();
    let loaded = dma::loaders::load_folder(dir.path(), tch::Device::Cpu, tch::Kind::Float);
    let err = format!("{:#}", loaded.err().expect("the folder should be refused"));
    assert!(err.contains("prompts are padded to 78 tokens, but the text encoder has only 77 positions"), "{err}");
}
