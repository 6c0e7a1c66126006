//! A full-size SDXL base single-file checkpoint, loaded with the configs `dma` builds in, against diffusers and
//! transformers on the same weights: both text encoders (penultimate states side by side, the pooled projection),
//! the UNet's output and h with SDXL's added conditioning, and the VAE's decoder.
//!
//! The checkpoint (random weights, float16, Stability's layout) and the references come from
//! `bench/make_sdxl_single_file_check.py`; the tests check the same on a tiny SDXL (tests/sdxl_parity.rs) and the
//! full-size key map (tests/single_file.rs), which cannot tell a misread config number that changes no shape (the
//! head counts, say) from a right one: this can.
//!
//! ```text
//! cargo run --release --example check_single_file -- [--dir ~/.cache/dma/bench/sdxl-single-file-check]
//! ```
//! Prints one JSON line per output and exits 1 if any is outside its tolerance (relative to the reference's largest
//! magnitude, as the parity tests: 3e-5 for the encoders and the UNet, 1e-4 for the decoder).
use anyhow::{bail, Context, Result};
use clap::Parser;
use dma::models::denoiser::Condition;
use dma::pipelines::model::Conditioner;
use dma::weights::read_safetensors;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// The folder bench/make_sdxl_single_file_check.py wrote.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The largest difference relative to the reference's largest magnitude.
fn relative_difference(got: &Tensor, want: &Tensor) -> Result<f64> {
    if got.size() != want.size() {
        bail!("shape {:?} against the reference's {:?}", got.size(), want.size());
    }
    let (got, want) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
    Ok((&got - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            let cache = std::env::var_os("DMA_CACHE").map(PathBuf::from);
            let cache = cache.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dma"))).context("set --dir")?;
            cache.join("bench/sdxl-single-file-check")
        }
    };
    let refs: HashMap<String, Tensor> = read_safetensors(&dir.join("references.safetensors"))?.into_iter().collect();
    let r = |name: &str| refs.get(name).with_context(|| format!("references.safetensors has no `{name}`"));
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("references.json"))?)?;
    let timestep = meta["unet_timestep"].as_i64().context("references.json: unet_timestep")?;

    let start = Instant::now();
    let file = dir.join("sdxl_base_random.safetensors");
    let model = dma::loaders::single_file::load(&file, Device::Cpu, Kind::Float)?;
    let Conditioner::Sdxl(encoders) = &model.conditioner else { bail!("{} did not load as SDXL", file.display()) };
    println!("{}", json!({"loaded": file, "seconds": start.elapsed().as_secs_f64()}));

    let mut checks = Vec::new();
    let (states, pooled) = tch::no_grad(|| encoders.encode_ids(r("ids_1").unwrap(), r("ids_2").unwrap()));
    checks.push(("prompt states [1,77,2048]", relative_difference(&states, r("states")?)?, 3e-5));
    checks.push(("pooled projection [1,1280]", relative_difference(&pooled, r("pooled")?)?, 3e-5));
    let condition = Condition::TextTime {
        states: r("unet_states")?.shallow_clone(),
        pooled: r("unet_text_embeds")?.shallow_clone(),
        time_ids: r("unet_time_ids")?.shallow_clone(),
    };
    let prediction = tch::no_grad(|| model.denoiser.predict(r("unet_sample").unwrap(), &Tensor::from(timestep), &condition));
    checks.push(("UNet output", relative_difference(&prediction.noise, r("unet_out")?)?, 3e-5));
    checks.push(("h (mid block)", relative_difference(&prediction.h, r("unet_mid")?)?, 3e-5));
    let vae = model.vae.as_ref().context("the checkpoint loaded without a VAE")?;
    let decoded = tch::no_grad(|| vae.decode(r("vae_latent").unwrap()));
    checks.push(("VAE decode", relative_difference(&decoded, r("vae_decoded")?)?, 1e-4));

    let mut failed = false;
    for (what, difference, tolerance) in checks {
        let ok = difference <= tolerance;
        failed |= !ok;
        println!("{}", json!({"output": what, "relative_difference": difference, "tolerance": tolerance, "share_of_tolerance": difference / tolerance, "ok": ok}));
    }
    println!("{}", json!({"total_seconds": start.elapsed().as_secs_f64()}));
    if failed {
        bail!("outputs outside their tolerance: the single file loaded with the built-in configs does not compute what diffusers does");
    }
    Ok(())
}
