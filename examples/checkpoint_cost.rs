//! What a sampling checkpoint costs: the seconds to save one (latents of K SD 1.5 latents, 4x64x64 in f32, and the
//! per-step log, through `checkpoint::sampling::save`, each file written to a temporary name, synced and renamed)
//! and to load it back, for several K. Compare with the time of the DDIM step it follows. Run:
//! `cargo run --release --example checkpoint_cost -- [DIR] [K,K,...] [REPEATS]` (defaults: a temporary folder,
//! 32,256,1000, 5). Put DIR on the disk the runs write to: the figures are the disk's.
use dma::method::StepLog;
use dma::checkpoint::sampling::{load, save, StepState};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let tmp = tempfile::tempdir()?;
    let dir = args.get(1).map_or(tmp.path().to_path_buf(), std::path::PathBuf::from);
    let ks: Vec<i64> = args.get(2).map_or("32,256,1000", |s| s.as_str()).split(',').map(|k| k.parse()).collect::<Result<_, _>>()?;
    let repeats: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    println!("| K | MB per checkpoint | seconds to save (median of {repeats}) | seconds to load |");
    println!("|---|---|---|---|");
    for &k in &ks {
        let latents = Tensor::randn([k, 4, 64, 64], (Kind::Float, Device::Cpu));
        let log: Vec<StepLog> = Vec::new();
        let stage = dir.join(format!("k{k}"));
        let (mut saves, mut loads) = (Vec::new(), Vec::new());
        for step in 0..repeats {
            let state = StepState { next_step: step + 1, steps: repeats + 1, latents: &latents, log: &log, frames: &[], unet_passes: 0, run_latents: latents.size()[0] };
            let start = Instant::now();
            save(&stage, &state)?;
            saves.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let loaded = load(&stage, repeats + 1)?.expect("a checkpoint was just saved");
            loads.push(start.elapsed().as_secs_f64());
            assert!(loaded.latents.equal(&latents));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let megabytes = (k * 4 * 64 * 64 * 4) as f64 / 1e6;
        println!("| {k} | {megabytes:.1} | {:.3} | {:.3} |", median(&mut saves), median(&mut loads));
        std::fs::remove_dir_all(&stage)?;
    }
    Ok(())
}
