//! Every command on a DiT folder, end to end on the tiny DiT (its 16x16 images embedded by the tiny CLIP): `eval`
//! scores every method on two classes, `compare` two models, and `modes --average` learns a LoRA or a class
//! embedding per mode whose file `average --adapter` takes back. (`average` and `sample` by class name and id: tests/dit_parity.rs.)
mod common;
use common::fixture;
use std::path::{Path, PathBuf};

/// Runs `dma` with `args` and small settings shared by every command here; panics with its stderr on failure.
fn dma(args: &[&str], out: &Path) {
    let small = ["--latents", "4", "--steps", "4", "--align-steps", "2", "--iters", "5", "--quiet", "--out"];
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dma")).args(args).args(small).arg(out).output().unwrap();
    assert!(output.status.success(), "dma {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// results.csv's rows as (subject, method, consistency, representativeness, sharpness).
fn results(dir: &Path) -> Vec<(String, String, [f64; 3])> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let number = |i: usize| f[i].parse::<f64>().unwrap_or_else(|_| panic!("{line}: column {i} is not a number"));
            (f[0].to_string(), f[2].to_string(), [number(3), number(4), number(5)])
        })
        .collect()
}

#[test]
fn eval_compare_and_modes_run_on_a_dit_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (dit, clip) = (fixture("tiny-dit"), fixture("tiny-clip"));
    let model = ["--model", path(&dit), "--clip", path(&clip)];

    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "class 3\nUmbrella\n").unwrap();
    let eval = tmp.path().join("eval");
    dma(&[&["eval"], &model[..], &["--prompts", path(&prompts), "--seeds", "2", "--samples", "4"]].concat(), &eval);
    let rows = results(&eval);
    for subject in ["class 3", "Umbrella"] {
        let methods: Vec<&str> = rows.iter().filter(|r| r.0 == subject).map(|r| r.1.as_str()).collect();
        assert_eq!(methods, ["pixel-average", "avg-vae", "d4m", "mgd3", "typical", "dma"], "{subject}: every method scored");
    }
    assert!(rows.iter().all(|(_, _, v)| v.iter().all(|x| x.is_finite() && *x >= 0.0)), "{rows:?}");
    let record: serde_json::Value = common::read_json(&eval.join("run.json"));
    assert_eq!(record["model"]["family"], "DiT");

    let compare = tmp.path().join("compare");
    let models = format!("{},{}", path(&dit), path(&dit));
    dma(&["compare", "--models", &models, "--clip", path(&clip), "--prompt", "class 3", "--seeds", "2", "--samples", "4"], &compare);
    let rows = results(&compare);
    assert_eq!(rows.len(), 2, "one DMA row per model: {rows:?}");
    assert_eq!(rows[0].2, rows[1].2, "one model twice, one seed set: the same prototypes");
    // The same settings through `eval`: compare's figures are eval's DMA row for that class.
    let eval_dma = results(&eval).into_iter().find(|r| r.0 == "class 3" && r.1 == "dma").unwrap();
    assert_eq!(rows[0].2, eval_dma.2);
    let block1 = tmp.path().join("compare-block1");
    dma(&["compare", "--models", &models, "--clip", path(&clip), "--prompt", "class 3", "--seeds", "2", "--samples", "4", "--hspace-block", "1"], &block1);
    assert_ne!(results(&block1)[0].2, rows[0].2, "--hspace-block reaches the compared models: h after block 1, not the last");

    // Both adapter kinds a DiT takes: LoRA on the attention projections (the default) and a learned class.
    for (kind, file, mode_prompt) in [("lora", "pytorch_lora_weights.safetensors", "class 3"), ("class-embedding", "learned_class.safetensors", "<class-3-mode0>")] {
        let modes = tmp.path().join(format!("modes-{kind}"));
        // 20 steps at lr 1e-2 (LoRA's default, 1e-4, moves the held-out loss by 0.06% in 20 steps, a margin too thin
        // to hold on every CPU): the adapted loss ends 5-10% under the base one here.
        let chain = ["--prompt", "class 3", "--samples", "16", "--average", "--adapter-kind", kind, "--adapter-steps", "20", "--adapter-lr", "1e-2"];
        dma(&[&["modes"], &model[..], &chain[..]].concat(), &modes);
        let clusters: serde_json::Value = common::read_json(&modes.join("clusters.json"));
        let first = &clusters["clusters"][0];
        assert_eq!(first["prompt"], mode_prompt, "{kind}: the prompt a mode's prototype is drawn with");
        let adapter: PathBuf = modes.join(first["adapter"].as_str().unwrap());
        assert_eq!(adapter.file_name().unwrap(), file, "{kind}");
        let held_out = &first["held_out_loss"];
        assert!(held_out["adapted"].as_f64().unwrap() < held_out["base"].as_f64().unwrap(), "{kind}: the adapter fits its mode: {held_out}");
        let again = tmp.path().join(format!("again-{kind}"));
        dma(&["average", "--model", path(&dit), "--adapter", path(&adapter), "--prompt", mode_prompt], &again);
        assert!(again.join("prototype.png").is_file(), "{kind}");
    }
}
