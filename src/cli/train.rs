//! `dma train`: trains the embedded model (a miniature Stable Diffusion in pixel space) on Fashion-MNIST and MNIST
//! digits with captions, resumably: stop it at any time (Ctrl-C saves the step it is on) and run the same command
//! again to continue.
use super::common::progress_bar;
use super::interrupt;
use dma::stop::{stop_requested, Interrupted};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use dma::data::captions::{classes_described_by, label_names, vocabulary, Captioner, DEFAULT_P_BROAD, NUM_LABELS};
use dma::data::dataset::Dataset;
use dma::data::rng::Rng;
use dma::data::{data_dir, Split};
use dma::files::{write_atomic, write_json};
use dma::models::tokenizer::{Tokenizer, WordTokenizer};
use dma::training::clip::{ClipTrainSettings, ClipTrainer};
use dma::training::diffusion::{DiffusionTrainer, TrainSettings};
use dma::training::embedded::{self, Network};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Longest caption in tokens, start and end tokens included.
const MAX_CAPTION_TOKENS: usize = 16;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value = "unet")]
    pub network: Network,
    /// The model folder to create (configs and tokenizer) and to export the averaged weights into (default
    /// models/embedded, for --network dit models/embedded/dit).
    #[arg(long)]
    pub model_out: Option<PathBuf>,
    /// Checkpoints and the loss log; a checkpoint here is resumed (default train/embedded, for --network dit
    /// train/embedded-dit).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Optimisation steps (default 5000; for --network dit 10000). Resuming with another count moves the end: the
    /// learning rate's cosine decay then runs from the step reached to the new end.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop after this step, with a checkpoint, as Ctrl-C would there (to split a run, or to change --steps at a
    /// step that can be given again).
    #[arg(long)]
    pub stop_at: Option<usize>,
    /// Images per step (default 64; for --network dit 128: a transformer learns these images more slowly than a UNet).
    #[arg(long)]
    pub batch: Option<i64>,
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
    /// Min-SNR-gamma loss weighting: each sample's loss times min(SNR, gamma) / SNR (default: none; for --network
    /// dit 5, which a transformer needs to learn shapes in the time there is; 0 turns it off).
    #[arg(long)]
    pub min_snr_gamma: Option<f64>,
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
            steps: self.steps.unwrap_or(self.network.default_steps()),
            batch: self.batch.unwrap_or(self.network.default_batch()),
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            uncond_prob: self.uncond_prob,
            ema_decay: self.ema_decay,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            min_snr_gamma: match self.min_snr_gamma {
                Some(gamma) if gamma == 0.0 => None,
                Some(gamma) => Some(gamma),
                None => self.network.default_min_snr_gamma(),
            },
        }
    }
}

/// Writes the configs, run defaults and tokenizer (or class names) of a new embedded model folder; an existing
/// folder is kept as it is (only its run defaults are added when missing).
fn create_model_folder(dir: &Path, network: Network) -> Result<()> {
    let defaults = dir.join(dma::pipelines::defaults::FILE);
    if !defaults.is_file() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_json(&defaults, &embedded::run_defaults(network))?;
    }
    let network_folder = match network {
        Network::Unet => "unet",
        Network::Dit => "transformer",
    };
    if dir.join("model_index.json").is_file() {
        ensure!(dir.join(network_folder).is_dir(), "{}: the model folder has no `{network_folder}` folder, so --network {} cannot train it (another --model-out?)", dir.display(), format!("{network:?}").to_lowercase());
        return Ok(());
    }
    let files = match network {
        Network::Unet => {
            let tokenizer = WordTokenizer::from_words(&vocabulary(), MAX_CAPTION_TOKENS)?;
            tokenizer.save(&dir.join("tokenizer"))?;
            let text = embedded::text_encoder_config(tokenizer.vocab_size(), MAX_CAPTION_TOKENS, tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id());
            vec![("unet/config.json", embedded::unet_config()), ("text_encoder/config.json", text), ("model_index.json", embedded::model_index())]
        }
        Network::Dit => {
            let names: Vec<Vec<String>> = (0..NUM_LABELS).map(label_names).collect();
            vec![("transformer/config.json", embedded::dit_config(NUM_LABELS)), ("model_index.json", embedded::dit_model_index(&names))]
        }
    };
    // model_index.json last: it marks a complete folder.
    let scheduler = ("scheduler/scheduler_config.json", embedded::scheduler_config());
    for (file, value) in std::iter::once(scheduler).chain(files) {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).with_context(|| format!("cannot create {}", path.display()))?;
        write_json(&path, &value)?;
    }
    Ok(())
}

/// How the images of a batch are conditioned: by captions, tokenised for a text encoder, or by a class-conditional
/// model's label ids.
enum Conditioning {
    Captions(Tokenizer),
    Labels,
}

/// A training batch: images [B,1,32,32] in [-1,1], their classes, captions (empty with probability
/// `uncond_prob`; none when conditioned by labels) and the conditions' ids: the captions' tokens [B,L], or labels
/// [B] (the null label `NUM_LABELS` with probability `uncond_prob`). It depends only on (seed, step), so a resumed
/// run repeats nothing and skips nothing.
struct CaptionedBatch {
    images: Tensor,
    classes: Vec<usize>,
    captions: Vec<String>,
    ids: Tensor,
}

fn captioned_batch(data: &Dataset, conditioning: &Conditioning, seed: u64, step: usize, batch: i64, uncond_prob: f64) -> Result<CaptionedBatch> {
    let captioner = Captioner::new(DEFAULT_P_BROAD)?;
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64);
    let (images, classes) = data.batch(&mut rng, batch as usize);
    let mut captions = Vec::with_capacity(classes.len());
    let mut ids = Vec::new();
    for &class in &classes {
        let unconditional = rng.uniform() < uncond_prob;
        match conditioning {
            Conditioning::Captions(tokenizer) => {
                let caption = if unconditional { String::new() } else { captioner.caption(class, &mut rng) };
                ids.extend(tokenizer.encode(&caption)?);
                captions.push(caption);
            }
            Conditioning::Labels => ids.push(if unconditional { NUM_LABELS } else { captioner.label(class, &mut rng) } as i64),
        }
    }
    let ids = match conditioning {
        Conditioning::Captions(_) => Tensor::from_slice(&ids).view([classes.len() as i64, -1]),
        Conditioning::Labels => Tensor::from_slice(&ids),
    };
    Ok(CaptionedBatch { images, classes, captions, ids })
}

/// The loss log so far (one `step,loss,lr` line per step), kept across resumes up to the checkpoint's step.
fn read_loss_log(path: &Path, upto: usize) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().skip(1).take(upto).map(String::from).collect()).unwrap_or_default()
}

/// What the training loop needs of a trainer.
trait Trainer {
    fn step(&self) -> usize;
    fn train_on(&mut self, batch: &CaptionedBatch) -> Result<f64>;
    fn lr_at(&self, step: usize) -> f64;
    /// Writes the checkpoint to `state` and the current weights into the model folder `model_out`.
    fn save(&self, state: &Path, model_out: &Path) -> Result<()>;
}

impl Trainer for DiffusionTrainer {
    fn step(&self) -> usize {
        self.step
    }
    fn train_on(&mut self, batch: &CaptionedBatch) -> Result<f64> {
        Ok(self.train_step(&batch.images, &batch.ids))
    }
    fn lr_at(&self, step: usize) -> f64 {
        self.settings.lr_at(step)
    }
    fn save(&self, state: &Path, model_out: &Path) -> Result<()> {
        self.save_checkpoint(state)?;
        self.export(model_out)
    }
}

impl Trainer for ClipTrainer {
    fn step(&self) -> usize {
        self.step
    }
    fn train_on(&mut self, batch: &CaptionedBatch) -> Result<f64> {
        // Image i matches caption j when caption j describes image i's class.
        let described: Vec<Vec<usize>> = batch.captions.iter().map(|c| classes_described_by(c)).collect();
        let matches: Vec<f32> = batch
            .classes
            .iter()
            .flat_map(|class| described.iter().map(move |d| if d.contains(class) { 1.0 } else { 0.0 }))
            .collect();
        let n = batch.classes.len() as i64;
        let images_0_1 = (&batch.images + 1.0) / 2.0;
        self.train_step(&images_0_1, &batch.ids, &Tensor::from_slice(&matches).view([n, n]))
    }
    fn lr_at(&self, step: usize) -> f64 {
        self.settings.lr_at(step)
    }
    fn save(&self, state: &Path, model_out: &Path) -> Result<()> {
        self.save_checkpoint(state)?;
        self.export(model_out)
    }
}

/// Trains until `steps` (or `stop_at`), checkpointing (and exporting) every `every` steps and at the end, with the
/// loss log.
fn training_loop(
    trainer: &mut impl Trainer,
    next_batch: impl Fn(usize) -> Result<CaptionedBatch>,
    (steps, every, stop_at): (usize, usize, Option<usize>),
    (state, model_out): (&Path, &Path),
    quiet: bool,
) -> Result<()> {
    if steps == 0 || every == 0 {
        bail!("--steps and --checkpoint-every must be at least 1");
    }
    if let Some(at) = stop_at {
        ensure!(at > trainer.step(), "--stop-at {at}: the run in {} is already at step {}", state.display(), trainer.step());
    }
    std::fs::create_dir_all(state).with_context(|| format!("cannot create {}", state.display()))?;
    let log_path = state.join("loss.csv");
    let mut log = read_loss_log(&log_path, trainer.step());
    let bar = progress_bar(steps as u64, quiet);
    bar.set_position(trainer.step() as u64);
    let record = state.join(dma::checkpoint::files::RECORD);
    interrupt::training(state.to_path_buf(), record, "run the same command again to continue".into());
    while trainer.step() < steps {
        let step = trainer.step();
        let loss = trainer.train_on(&next_batch(step)?)?;
        if !loss.is_finite() {
            bail!("step {step}: the loss is {loss}; the last checkpoint in {} is intact", state.display());
        }
        log.push(format!("{},{loss:.6},{:.3e}", step + 1, trainer.lr_at(step)));
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        let asked = stop_at == Some(step + 1);
        let stop = asked || stop_requested();
        if (step + 1) % every == 0 || step + 1 == steps || stop {
            // The log first: a run killed between the two writes resumes from the older checkpoint and reads
            // the log only up to that checkpoint's step; the other order would lose this step's line.
            write_atomic(&log_path, format!("step,loss,lr\n{}\n", log.join("\n")).as_bytes())?;
            trainer.save(state, model_out)?;
        }
        if asked && step + 1 < steps {
            bar.finish_and_clear();
            eprintln!("stopped after step {} of {steps} as --stop-at asked (checkpoint in {}); run the same command without it to continue", step + 1, state.display());
            return Ok(());
        }
        if stop && step + 1 < steps {
            bar.abandon();
            let resume = "run the same command again to continue".to_string();
            return Err(Interrupted { at: format!("training step {} of {steps} (checkpoint saved in {})", step + 1, state.display()), resume }.into());
        }
    }
    bar.finish_and_clear();
    eprintln!("trained {} steps; model in {}", trainer.step(), model_out.display());
    Ok(())
}

fn training_data() -> Result<Dataset> {
    Dataset::load(&data_dir()?, Split::Train).context("the training data (run scripts/setup_data.sh)")
}

pub fn train(args: TrainArgs) -> Result<()> {
    let settings = args.settings();
    if settings.batch < 1 {
        bail!("--batch must be at least 1");
    }
    if let Some(gamma) = args.min_snr_gamma {
        ensure!(gamma.is_finite() && gamma >= 0.0, "--min-snr-gamma must be a number >= 0 (0 turns the weighting off), not {gamma}");
    }
    let device = dma::device::parse_device(&args.device)?;
    let data = training_data()?;
    let (model_out, state) = args.network.default_folders();
    let model_out = args.model_out.clone().unwrap_or_else(|| model_out.into());
    let state = args.state.clone().unwrap_or_else(|| state.into());
    create_model_folder(&model_out, args.network)?;
    let conditioning = match args.network {
        Network::Unet => Conditioning::Captions(Tokenizer::from_folder(&model_out.join("tokenizer"))?),
        Network::Dit => Conditioning::Labels,
    };
    let mut trainer = DiffusionTrainer::new(&model_out, &state, settings.clone(), device)?;
    training_loop(
        &mut trainer,
        |step| captioned_batch(&data, &conditioning, settings.seed, step, settings.batch, settings.uncond_prob),
        (settings.steps, settings.checkpoint_every, args.stop_at),
        (&state, &model_out),
        args.quiet,
    )
}

#[derive(Args, Debug)]
pub struct TrainClipArgs {
    /// The embedded diffusion model's folder, whose tokenizer the CLIP model shares.
    #[arg(long, default_value = "models/embedded")]
    pub model: PathBuf,
    /// The CLIP model folder to create and export into.
    #[arg(long, default_value = "models/embedded/clip")]
    pub model_out: PathBuf,
    #[arg(long, default_value = "train/embedded-clip")]
    pub state: PathBuf,
    /// Optimisation steps; resuming with more trains longer.
    #[arg(long, default_value_t = 8000)]
    pub steps: usize,
    /// Stop after this step, with a checkpoint, as Ctrl-C would there.
    #[arg(long)]
    pub stop_at: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch: i64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

/// Writes the CLIP folder's configs and a copy of the diffusion model's tokenizer (HF CLIP folders keep the
/// tokenizer files at their root); an existing folder is kept.
fn create_clip_folder(dir: &Path, tokenizer_dir: &Path) -> Result<()> {
    if dir.join("config.json").is_file() {
        return Ok(());
    }
    let tokenizer = WordTokenizer::from_folder(tokenizer_dir)?;
    tokenizer.save(dir)?;
    let config = embedded::clip_config(tokenizer.vocab_size(), tokenizer.max_length(), tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id());
    write_json(&dir.join("preprocessor_config.json"), &embedded::clip_preprocessor_config())?;
    write_json(&dir.join("config.json"), &config)
}

pub fn train_clip(args: TrainClipArgs) -> Result<()> {
    let settings = ClipTrainSettings {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
    };
    if settings.batch < 2 {
        bail!("--batch must be at least 2 (contrastive training compares the images of a batch)");
    }
    let device = dma::device::parse_device(&args.device)?;
    let data = training_data()?;
    create_clip_folder(&args.model_out, &args.model.join("tokenizer"))?;
    let conditioning = Conditioning::Captions(Tokenizer::from_folder(&args.model_out)?);
    let mut trainer = ClipTrainer::new(&args.model_out, &args.state, settings.clone(), device)?;
    training_loop(
        &mut trainer,
        |step| captioned_batch(&data, &conditioning, settings.seed, step, settings.batch, 0.0),
        (settings.steps, settings.checkpoint_every, args.stop_at),
        (&args.state, &args.model_out),
        args.quiet,
    )
}
