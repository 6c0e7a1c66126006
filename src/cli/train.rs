//! `dma train`: trains the embedded model (a miniature Stable Diffusion in pixel space) on Fashion-MNIST and MNIST
//! digits with captions, resumably: stop it at any time and run the same command again to continue.
use super::common::progress_bar;
use anyhow::{bail, Context, Result};
use clap::Args;
use dma::data::captions::{vocabulary, Captioner, DEFAULT_P_BROAD};
use dma::data::dataset::Dataset;
use dma::data::rng::Rng;
use dma::data::{data_dir, Split};
use dma::files::{write_atomic, write_json};
use dma::models::tokenizer::{Tokenizer, WordTokenizer};
use dma::training::diffusion::{DiffusionTrainer, TrainSettings};
use dma::training::embedded;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Longest caption in tokens, start and end tokens included.
const MAX_CAPTION_TOKENS: usize = 16;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The model folder to create (configs and tokenizer) and to export the averaged weights into.
    #[arg(long, default_value = "models/embedded")]
    pub model_out: PathBuf,
    /// Checkpoints and the loss log; a checkpoint here is resumed.
    #[arg(long, default_value = "train/embedded")]
    pub state: PathBuf,
    #[arg(long, default_value_t = 4000)]
    pub steps: usize,
    #[arg(long, default_value_t = 96)]
    pub batch: i64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Fraction of empty captions (for classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub uncond_prob: f64,
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (each also exports the model, so it can be tried while training goes on).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    fn settings(&self) -> TrainSettings {
        TrainSettings {
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            uncond_prob: self.uncond_prob,
            ema_decay: self.ema_decay,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
        }
    }
}

/// Writes the configs, run defaults and tokenizer of a new embedded model folder; an existing folder is kept as
/// it is (only its run defaults are added when missing).
fn create_model_folder(dir: &Path) -> Result<()> {
    let defaults = dir.join(dma::pipelines::defaults::FILE);
    if !defaults.is_file() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_json(&defaults, &embedded::run_defaults())?;
    }
    if dir.join("model_index.json").is_file() {
        return Ok(());
    }
    let tokenizer = WordTokenizer::from_words(&vocabulary(), MAX_CAPTION_TOKENS)?;
    tokenizer.save(&dir.join("tokenizer"))?;
    let text = embedded::text_encoder_config(tokenizer.vocab_size(), MAX_CAPTION_TOKENS, tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id());
    for (file, value) in [
        ("unet/config.json", embedded::unet_config()),
        ("text_encoder/config.json", text),
        ("scheduler/scheduler_config.json", embedded::scheduler_config()),
        ("model_index.json", embedded::model_index()),
    ] {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).with_context(|| format!("cannot create {}", path.display()))?;
        write_json(&path, &value)?;
    }
    Ok(())
}

/// The loss log so far (one `step,loss,lr` line per step), kept across resumes up to the checkpoint's step.
fn read_loss_log(path: &Path, upto: usize) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().skip(1).take(upto).map(String::from).collect()).unwrap_or_default()
}

pub fn train(args: TrainArgs) -> Result<()> {
    let settings = args.settings();
    if settings.batch < 1 || settings.steps == 0 || settings.checkpoint_every == 0 {
        bail!("--batch, --steps and --checkpoint-every must be at least 1");
    }
    let device = super::common::parse_device(&args.device)?;
    let data = Dataset::load(&data_dir()?, Split::Train).context("the training data (run scripts/setup_data.sh)")?;
    create_model_folder(&args.model_out)?;
    let tokenizer = Tokenizer::from_folder(&args.model_out.join("tokenizer"))?;
    let captioner = Captioner::new(DEFAULT_P_BROAD)?;
    let mut trainer = DiffusionTrainer::new(&args.model_out, &args.state, settings.clone(), device)?;
    let log_path = args.state.join("loss.csv");
    let mut log = read_loss_log(&log_path, trainer.step);
    let bar = progress_bar(settings.steps as u64, args.quiet);
    bar.set_position(trainer.step as u64);
    while trainer.step < settings.steps {
        // Each step's batch and captions depend only on (seed, step), so resuming repeats nothing and skips nothing.
        let mut rng = Rng::new(settings.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ trainer.step as u64);
        let (images, classes) = data.batch(&mut rng, settings.batch as usize);
        let mut ids = Vec::with_capacity(classes.len() * MAX_CAPTION_TOKENS);
        for &class in &classes {
            let caption = if rng.uniform() < settings.uncond_prob { String::new() } else { captioner.caption(class, &mut rng) };
            ids.extend(tokenizer.encode(&caption)?);
        }
        let ids = Tensor::from_slice(&ids).view([classes.len() as i64, -1]);
        let loss = trainer.train_step(&images, &ids);
        if !loss.is_finite() {
            bail!("step {}: the loss is {loss}; the last checkpoint in {} is intact", trainer.step, args.state.display());
        }
        log.push(format!("{},{loss:.6},{:.3e}", trainer.step, settings.lr_at(trainer.step - 1)));
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        if trainer.step % settings.checkpoint_every == 0 || trainer.step == settings.steps {
            trainer.save_checkpoint(&args.state)?;
            trainer.export(&args.model_out)?;
            write_atomic(&log_path, format!("step,loss,lr\n{}\n", log.join("\n")).as_bytes())?;
        }
    }
    bar.finish_and_clear();
    eprintln!("trained {} steps; model in {}", trainer.step, args.model_out.display());
    Ok(())
}
