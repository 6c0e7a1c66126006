//! The commands on an SDXL folder (the tiny random fixture): `average`, `sample` from its single file, `eval`,
//! `compare` beside an SD 1.x model,
//! `modes --average` with LoRA and with Textual Inversion on both encoders, whose embedding `average --adapter`
//! then takes.
mod common;
use common::{fixture, read_json};
use dma::adapters::Adapter;
use dma::pipelines::modes::mode_token;
use std::path::Path;
use std::process::{Command, Output};

fn dma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma")).args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

const FAST: [&str; 8] = ["--steps", "2", "--latents", "2", "--align-steps", "1", "--iters", "2"];

fn succeeds(output: Output) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn average_eval_compare_and_modes_run_on_an_sdxl_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (sdxl, clip) = (fixture("tiny-sdxl"), fixture("tiny-clip"));
    let prompt = ["--prompt", "a photo of a dog", "--quiet"];
    let out = tmp.path().join("average");
    succeeds(dma(&[&["average", "--model", path(&sdxl), "--out", path(&out)][..], &prompt, &FAST].concat()));
    let run = read_json(&out.join("run.json"));
    let model = &run["model"];
    assert_eq!((&model["conditioning"], &model["hspace"], &model["vae_dtype"]), (&serde_json::json!("sdxl"), &serde_json::json!("mid block"), &serde_json::json!("f32")), "{model}");

    // A single-file SDXL checkpoint, with the folder's configs (the built-in ones are SDXL base's full size).
    let out = tmp.path().join("sample");
    let single = sdxl.join("ldm.safetensors");
    succeeds(dma(&["sample", "--model", path(&single), "--config", path(&sdxl), "--num", "2", "--steps", "2", "--prompt", "a photo of a dog", "--quiet", "--out", path(&out)]));
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["model"]["conditioning"], serde_json::json!("sdxl"), "{}", run["model"]);

    let out = tmp.path().join("eval");
    let judging = ["--clip", path(&clip), "--repeats", "2", "--samples", "4"];
    succeeds(dma(&[&["eval", "--model", path(&sdxl), "--out", path(&out)][..], &judging, &prompt, &FAST].concat()));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 6, "every method: {csv}");

    let out = tmp.path().join("compare");
    let models = format!("{},{}", path(&sdxl), path(&fixture("tiny-sd1")));
    succeeds(dma(&[&["compare", "--models", &models, "--out", path(&out)][..], &judging, &prompt, &FAST].concat()));
    assert_eq!(read_json(&out.join("run.json"))["models"].as_array().unwrap().len(), 2);

    let out = tmp.path().join("modes");
    let modes = ["--clip", path(&clip), "--samples", "6", "--clusters", "2", "--average", "--adapter-steps", "2", "--adapter-batch", "2"];
    succeeds(dma(&[&["modes", "--model", path(&sdxl), "--out", path(&out)][..], &modes, &prompt, &FAST].concat()));
    assert!(out.join("mode-0/pytorch_lora_weights.safetensors").is_file() && out.join("modes.png").is_file());

    let out = tmp.path().join("ti");
    succeeds(dma(&[&["modes", "--model", path(&sdxl), "--adapter-kind", "ti", "--out", path(&out)][..], &modes, &prompt, &FAST].concat()));
    let embedding = out.join("mode-0/learned_embeds_sdxl.safetensors");
    let Adapter::TextualInversion(ti) = Adapter::read(&embedding).unwrap() else { panic!("{} is not an embedding", embedding.display()) };
    let token = mode_token("a photo of a dog", 0);
    assert_eq!(ti.token, token);
    assert_eq!(ti.embeddings.iter().map(|e| e.size()).collect::<Vec<_>>(), [vec![32], vec![40]], "one row per encoder");

    let out = tmp.path().join("with-ti");
    let with_token = format!("a photo of a dog {token}");
    let args = ["average", "--model", path(&sdxl), "--adapter", path(&embedding), "--prompt", &with_token, "--quiet", "--out", path(&out)];
    succeeds(dma(&[&args[..], &FAST].concat()));
    assert!(out.join("prototype.png").is_file());
}
