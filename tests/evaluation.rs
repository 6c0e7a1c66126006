//! Issue "Evaluation" as a user meets it: each baseline on the tiny fixture, `dma eval` and `dma compare`
//! writing their tables and a report that a real headless browser renders with every image, and bad input
//! failing with one clear message before any long work.
mod common;
use common::{assert_close, fixture, global_rng, max_abs_diff, read_json, render, EPS_F32};
use dma::evaluation::clip_embedder::ClipEmbedder;
use dma::evaluation::metrics::consistency;
use dma::pipelines::baselines::averages::{avg_vae, latent_centre, pixel_average};
use dma::pipelines::baselines::d4m::{d4m, first_step};
use dma::pipelines::baselines::mgd3::mgd3;
use dma::pipelines::baselines::typical::most_typical;
use dma::pipelines::baselines::BaselineSettings;
use dma::pipelines::mental_average::{run, seeded_latents, SamplingSettings};
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use std::path::Path;
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};

fn tiny_model() -> DiffusionModel {
    dma::loaders::load(&ModelSource::Folder(fixture("tiny-sd1")), Device::Cpu, Kind::Float).unwrap()
}

fn tiny_sampling(seed: u64) -> SamplingSettings {
    SamplingSettings { prompt: "a photo of a dog".into(), steps: 4, guidance: 7.0, seed, batch: 4, use_clipped_model_output: false, guidance_interval: None }
}

#[test]
fn averages_are_the_mean_image_and_the_decoded_mean_latent() {
    let model = tiny_model();
    let image = Tensor::rand([3, 8, 8], (Kind::Float, Device::Cpu));
    let average = pixel_average(&image.unsqueeze(0).repeat([5, 1, 1, 1]));
    // The float32 mean of 5 equal values rounds its running sum a few times: 8 ulps of the values.
    assert_close("the average of identical images", &average, &image, 8.0 * EPS_F32, 0.0);
    let latents = seeded_latents(&model, 3, 0);
    let centre = latent_centre(&latents);
    assert_eq!(centre.size()[1..], latents.size()[1..]);
    // The mean times 3 against the sum: a division and a multiplication more, a few ulps of the sum.
    let sum = latents.sum_dim_intlist(0, false, Kind::Float);
    assert_close("3 x the latent centre", &(centre.squeeze_dim(0) * 3.0), &sum, 8.0 * EPS_F32, 0.0);
    let decoded = avg_vae(&model, &latents);
    assert_eq!(decoded.size(), model.image_shape().to_vec());
    // avg_vae is decode(latent_centre(latents)): the same ops in the same order, so exactly equal.
    assert_eq!(max_abs_diff(&decoded, &model.decode(&centre).squeeze_dim(0)), 0.0);
}

#[test]
fn d4m_starts_where_diffusers_img2img_starts_and_redraws_from_the_centre() {
    // diffusers: init_timestep = min(int(steps * strength), steps); t_start = steps - init_timestep.
    assert_eq!(first_step(20, 0.7), 6);
    assert_eq!(first_step(10, 0.75), 3);
    assert_eq!(first_step(20, 1.0), 0);
    assert_eq!(first_step(20, 0.0), 20);
    let _rng = global_rng();
    let model = tiny_model();
    let centre = seeded_latents(&model, 1, 9);
    let settings = BaselineSettings::default();
    let (a, again, b) = (
        d4m(&model, &tiny_sampling(0), &settings, &centre, 0).unwrap(),
        d4m(&model, &tiny_sampling(0), &settings, &centre, 0).unwrap(),
        d4m(&model, &tiny_sampling(0), &settings, &centre, 1).unwrap(),
    );
    assert_eq!(a.size(), centre.size());
    // The same function on the same inputs in one process: exactly equal.
    assert_eq!(max_abs_diff(&a, &again), 0.0, "a seed gives the same prototype");
    assert!(max_abs_diff(&a, &b) > 1e-3, "another seed redraws other noise");
    // Strength 0 runs no step: the centre comes back untouched.
    let untouched = BaselineSettings { d4m_strength: 0.0, ..settings };
    assert_eq!(max_abs_diff(&d4m(&model, &tiny_sampling(0), &untouched, &centre, 0).unwrap(), &centre), 0.0, "strength 0 keeps the centre");
}

#[test]
fn mgd3_is_plain_sampling_without_its_pull_and_moves_toward_the_mode_with_it() {
    let _rng = global_rng();
    let model = tiny_model();
    let mode = seeded_latents(&model, 1, 9) * 0.5;
    let plain = run(&model, &tiny_sampling(3), &seeded_latents(&model, 1, 3), None, 0, &|_| {}).unwrap().latents;
    let off = BaselineSettings { mgd3_scale: 0.0, ..BaselineSettings::default() };
    let unguided = mgd3(&model, &tiny_sampling(3), &off, &mode, 3).unwrap();
    // At scale 0 the pull is 0 x (mode - x0): subtracting a zero changes no float, and for this epsilon-prediction
    // model the output for that noise is the noise itself, so MGD3 is exactly plain sampling.
    assert!(unguided.equal(&plain), "scale 0 is plain sampling: {}", max_abs_diff(&unguided, &plain));
    let distance = |x: &Tensor| (x - &mode).square().mean(Kind::Double).double_value(&[]);
    let mut previous = distance(&plain);
    for scale in [0.1, 0.5] {
        let pulled = BaselineSettings { mgd3_scale: scale, mgd3_fraction: 1.0, ..BaselineSettings::default() };
        let guided = distance(&mgd3(&model, &tiny_sampling(3), &pulled, &mode, 3).unwrap());
        assert!(guided < previous, "scale {scale}: distance to the mode {guided} should fall below {previous}");
        previous = guided;
    }
}

#[test]
fn identical_images_are_perfectly_consistent_and_different_ones_are_not() {
    let _rng = global_rng();
    tch::manual_seed(5);
    let embedder = ClipEmbedder::load(&fixture("tiny-clip"), Device::Cpu).unwrap();
    let image = Tensor::rand([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    let same = consistency(&embedder.image_embeds(&image.repeat([3, 1, 1, 1])).unwrap()).unwrap();
    // Cosines are taken in float64, but the three embeddings come from one batch, whose rows a GEMM may round
    // differently (different micro-kernel positions) by ~1e-7 relative; 1 - cos of such a difference is ~1e-14.
    assert!(same.abs() < 1e-6, "identical images: {same}");
    let others = Tensor::cat(&[image, Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu))], 0);
    let different = consistency(&embedder.image_embeds(&others).unwrap()).unwrap();
    assert!(different > 1e-4, "different images: {different}");
}

#[test]
fn the_most_typical_sample_is_the_one_nearest_the_mean_embedding() {
    let embeds = Tensor::from_slice(&[1.0f32, 0.0, 0.8, 0.6, 0.0, 1.0, 0.6, 0.8]).view([4, 2]);
    // Mean direction: (2.4, 2.4) / |.|, i.e. 45 degrees; samples 1 and 3 are equally near, the first wins.
    assert_eq!(most_typical(&embeds), 1);
    assert_eq!(most_typical(&Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.9, 0.1]).view([3, 2])), 2);
}

fn dma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma")).args(args).output().unwrap()
}

/// Flags that make an evaluation on the tiny fixture fast.
const FAST: [&str; 14] = ["--seeds", "2", "--samples", "4", "--steps", "2", "--latents", "2", "--align-steps", "1", "--iters", "2", "--quiet", "--batch=4"];

fn tiny_eval(out: &Path, extra: &[&str]) -> Output {
    let (model, clip) = (fixture("tiny-sd1"), fixture("tiny-clip"));
    let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog"];
    args.extend(FAST);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    dma(&args)
}

#[test]
fn eval_writes_every_method_s_figures_and_a_report_that_renders_with_its_images() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = tiny_eval(&out, &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let methods = ["pixel-average", "avg-vae", "d4m", "mgd3", "typical", "dma"];
    // Table 1's protocol: the samples from --seed 0, once; the repetitions from seeds 1 and 2.
    for method in methods {
        for seed in [1, 2] {
            assert!(out.join(format!("a-photo-of-a-dog/{method}-seed{seed}.png")).is_file(), "{method} seed {seed}");
        }
    }
    assert!(out.join("a-photo-of-a-dog/samples-seed0").is_dir() && !out.join("a-photo-of-a-dog/samples-seed1").exists(), "the shared samples are written once");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 1 + methods.len(), "{csv}");
    let header: Vec<&str> = rows[0].split(',').collect();
    let figures = ["consistency", "representativeness", "sharpness", "sharpness_vs_samples", "samples_sharpness", "median_sample_representativeness"];
    for (row, method) in rows[1..].iter().zip(methods) {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields[2], method);
        for name in figures {
            let figure = fields[header.iter().position(|h| *h == name).unwrap()];
            assert!(figure.parse::<f64>().is_ok_and(f64::is_finite), "{method}: {name} {figure} in {row}");
        }
        // Without --dreamsim and --image-reward their columns are empty.
        for name in ["dreamsim_consistency", "image_reward"] {
            assert_eq!(fields[header.iter().position(|h| *h == name).unwrap()], "", "{name} in {row}");
        }
    }
    let results = read_json(&out.join("results.json"));
    let scores = &results["results"][0]["scores"];
    assert_eq!(scores["methods"].as_array().unwrap().len(), methods.len());
    // From shared samples a deterministic average is the same image in every repetition: consistency exactly 0;
    // the methods with randomness of their own vary.
    let consistency = |i: usize| scores["methods"][i]["consistency"].as_f64().unwrap();
    for (i, method) in methods.iter().enumerate() {
        match *method {
            "pixel-average" | "avg-vae" | "typical" => assert_eq!(consistency(i), 0.0, "{method}: {scores}"),
            _ => assert!(consistency(i) > 0.0, "{method}: {scores}"),
        }
    }
    // The pixel average is the blurriest image on the page.
    let sharpness = |i: usize| scores["methods"][i]["sharpness"].as_f64().unwrap();
    assert!(sharpness(0) < sharpness(5) && sharpness(0) < scores["samples_sharpness"].as_f64().unwrap(), "{scores}");
    assert_eq!(results["results"][0]["runs"][1]["dma_steps"].as_array().unwrap().len(), 1, "one aligned step logged per seed");
    let markdown = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(markdown.contains("| DMA |") && markdown.contains("| D4M |"), "{markdown}");
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["settings"]["seeds"], serde_json::json!([1, 2]));
    assert_eq!(run["settings"]["protocol"], "shared-samples");
    assert!(run["model"]["weight_files"][0]["sha256"].is_string());

    // 6 methods x 2 repetitions of prototypes and the 4 shared samples; 2 plots of 2 repetitions' lines.
    let page = out.join("report.html");
    assert_eq!(render(&page), (16, 16, 4));
    // The check can fail: a page with a broken image renders one fewer.
    let html = std::fs::read_to_string(&page).unwrap();
    let broken = tmp.path().join("broken.html");
    std::fs::write(&broken, html.replacen("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1)).unwrap();
    assert_eq!(render(&broken).0, 15);
}

/// `--fresh-samples`: every repetition draws its own samples from its seed, so even a deterministic average
/// varies; the samples of each are written.
#[test]
fn fresh_samples_redraw_the_samples_for_every_repetition() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = tiny_eval(&out, &["--fresh-samples", "--methods", "avg-vae,typical"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for seed in [0, 1] {
        assert!(out.join(format!("a-photo-of-a-dog/samples-seed{seed}")).is_dir(), "seed {seed}'s samples");
        assert!(out.join(format!("a-photo-of-a-dog/avg-vae-seed{seed}.png")).is_file());
    }
    let run = read_json(&out.join("run.json"));
    assert_eq!((&run["settings"]["seeds"], &run["settings"]["protocol"]), (&serde_json::json!([0, 1]), &serde_json::json!("fresh-samples")));
    let results = read_json(&out.join("results.json"));
    let methods = &results["results"][0]["scores"]["methods"];
    assert!(methods[0]["consistency"].as_f64().unwrap() > 0.0 && methods[1]["consistency"].as_f64().unwrap() > 0.0, "{methods}");
}

/// `--image-reward` and `--dreamsim`: Table 1's quality and DreamSim consistency columns, by the tiny fixtures;
/// a deterministic average scores the same in every repetition, so its DreamSim consistency is 0 exactly.
#[test]
fn eval_with_image_reward_and_dreamsim_fills_table_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (reward, dreamsim) = (fixture("tiny-image-reward"), fixture("tiny-dreamsim"));
    let flags = ["--methods", "avg-vae,dma", "--image-reward", reward.to_str().unwrap(), "--dreamsim", dreamsim.to_str().unwrap()];
    let output = tiny_eval(&out, &flags);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results = read_json(&out.join("results.json"));
    let scores = &results["results"][0]["scores"];
    let per_seed = |i: usize| -> Vec<f64> { scores["methods"][i]["image_reward_per_seed"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
    let (avg_vae, dma) = (per_seed(0), per_seed(1));
    assert_eq!(avg_vae.len(), 2);
    assert_eq!(avg_vae[0], avg_vae[1], "Avg VAE is one image in both repetitions: {scores}");
    assert!(dma.iter().chain(&avg_vae).all(|r| r.is_finite()), "{scores}");
    let mean = (dma[0] + dma[1]) / 2.0;
    assert!((scores["methods"][1]["image_reward"].as_f64().unwrap() - mean).abs() < 1e-12, "{scores}");
    assert!(scores["samples_image_reward"].as_f64().unwrap().is_finite(), "{scores}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = header.iter().position(|h| *h == "image_reward").unwrap();
    for row in csv.lines().skip(1) {
        assert!(row.split(',').nth(column).unwrap().parse::<f64>().is_ok_and(f64::is_finite), "{row}");
    }
    let dreamsim_consistency = |i: usize| scores["methods"][i]["dreamsim_consistency"].as_f64().unwrap();
    assert_eq!(dreamsim_consistency(0), 0.0, "{scores}");
    assert!(dreamsim_consistency(1) > 0.0, "{scores}");
    let markdown = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(markdown.contains("quality (ImageReward)") && markdown.contains("consistency (DreamSim)"), "{markdown}");
    let run = read_json(&out.join("run.json"));
    assert_eq!((&run["image_reward"], &run["dreamsim"]), (&serde_json::json!(reward), &serde_json::json!(dreamsim)));
    // Without it, no such column.
    let plain = tmp.path().join("plain");
    assert!(tiny_eval(&plain, &["--methods", "avg-vae"]).status.success());
    let markdown = std::fs::read_to_string(plain.join("results.md")).unwrap();
    assert!(!markdown.contains("ImageReward") && !markdown.contains("DreamSim"), "{markdown}");
}

#[test]
fn compare_puts_each_model_s_prototypes_side_by_side() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let models = format!("{},{}", fixture("tiny-sd1").display(), fixture("tiny-sd2").display());
    let clip = fixture("tiny-clip");
    let mut args = vec!["compare", "--models", &models, "--clip", clip.to_str().unwrap(), "--prompt", "a photo of a dog", "--methods", "dma,typical"];
    args.extend(FAST);
    args.extend(["--out", out.to_str().unwrap()]);
    let output = dma(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "two models, two methods: {csv}");
    assert!(csv.contains("tiny-sd1") && csv.contains("tiny-sd2"), "{csv}");
    let run = read_json(&out.join("run.json"));
    assert_eq!(run["models"].as_array().unwrap().len(), 2);
    // Side by side: 2 models x 2 repetitions of DMA; then per model 2 methods x 2 repetitions and its 4 shared samples.
    assert_eq!(render(&out.join("report.html")), (20, 20, 8));
}

#[test]
fn bad_eval_input_fails_with_one_clear_message_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.txt");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# nothing here\n\n").unwrap();
    for (flags, expected) in [
        (vec!["--seeds", "0"], vec!["--repeats"]),
        (vec!["--repeats", "0"], vec!["--repeats"]),
        (vec!["--methods", "gan"], vec!["gan", "dma"]),
        (vec!["--d4m-strength", "1.5"], vec!["--d4m-strength"]),
        (vec!["--mgd3-fraction=-1"], vec!["--mgd3-fraction"]),
        (vec!["--samples", "0"], vec!["--samples"]),
        (vec!["--prompts", missing.to_str().unwrap()], vec!["missing.txt"]),
        (vec!["--prompts", empty.to_str().unwrap()], vec!["no prompts"]),
        (vec!["--image-reward", missing.to_str().unwrap()], vec!["--image-reward", "missing.txt"]),
        (vec!["--dreamsim", missing.to_str().unwrap()], vec!["--dreamsim", "missing.txt"]),
    ] {
        let out = tmp.path().join("out");
        let output = tiny_eval(&out, &flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && !out.exists(), "{flags:?} should fail without output");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("error")).count(), 1, "{flags:?}: one error line: {stderr}");
        for part in expected {
            assert!(stderr.contains(part), "{flags:?}: the error should mention `{part}`: {stderr}");
        }
    }
    // No concept at all, and a word the embedded model does not know: before any sampling.
    let out = tmp.path().join("out");
    let output = dma(&["eval", "--quiet", "--out", out.to_str().unwrap()]);
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--prompt"));
    let output = dma(&["eval", "--prompt", "a zebra", "--quiet", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !out.exists() && stderr.contains("zebra"), "{stderr}");
}

/// The comparison on the embedded model, small: "footwear" (three kinds), 30 shared samples, 2 repetitions. What the
/// benchmark (BENCHMARKS.md "Evaluation") measures at full size, with margins a small run keeps.
#[test]
fn on_the_embedded_model_dma_is_sharp_where_averages_blur_and_more_representative_than_a_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = dma(&["eval", "--prompt", "footwear", "--seeds", "2", "--samples", "30", "--quiet", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let results = read_json(&out.join("results.json"));
    let scores = &results["results"][0]["scores"];
    let method = |slug: &str| scores["methods"].as_array().unwrap().iter().find(|m| m["method"] == slug).unwrap().clone();
    let (dma, pixel) = (method("dma"), method("pixel-average"));
    let sharpness = |m: &serde_json::Value| m["sharpness"].as_f64().unwrap();
    assert!(sharpness(&dma) > 2.0 * sharpness(&pixel), "DMA {} vs pixel average {}", sharpness(&dma), sharpness(&pixel));
    let median_sample = scores["median_sample_representativeness"].as_f64().unwrap();
    assert!(dma["representativeness"].as_f64().unwrap() < median_sample, "{dma} vs the median sample's {median_sample}");
    // Every prototype gets a zero-shot class, and DMA's is a kind of footwear.
    for class in dma["classes"].as_array().unwrap() {
        assert!(["sandal", "sneaker", "ankle boot"].contains(&class.as_str().unwrap()), "{dma}");
    }
    let classes: usize = scores["sample_classes"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap() as usize).sum();
    assert_eq!(classes, 30, "every sample is classified");
    assert_eq!(method("avg-vae")["consistency"].as_f64().unwrap(), 0.0, "Avg VAE from shared samples is one image");
}
