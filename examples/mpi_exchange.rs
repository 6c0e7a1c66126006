//! What ranks exchange per aligned step, timed: the target (the exact mean of h over all latents), the per-latent
//! figures of the step's log, and rank 0's gather of every latent for the checkpoint, at SD 1.5's sizes (h
//! 1280x8x8, latents 4x64x64) and the embedded model's (h 128x8x8, latents 1x32x32).
//!
//! `OMP_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -np 2 target/mpi/release/examples/mpi_exchange
//! [latents per rank] [rounds]` (built with `cargo build --release --features mpi --example mpi_exchange`).
use dma::distributed::mpi::World;
use dma::distributed::{exact, Ranks, Share};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let (_universe, world) = World::initialize().expect("MPI starts once");
    let ranks = Ranks::new(world);
    let args: Vec<String> = std::env::args().collect();
    let per_rank: i64 = args.get(1).map_or(Ok(16), |a| a.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(20), |a| a.parse())?;
    let total = per_rank * ranks.size() as i64;
    // One block per rank: each holds `per_rank` latents.
    let share = Share::new(per_rank, ranks.rank(), ranks.size());
    if ranks.is_root() {
        println!("{} ranks, {per_rank} latents each ({total} in all), {rounds} rounds; milliseconds per round (mean over rounds, rank 0)", ranks.size());
        println!("| model | target: exact mean of h | per-latent log figures | gather of the latents to rank 0 | all three |");
        println!("|---|---|---|---|---|");
    }
    for (name, h_shape, latent_shape) in [("SD 1.5", [1280, 8, 8], [4, 64, 64]), ("embedded", [128, 8, 8], [1, 32, 32])] {
        tch::manual_seed(ranks.rank() as i64);
        let h = Tensor::randn([per_rank, h_shape[0], h_shape[1], h_shape[2]], (Kind::Float, Device::Cpu));
        let latents = Tensor::randn([per_rank, latent_shape[0], latent_shape[1], latent_shape[2]], (Kind::Float, Device::Cpu));
        let losses: Vec<f64> = (0..per_rank).map(|i| i as f64).collect();
        let mut times = [0.0f64; 3];
        for _ in 0..rounds {
            ranks.sum(&[0]); // line the ranks up, so each round times the exchange rather than the arrival
            let t = Instant::now();
            let _target = exact::mean(&ranks, &h, total)?;
            times[0] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _all = ranks.gather_per_latent(&share, total, &losses)?;
            times[1] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _gathered = ranks.gather_rows(&share, total, &latents, false)?;
            times[2] += t.elapsed().as_secs_f64();
        }
        if ranks.is_root() {
            let ms = times.map(|t| 1e3 * t / rounds as f64);
            println!("| {name} | {:.2} | {:.3} | {:.2} | {:.2} |", ms[0], ms[1], ms[2], ms.iter().sum::<f64>());
        }
    }
    Ok(())
}
