//! `dma modes` and `dma average --adapter` as a user runs them: the outputs of a whole chain on the tiny
//! fixture, the clusters of "footwear" on the embedded model against its known kinds, and bad input failing with
//! one clear message before any long work.
mod common;
use common::{fixture, read_json};
use dma::clustering::{ClusterCount, Criterion};
use dma::distributed::Ranks;
use dma::data::captions::broad_concepts;
use dma::evaluation::zero_shot::ZeroShot;
use dma::checkpoint::NoCheckpoints;
use dma::loaders::run_defaults;
use dma::pipelines::modes::{discover, Describer, Describers, DiscoverySettings, Grounding};
use dma::loaders::ModelSource;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Kind};

fn embedded_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/embedded")
}

fn dma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma")).args(args).output().unwrap()
}

/// A `dma modes` on the tiny fixture, fast: 6 samples of 2 steps, 2 adapter steps, DMA of 2 latents.
fn tiny_modes(out: &Path, extra: &[&str]) -> Output {
    let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
    let mut args = vec!["modes", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog"];
    args.extend(["--samples", "6", "--steps", "2", "--adapter-steps", "2", "--adapter-batch", "2"]);
    args.extend(["--latents", "2", "--align-steps", "1", "--iters", "2", "--quiet", "--out", out.to_str().unwrap()]);
    args.extend(extra);
    dma(&args)
}

#[test]
fn the_whole_chain_writes_clusters_adapters_and_prototypes() {
    for (kind, adapter_file) in [("ti", "learned_embeds.safetensors"), ("lora", "pytorch_lora_weights.safetensors")] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let output = tiny_modes(&out, &["--clusters", "2", "--average", "--adapter-kind", kind, "--save-latents"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let clusters = read_json(&out.join("clusters.json"));
        assert_eq!(clusters["clustering"]["k"], 2);
        let mut members: Vec<i64> = Vec::new();
        for c in clusters["clusters"].as_array().unwrap() {
            let list: Vec<i64> = c["members"].as_array().unwrap().iter().map(|m| m.as_i64().unwrap()).collect();
            assert_eq!(list.len() as u64, c["size"].as_u64().unwrap());
            members.extend(list);
            for file in ["contact_sheet", "prototype", "adapter"] {
                assert!(out.join(c[file].as_str().unwrap()).is_file(), "{kind}: {file} of cluster {}", c["cluster"]);
            }
            assert!(c["adapter"].as_str().unwrap().ends_with(adapter_file));
        }
        members.sort();
        assert_eq!(members, (0..6).collect::<Vec<_>>(), "every sample is in exactly one cluster");
        for file in ["samples.png", "prototype.png", "modes.png", "run.json", "latents.safetensors"] {
            assert!(out.join(file).is_file(), "{kind}: {file}");
        }
        let run = read_json(&out.join("run.json"));
        assert_eq!(run["command"], "modes");
        assert_eq!(run["chain"]["settings"]["adapter"]["kind"], kind);
        assert_eq!(run["chain"]["modes"].as_array().unwrap().len(), 2);
        for mode in run["chain"]["modes"].as_array().unwrap() {
            // Each mode's DMA starts from the noise of its own samples.
            let cluster = &clusters["clusters"][mode["cluster"].as_u64().unwrap() as usize]["members"];
            let started_from = mode["started_from_samples"].as_array().unwrap();
            assert!(!started_from.is_empty() && started_from.iter().all(|s| cluster.as_array().unwrap().contains(s)), "{mode}");
        }

        // The learned adapter runs again with `dma average --adapter`.
        let adapter = out.join(clusters["clusters"][0]["adapter"].as_str().unwrap());
        let prompt = clusters["clusters"][0]["prompt"].as_str().unwrap();
        let again = tmp.path().join("again");
        let model = fixture("tiny-sd1");
        let output = dma(&[
            "average", "--model", model.to_str().unwrap(), "--prompt", prompt, "--adapter", adapter.to_str().unwrap(),
            "--latents", "2", "--steps", "2", "--align-steps", "1", "--iters", "2", "--quiet", "--out", again.to_str().unwrap(),
        ]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(read_json(&again.join("run.json"))["adapter"]["sha256"].is_string(), "the run records the adapter it used");
    }
}

/// Runs `dma modes` expecting failure: one error line, no output folder; returns stderr.
fn modes_fails(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = tiny_modes(&out, extra);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "expected failure for {extra:?}");
    assert!(!out.exists(), "a failed run left an output folder");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "one error line expected: {stderr}");
    stderr
}

#[test]
fn bad_modes_input_fails_before_any_work() {
    for (flags, expected) in [
        (&["--clusters", "9"][..], &["9", "6 samples"][..]),
        (&["--clusters", "many"][..], &["many"][..]),
        (&["--cluster-criterion", "aic"][..], &["aic", "silhouette"][..]),
        (&["--by", "colour:"][..], &["--by", "values"][..]),
        (&["--by", "red, blue"][..], &["--by", "attribute"][..]),
        (&["--by", "colour: red"][..], &["at least two"][..]),
        (&["--pca-dims", "0"][..], &["--pca-dims"][..]),
        (&["--adapter-steps", "0"][..], &["--adapter-steps"][..]),
        (&["--init-latents", "x.safetensors"][..], &["--init-latents"][..]),
        (&["--by", "colour: red, blue", "--grounding", "blip-vqa"][..], &["--vqa"][..]),
        (&["--vqa", "x"][..], &["--grounding blip-vqa"][..]),
        (&["--question", "what?"][..], &["--grounding blip-vqa"][..]),
        (&["--grounding", "blip-vqa"][..], &["--by"][..]),
        (&["--grounding", "owl"][..], &["owl", "blip-vqa"][..]),
        (&["--by", "colour: red, blue", "--grounding", "blip-vqa", "--vqa", "/no/such/vqa"][..], &["/no/such/vqa"][..]),
        (&["--by", "colour: red, blue", "--grounding", "blip-vqa", "--vqa", fixture("tiny-clip").to_str().unwrap()][..], &["tiny-clip"][..]),
    ] {
        let stderr = modes_fails(flags);
        for part in expected {
            assert!(stderr.contains(part), "{flags:?}: the error should mention `{part}`: {stderr}");
        }
    }
}

#[test]
fn a_missing_clip_model_fails_before_sampling() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = dma(&["modes", "--prompt", "footwear", "--clip", "/no/such/clip", "--quiet", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists());
    assert!(stderr.contains("/no/such/clip"), "{stderr}");
}

#[test]
fn a_grounding_value_the_clip_cannot_read_fails_before_sampling() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = dma(&["modes", "--prompt", "footwear", "--by", "colour: red, blue", "--quiet", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists());
    assert!(stderr.contains("`red`") && stderr.contains("--by"), "{stderr}");
}

/// A mode with fewer members than `--optimise` (6 samples in 2 clusters: one has at most 3 of the 4 asked for)
/// optimises all of them, as `dma average` caps a model's --optimise at its latents.
#[test]
fn a_mode_smaller_than_optimise_optimises_all_its_members() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
    let output = dma(&[
        "modes", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--samples", "6",
        "--steps", "2", "--adapter-steps", "2", "--adapter-batch", "2", "--latents", "6", "--optimise", "4", "--align-steps", "1",
        "--iters", "2", "--clusters", "2", "--average", "--quiet", "--out", out.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let modes = read_json(&out.join("run.json"))["chain"]["modes"].as_array().unwrap().clone();
    let sizes: Vec<usize> = modes.iter().map(|m| m["started_from_samples"].as_array().unwrap().len()).collect();
    assert!(sizes.iter().any(|&n| n < 4), "a mode smaller than --optimise: {sizes:?}");
}

#[test]
fn bad_adapters_for_dma_average_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let average = |prompt: &str, adapter: &Path| {
        let output = dma(&["average", "--prompt", prompt, "--adapter", adapter.to_str().unwrap(), "--quiet", "--out", out.to_str().unwrap()]);
        assert!(!output.status.success() && !out.exists());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let lora = fixture("adapters/lora/pytorch_lora_weights.safetensors");
    assert!(average("footwear", &lora).contains("another model"), "a LoRA for the tiny UNet on the embedded model");
    let ti = fixture("adapters/ti/learned_embeds.safetensors");
    let stderr = average("footwear", &ti);
    assert!(stderr.contains("<tiny-mode0>") && stderr.contains("does not contain"), "{stderr}");
    let stderr = average("footwear <tiny-mode0>", &ti);
    assert!(stderr.contains("[64]"), "an embedding of another width: {stderr}");
    let stderr = average("footwear", &tmp.path().join("missing.safetensors"));
    assert!(stderr.contains("missing.safetensors"), "{stderr}");
}

/// "footwear" has three known kinds. At the embedded model's defaults and seed 0, 100 samples form three clusters,
/// one per kind by the zero-shot classifier, both by image embedding and grounded by the kinds' names. Each cluster
/// is at least 85% its kind: the model also draws high-top shoes, which the classifier calls ankle boots and the
/// clustering puts with the sneakers (seed 0: 87% and 89%; BENCHMARKS.md has eight seeds).
#[test]
fn footwear_clusters_into_its_three_kinds() {
    let _rng = common::global_rng();
    let source = ModelSource::Folder(embedded_dir());
    let defaults = run_defaults(&source).unwrap();
    let model = dma::loaders::load(&source, Device::Cpu, Kind::Float).unwrap();
    let classifier = ZeroShot::embedded(&embedded_dir().join("clip"), Device::Cpu).unwrap();
    let footwear = broad_concepts().iter().find(|c| c.name == "footwear").unwrap();
    let sampling = defaults.sampling("footwear", 0);
    let values = vec!["sandal".to_string(), "sneaker".to_string(), "ankle boot".to_string()];
    for grounding in [None, Some(Grounding { attribute: "kind".into(), values, describer: Describer::Clip })] {
        let settings = DiscoverySettings { samples: 100, clusters: ClusterCount::Auto { max: 8 }, criterion: Criterion::Silhouette, pca_dims: defaults.pca_dims, grounding: grounding.clone() };
        let modes = discover(&model, &sampling, Describers { clip: &classifier.embedder, vqa: None }, &settings, &|_| {}, &mut NoCheckpoints, Ranks::alone()).unwrap();
        let classes = classifier.classify(&modes.images).unwrap();
        let mut majorities = Vec::new();
        for k in 0..modes.clustering.k {
            let members = modes.members(k);
            let (class, count) = footwear.classes.iter().map(|&c| (c, members.iter().filter(|&&i| classes[i as usize] == c).count())).max_by_key(|&(_, n)| n).unwrap();
            let purity = count as f64 / members.len() as f64;
            println!("{:?}: cluster {k}, {} samples, {:.0}% class {class}", grounding.is_some(), members.len(), 100.0 * purity);
            assert!(purity >= 0.85, "cluster {k} is only {:.0}% one kind", 100.0 * purity);
            majorities.push(class);
        }
        majorities.sort();
        assert_eq!(majorities, footwear.classes.to_vec(), "three clusters, one per kind (silhouette {:?})", modes.clustering.silhouette);
    }
}

#[test]
fn a_clip_that_cannot_take_the_model_s_images_fails_before_sampling() {
    // The embedded CLIP takes 32x32 images as they are (no resize); a copy of the tiny SD fixture set to sample
    // 24x24 latents decodes to 48x48 images.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assert!(Command::new("cp").arg("-r").arg(fixture("tiny-sd1")).arg(&model).status().unwrap().success());
    let config = std::fs::read_to_string(model.join("unet/config.json")).unwrap();
    std::fs::write(model.join("unet/config.json"), config.replace("\"sample_size\": 16", "\"sample_size\": 24")).unwrap();
    let out = tmp.path().join("out");
    let output = dma(&["modes", "--model", model.to_str().unwrap(), "--prompt", "a photo of a dog", "--quiet", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists(), "{stderr}");
    assert!(stderr.contains("--clip") && stderr.contains("48x48"), "{stderr}");
}

#[test]
fn image_shape_is_what_decode_gives() {
    for (name, model) in [("tiny-sd1", dma::loaders::load_folder(&fixture("tiny-sd1"), Device::Cpu, Kind::Float).unwrap()), ("embedded", dma::loaders::load_folder(&embedded_dir(), Device::Cpu, Kind::Float).unwrap())] {
        let [c, h, w] = model.latent_shape();
        let decoded = model.decode(&tch::Tensor::zeros([1, c, h, w], (Kind::Float, Device::Cpu)));
        assert_eq!(decoded.size()[1..], model.image_shape(), "{name}");
    }
}

/// `--grounding blip-vqa`: the samples are described by the tiny VQA model's answer log-likelihoods for each value
/// (less their mean), and the run records the question it asked.
#[test]
fn modes_grounded_by_blip_vqa_cluster_the_answer_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let vqa_dir = fixture("tiny-blip-vqa");
    let flags = ["--by", "colour: red, blue, black", "--grounding", "blip-vqa", "--vqa", vqa_dir.to_str().unwrap(), "--clusters", "2", "--save-latents"];
    let output = tiny_modes(&out, &flags);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let record = common::read_json(&out.join("clusters.json"));
    assert_eq!(record["vqa"], vqa_dir.to_str().unwrap());
    assert_eq!(record["grounding"]["describer"], serde_json::json!({ "model": "blip-vqa", "question": "what is the colour?" }), "{}", record["grounding"]);
    // The features clustering saw, recomputed from the samples the run wrote: the VQA's scores, centred per sample.
    let vqa = dma::models::blip::vqa::BlipVqa::load(&vqa_dir, Device::Cpu, Kind::Float).unwrap();
    let model = dma::loaders::load(&ModelSource::Folder(fixture("tiny-sd1")), Device::Cpu, Kind::Float).unwrap();
    let latents = dma::weights::read_safetensors(&out.join("latents.safetensors")).unwrap().remove(0).1;
    let images = model.decode_batched(&latents, 6);
    let values: Vec<String> = ["red", "blue", "black"].map(String::from).to_vec();
    let scores = vqa.answer_log_likelihoods(&images, "what is the colour?", &values, 4).unwrap();
    let grounding = Grounding { attribute: "colour".into(), values, describer: Describer::BlipVqa { question: "what is the colour?".into() } };
    let clip = dma::evaluation::clip_embedder::ClipEmbedder::load(&fixture("tiny-clip"), Device::Cpu).unwrap();
    let features = dma::pipelines::modes::features(Describers { clip: &clip, vqa: Some(&vqa) }, &images, Some(&grounding)).unwrap();
    let centred = &scores - scores.mean_dim(1, true, Kind::Float);
    assert!(features.allclose(&centred, 1e-6, 1e-6, false), "the grounded features are not the centred answer scores");
    assert!(scores.std(true).double_value(&[]) > 1e-3, "the answer scores do not vary between samples: {scores}");
    let labels: Vec<i64> = record["clustering"]["labels"].as_array().unwrap().iter().map(|l| l.as_i64().unwrap()).collect();
    assert_eq!(labels.len(), 6);
}
