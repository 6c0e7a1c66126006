//! An installed `dma` runs anywhere (issue "Right on every machine"): the binary copied out of the build tree, run
//! from another folder with an empty cache, computes a mental average on the embedded model, whose files it carries.
mod common;
use common::read_json;
use std::process::Command;

#[test]
fn a_copied_binary_runs_the_main_job_without_the_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("bin").join("dma");
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_dma"), &binary).unwrap();
    let (cache, work) = (tmp.path().join("cache"), tmp.path().join("work"));
    std::fs::create_dir_all(&work).unwrap();
    let output = Command::new(&binary)
        .current_dir(&work)
        .env("DMA_CACHE", &cache)
        .args(["average", "--prompt", "a sneaker", "--latents", "2", "--steps", "3", "--align-steps", "1", "--iters", "2", "--quiet", "--out", "o"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let run = read_json(&work.join("o/run.json"));
    let source = run["model"]["source"].as_str().unwrap();
    assert!(source.starts_with(cache.to_str().unwrap()), "the model came from the binary, unpacked into the cache: {source}");
    assert!(!source.contains(env!("CARGO_MANIFEST_DIR")), "{source}");
    // The clip folder (zero-shot classes, clustering) travels too.
    assert!(std::path::Path::new(source).join("clip/model.safetensors").is_file());
}
