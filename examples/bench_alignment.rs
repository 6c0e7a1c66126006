//! Times one DMA alignment iteration (encoder-only forward to h, backward to the latent) and what it would cost
//! without the encoder-only path (full forward, h read from it), on a UNet or a DiT transformer folder in diffusers
//! format (for a DiT, h is the last block's tokens and the encoder path skips only the final layer).
//!
//! Prints one JSON line: seconds per repetition of each mode, their medians, peak RSS and a few values of h and of
//! the gradient (the same seeded inputs as bench/torch_alignment.py, so the two can be compared number for number).
//!
//! ```text
//! cargo build --release --example bench_alignment
//! target/release/examples/bench_alignment --unet ~/.cache/dma/bench/sd15-random-unet \
//!     (or --transformer ~/.cache/dma/bench/dit-xl-256-random-transformer) [--modes enc_fwd,enc_fwd_bwd,full_fwd,full_fwd_bwd] [--batch 1] [--reps 3] [--warmup 1] [--threads N]
//! target/release/examples/bench_alignment --info      # thread counts only, no model
//! ```
//!
//! Modes:
//! - `enc_fwd`: `encode_h` without autograd;
//! - `enc_fwd_bwd`: the alignment iteration: `encode_h`, loss = sum over latents of `distance_to(h, target)`,
//!   gradient with respect to the latent;
//! - `full_fwd`: the full UNet forward without autograd;
//! - `full_fwd_bwd`: the full forward with autograd, the same loss on its h, gradient to the latent;
//! - `train_fwd_bwd` (not in the default list, nor in PyTorch's script): what an adapter's training step keeps for
//!   its backward, the full forward with autograd and a loss on the UNet's output (mean square, as the
//!   noise-prediction loss), gradient to the latent (for memory: `dma modes` checks its --adapter-batch with it).
//!
//! Memory: VmHWM is reset (`/proc/self/clear_refs`, 5) once the model and the inputs are in memory, so
//! `rss.peak_bytes` is the peak while the modes ran (weights included), not the transient peak of loading.
use anyhow::{bail, Result};
use clap::Parser;
use dma::method::hspace::distance_to;
use dma::models::denoiser::{Condition, Denoiser, Network};
use dma::models::dit::{DiTConfig, DiTTransformer2DModel};
use dma::models::unet::config::TIME_IDS;
use dma::models::unet::{UNet2DConditionModel, UNetConfig};
use dma::hub::component_weight_files;
use dma::weights::Weights;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const MODES: [&str; 5] = ["enc_fwd", "enc_fwd_bwd", "full_fwd", "full_fwd_bwd", "train_fwd_bwd"];

#[derive(Parser)]
#[command(about = "Times DMA's alignment iteration on a diffusers UNet or DiT transformer folder")]
struct Args {
    /// The UNet folder (config.json + diffusion_pytorch_model.safetensors).
    #[arg(long, conflicts_with = "transformer")]
    unet: Option<PathBuf>,
    /// A DiT's transformer folder (DiTTransformer2DModel config.json + weights), instead of --unet.
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// Comma-separated modes, run interleaved: enc_fwd, enc_fwd_bwd, full_fwd, full_fwd_bwd, train_fwd_bwd.
    #[arg(long, value_delimiter = ',', default_value = "enc_fwd,enc_fwd_bwd,full_fwd,full_fwd_bwd")]
    modes: Vec<String>,
    #[arg(long, default_value_t = 1)]
    batch: i64,
    /// Timed repetitions of each mode.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Untimed repetitions of each mode first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    #[arg(long, default_value_t = 500)]
    timestep: i64,
    /// Intra-op threads (default: libtorch's own choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Print the thread counts and exit.
    #[arg(long)]
    info: bool,
    /// Serve: once loaded, print a JSON "ready" line, then run one repetition per mode name read from stdin and
    /// answer each with a JSON line (wall and CPU seconds), until EOF or `quit`. bench/compare_alignment.py drives
    /// a Rust and a PyTorch server in lockstep, so each pair of repetitions sees the same machine load.
    #[arg(long)]
    serve: bool,
    /// Skip the check that encode_h equals the full forward's h (memory runs: it would allocate before the peak
    /// is measured).
    #[arg(long)]
    skip_check: bool,
}

/// A field of /proc/self/status in bytes (VmRSS, VmHWM).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds of the whole process (all threads) from /proc/self/stat (utime + stime, at 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces); utime and stime are the
    // 14th and 15th fields of the line, the 12th and 13th after the name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resets VmHWM to the current RSS (Linux >= 4.0); false where the kernel refuses.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

struct Inputs {
    latent: Tensor,
    timestep: Tensor,
    /// Text hidden states for a UNet, class ids for a DiT.
    condition: Condition,
    target: Tensor,
}

/// Runs one repetition of `mode`; returns a few scalars of the result (for the cross-check with PyTorch).
/// Everything the repetition allocates is dropped before it returns, so a caller's timing includes freeing it.
fn run_mode(net: &Denoiser, mode: &str, inp: &Inputs) -> Map<String, Value> {
    let mut stats = Map::new();
    let mut put = |k: &str, t: &Tensor| {
        stats.insert(k.into(), json!(t.double_value(&[])));
    };
    match mode {
        "enc_fwd" => {
            let h = tch::no_grad(|| net.encode_h(&inp.latent, &inp.timestep, &inp.condition));
            put("h_abs_mean", &h.abs().mean(Kind::Double));
        }
        "full_fwd" => {
            let out = tch::no_grad(|| net.predict(&inp.latent, &inp.timestep, &inp.condition));
            put("h_abs_mean", &out.h.abs().mean(Kind::Double));
            put("sample_abs_mean", &out.noise.abs().mean(Kind::Double));
        }
        "enc_fwd_bwd" | "full_fwd_bwd" => {
            let leaf = inp.latent.detach().set_requires_grad(true);
            let (losses, _keep) = if mode == "enc_fwd_bwd" {
                (distance_to(&net.encode_h(&leaf, &inp.timestep, &inp.condition), &inp.target), None)
            } else {
                let out = net.predict(&leaf, &inp.timestep, &inp.condition);
                (distance_to(&out.h, &inp.target), Some(out))
            };
            let loss = losses.sum(Kind::Float);
            let grad = Tensor::run_backward(&[&loss], &[&leaf], false, false).pop().unwrap();
            put("loss", &loss.detach());
            put("grad_abs_mean", &grad.abs().mean(Kind::Double));
        }
        "train_fwd_bwd" => {
            let leaf = inp.latent.detach().set_requires_grad(true);
            let loss = net.predict(&leaf, &inp.timestep, &inp.condition).noise.square().mean(Kind::Float);
            let grad = Tensor::run_backward(&[&loss], &[&leaf], false, false).pop().unwrap();
            put("loss", &loss.detach());
            put("grad_abs_mean", &grad.abs().mean(Kind::Double));
        }
        other => panic!("unknown mode {other}"),
    }
    stats
}

/// The lockstep protocol of `--serve` (see bench/compare_alignment.py).
fn serve(net: &Denoiser, inp: &Inputs, ready: Value) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}")?;
    stdout.flush()?;
    for line in std::io::stdin().lock().lines() {
        let mode = line?.trim().to_string();
        let reply = match mode.as_str() {
            "quit" => break,
            "rss" => json!({"rss_bytes": proc_status_bytes("VmRSS"), "hwm_bytes": proc_status_bytes("VmHWM")}),
            m if MODES.contains(&m) => {
                let (c0, t0) = (cpu_seconds(), Instant::now());
                let stats = run_mode(net, m, inp);
                let wall = t0.elapsed().as_secs_f64();
                json!({"mode": m, "wall": wall, "cpu": cpu_seconds() - c0, "check": stats})
            }
            other => json!({"error": format!("unknown mode `{other}`")}),
        };
        writeln!(stdout, "{reply}")?;
        stdout.flush()?;
    }
    Ok(())
}

/// A network from its folder's safetensors, every weight used.
fn load<M>(dir: &std::path::Path, build: impl FnOnce(&dma::weights::WeightPath) -> Result<M>) -> Result<M> {
    let files = component_weight_files(dir, "diffusion_pytorch_model")?;
    Weights::from_files(&files, Device::Cpu, Kind::Float)?.build(build)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let threads = json!({"intra_op": tch::get_num_threads(), "interop": tch::get_num_interop_threads()});
    if args.info {
        println!("{}", json!({"impl": "rust", "threads": threads}));
        return Ok(());
    }
    for m in &args.modes {
        if !MODES.contains(&m.as_str()) {
            bail!("unknown mode `{m}` (expected one of {})", MODES.join(", "));
        }
    }
    let start = Instant::now();
    let net = match (&args.unet, &args.transformer) {
        (Some(dir), _) => {
            let config = UNetConfig::from_file(&dir.join("config.json"))?;
            Network::UNet(load(dir, |p| UNet2DConditionModel::load(p, &config))?)
        }
        (None, Some(dir)) => {
            let config = DiTConfig::from_file(&dir.join("config.json"))?;
            Network::DiT(load(dir, |p| DiTTransformer2DModel::load(p, &config))?)
        }
        (None, None) => bail!("--unet DIR or --transformer DIR is required"),
    };
    let net = Denoiser::new(net);
    let load_s = start.elapsed().as_secs_f64();
    let load_peak = proc_status_bytes("VmHWM");

    // The same draws, in the same order, as bench/torch_alignment.py (same libtorch CPU generator): the latent, the
    // condition (SD's 77 text tokens, with SDXL's pooled embedding and size numbers, or a DiT's class ids), the
    // target h.
    tch::manual_seed(args.seed);
    let b = args.batch;
    let side = net.sample_size();
    let latent = Tensor::randn([b, net.in_channels(), side, side], (Kind::Float, Device::Cpu));
    let (condition, target) = match &net.network {
        Network::UNet(unet) => {
            let c = &unet.config;
            let states = Tensor::randn([b, 77, c.cross_attention_dim], (Kind::Float, Device::Cpu));
            let condition = match c.text_time {
                None => Condition::Text(states),
                // SDXL: a pooled text embedding, and the size numbers of a whole image of the latent's size.
                Some(text_time) => {
                    let pooled = Tensor::randn([b, text_time.input_dim - TIME_IDS * text_time.time_embed_dim], (Kind::Float, Device::Cpu));
                    let size = side * 8;
                    let time_ids = Tensor::from_slice(&[size, size, 0, 0, size, size]).to_kind(Kind::Float).unsqueeze(0).repeat([b, 1]);
                    Condition::TextTime { states, pooled, time_ids }
                }
            };
            let last = *c.block_out_channels.last().unwrap();
            let h_side = side >> (c.block_out_channels.len() - 1);
            (condition, Tensor::randn([1, last, h_side, h_side], (Kind::Float, Device::Cpu)))
        }
        Network::DiT(dit) => {
            let c = &dit.config;
            let labels = Tensor::randint(c.classes, [b], (Kind::Int64, Device::Cpu));
            let tokens = (c.sample_size / c.patch_size).pow(2);
            (Condition::Class(labels), Tensor::randn([1, tokens, c.width()], (Kind::Float, Device::Cpu)))
        }
    };
    let inp = Inputs { latent, timestep: Tensor::from(args.timestep), condition, target };

    // Consistency of the two paths to h (once, before anything is timed or measured).
    let h_diff = (!args.skip_check).then(|| {
        tch::no_grad(|| {
            let h_enc = net.encode_h(&inp.latent, &inp.timestep, &inp.condition);
            let h_full = net.predict(&inp.latent, &inp.timestep, &inp.condition).h;
            (h_enc - h_full).abs().max().double_value(&[])
        })
    });

    let rss_before = proc_status_bytes("VmRSS");
    let reset = reset_peak_rss();

    if args.serve {
        return serve(&net, &inp, json!({"impl": "rust", "ready": true, "batch": b, "threads": threads, "load_s": load_s,
            "h_encode_vs_full_max_abs_diff": h_diff}));
    }

    let mut checks: Map<String, Value> = Map::new();
    for _ in 0..args.warmup {
        for m in &args.modes {
            checks.insert(m.clone(), Value::Object(run_mode(&net, m, &inp)));
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); args.modes.len()];
    for _ in 0..args.reps {
        for (i, m) in args.modes.iter().enumerate() {
            let t0 = Instant::now();
            let stats = run_mode(&net, m, &inp);
            times[i].push(t0.elapsed().as_secs_f64());
            checks.entry(m.clone()).or_insert(Value::Object(stats));
        }
    }
    let peak = proc_status_bytes("VmHWM");

    let mut times_json = Map::new();
    let mut medians = Map::new();
    for (m, t) in args.modes.iter().zip(&times) {
        times_json.insert(m.clone(), json!(t));
        medians.insert(m.clone(), json!(median(t)));
    }
    let out = json!({
        "impl": "rust",
        "batch": b,
        "threads": threads,
        "load_s": load_s,
        "reps": args.reps,
        "warmup": args.warmup,
        "times": times_json,
        "median": medians,
        "rss": {
            "load_peak_bytes": load_peak,
            "before_bytes": rss_before,
            "peak_bytes": if reset { peak } else { None },
            "peak_reset": reset,
        },
        "h_encode_vs_full_max_abs_diff": h_diff,
        "check": checks,
    });
    println!("{out}");
    Ok(())
}
