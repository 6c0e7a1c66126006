//! The `dma` command line: argument parsing and the glue from arguments to pipelines and output files.
mod average;
mod common;
mod eval;
pub mod interrupt;
pub mod job;
mod modes;
mod report;
mod resume;
mod run;
mod sweep;
mod train;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use dma::distributed::Ranks;

#[derive(Parser)]
#[command(name = "dma", version, about = "Diffusion Mental Averages: what a text-to-image model thinks a concept looks like")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute the mental average (prototype) of a prompt by trajectory alignment in h-space.
    Average(average::AverageArgs),
    /// Draw plain samples with the same sampler (no alignment).
    Sample(average::SampleArgs),
    /// Find the modes of a concept (clusters of its samples in CLIP space); with --average, one prototype per mode.
    Modes(modes::ModesArgs),
    /// Compare DMA with the baselines (pixel average, Avg VAE, D4M, MGD3, the most typical sample) on concepts
    /// over several seeds: results.csv, results.md, report.html.
    Eval(eval::EvalArgs),
    /// Prototypes of one concept from several models side by side, with the same figures and report.
    Compare(eval::CompareArgs),
    /// DMA's cost-quality frontier: DMA under a grid of settings (--sweep KEY=V1,V2,...) on the same concepts and
    /// seeds, each setting's consistency, representativeness, sharpness and zero-shot classes against its cost in
    /// network passes: results.csv, results.md, report.html.
    Sweep(sweep::SweepArgs),
    /// Train the embedded model (resumable: run the same command again to continue).
    Train(train::TrainArgs),
    /// Train the embedded CLIP model (for embeddings, zero-shot classes and clustering; resumable).
    TrainClip(train::TrainClipArgs),
}

pub fn main(ranks: Ranks) -> anyhow::Result<()> {
    // The matches are kept beside the parsed arguments: `--resume` asks which flags were given.
    let matches = Cli::command().try_get_matches().unwrap_or_else(|e| {
        // A usage error (or --help) is the same on every rank: the first says it.
        if ranks.is_root() {
            e.exit()
        }
        std::process::exit(e.exit_code())
    });
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // From the start, so that no signal finds the process without its handler (`interrupt` says what each does).
    interrupt::listen();
    common::say_warnings(ranks.is_root());
    let sub = |name: &str| matches.subcommand_matches(name).cloned().unwrap_or_default();
    if ranks.size() > 1 && !matches!(cli.command, Command::Average(_) | Command::Sample(_) | Command::Eval(_) | Command::Compare(_) | Command::Modes(_) | Command::Sweep(_)) {
        let name = matches.subcommand_name().unwrap_or("?");
        return job::agree(ranks, Err(anyhow::anyhow!("`dma {name}` does not run across MPI ranks (training runs on one device); start it as one process")));
    }
    match cli.command {
        Command::Average(args) => average::average(args, &sub("average"), ranks),
        Command::Sample(args) => average::sample(args, &sub("sample"), ranks),
        Command::Modes(args) => modes::modes(args, &sub("modes"), ranks),
        Command::Eval(args) => eval::eval(args, &sub("eval"), ranks),
        Command::Compare(args) => eval::compare(args, &sub("compare"), ranks),
        Command::Sweep(args) => sweep::run(args, &sub("sweep"), ranks),
        Command::Train(args) => train::train(args),
        Command::TrainClip(args) => train::train_clip(args),
    }
}
