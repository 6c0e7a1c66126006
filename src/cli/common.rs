//! Options shared by the subcommands: which model, on which device, in which precision; progress display.
use anyhow::{bail, Context, Result};
use clap::Args;
use dma::device::{parse_device, parse_kind};
use dma::distributed::{launcher, Ranks};
use dma::pipelines::embedded::embedded_model_dir;
use dma::loaders::{self, single_file, ModelSource};
use dma::pipelines::DiffusionModel;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use dma::evaluation::clip_embedder::ClipEmbedder;
use dma::output::OutDir;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

#[derive(Args, Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelArgs {
    /// A diffusers folder, a Hugging Face repo id in the local cache, or a single-file .safetensors checkpoint;
    /// `embedded` or `embedded-dit` for the small models that ship with the project (the UNet model, the DiT),
    /// unless a file or folder of that name exists. Without it, the embedded UNet model.
    #[arg(long)]
    pub model: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16, bf16 (or f64, for checks).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// For a single-file checkpoint: take the configs and tokenizer(s) from this diffusers folder instead of the
    /// built-in SD 1.5 / SD 2.1 / SDXL base ones (e.g. SD 2.1-base, which predicts epsilon, or a fine-tune whose
    /// configs differ).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where h (the space DMA aligns in) is read: after this block instead of the family's default. A DiT's
    /// transformer blocks are numbered from 0 (default: the last, as in the paper); a UNet's down blocks likewise
    /// (default: the mid block).
    #[arg(long)]
    #[serde(default)]
    pub hspace_block: Option<usize>,
    /// The flag that named the model, for messages: `--model`, or `--models` where several are compared.
    #[arg(skip = "--model")]
    #[serde(skip, default = "model_flag")]
    pub flag: &'static str,
}

/// The names `--model` takes for the embedded models, and their folders inside the embedded model's.
const EMBEDDED_NAMES: [(&str, &str); 2] = [("embedded", ""), ("embedded-dit", "dit")];

/// The embedded model's sub-folder `spec` names, if it is one of `EMBEDDED_NAMES` and no path of that name exists.
fn embedded_folder(spec: &str) -> Option<&'static str> {
    let (_, folder) = EMBEDDED_NAMES.iter().find(|(name, _)| *name == spec)?;
    (!Path::new(spec).exists()).then_some(*folder)
}

fn model_flag() -> &'static str {
    "--model"
}

impl ModelArgs {
    pub fn source(&self) -> Result<ModelSource> {
        match &self.model {
            Some(spec) => match embedded_folder(spec) {
                Some("") => Ok(ModelSource::Folder(embedded_model_dir()?)),
                Some(folder) => Ok(ModelSource::Folder(embedded_model_dir()?.join(folder))),
                None => ModelSource::resolve(spec).context(self.flag),
            },
            None => Ok(ModelSource::Folder(embedded_model_dir()?)),
        }
    }

    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// The device this rank of `ranks` runs on: `--device cuda` on several ranks is `cuda:<the rank's index on its
    /// node>` (one GPU per rank, each rank picking its own); any other --device is taken as given.
    pub fn device_on_rank(&self, ranks: Ranks) -> String {
        match (self.device.as_str(), launcher::local_rank()) {
            ("cuda", Some(local)) if ranks.size() > 1 => format!("cuda:{local}"),
            _ => self.device.clone(),
        }
    }

    /// `load` onto this rank's device (`device_on_rank`).
    pub fn load_on_rank(&self, source: &ModelSource, ranks: Ranks) -> Result<DiffusionModel> {
        Self { device: self.device_on_rank(ranks), ..self.clone() }.load(source)
    }

    pub fn kind(&self) -> Result<Kind> {
        parse_kind(&self.dtype)
    }

    pub fn load(&self, source: &ModelSource) -> Result<DiffusionModel> {
        let (device, kind) = (self.device()?, self.kind()?);
        let model = match (source, &self.config) {
            (ModelSource::SingleFile(file), Some(configs)) => single_file::load_with_configs(file, configs, device, kind),
            (ModelSource::Folder(_), Some(_)) => bail!("--config applies to single-file checkpoints; a folder has its own configs"),
            _ => loaders::load(source, device, kind),
        };
        let mut model = model.with_context(|| format!("cannot load the model {}", source.path().display()))?;
        model.denoiser.read_h_after(self.hspace_block)?;
        Ok(model)
    }
}

/// The prompt `--class-id id` stands for: a class-conditional model reads `class N` as class N.
pub fn class_prompt(id: i64) -> String {
    format!("class {id}")
}

/// Refuses --class-id for a model that is not class-conditional, or an id outside its classes.
pub fn check_class_ids(model: &DiffusionModel, ids: &[i64]) -> Result<()> {
    ids.iter().try_for_each(|&id| model.class_prompt(id).map(drop).with_context(|| format!("--class-id {id}")))
}

/// Checks `prompt` against `model` before any long work: a word its tokenizer does not know, or a name none of its
/// classes has, is an error (naming `model_name` when several models are in play), and what a user would not expect
/// is said: an empty prompt (the unconditional branch), and a prompt longer than the text encoder reads (the rest is
/// dropped, as diffusers does).
pub fn check_prompt(model: &DiffusionModel, prompt: &str, model_name: Option<&Path>) -> Result<()> {
    let named = || match model_name {
        Some(path) => format!("--prompt {prompt:?} with the model {}", path.display()),
        None => format!("--prompt {prompt:?}"),
    };
    let truncation = model.check_prompt(prompt).with_context(named)?;
    if prompt.trim().is_empty() {
        warn(&format!("{}: an empty prompt is the unconditional branch; its average is of whatever the model draws", named()));
    }
    if let Some((length, room)) = truncation {
        warn(&format!("{} is {length} tokens long; the text encoder reads only the first {room} (the rest is dropped, as in diffusers)", named()));
    }
    Ok(())
}

/// Whether this process says warnings: of the ranks of an MPI job only rank 0 does (they all meet the same ones).
static SAYS_WARNINGS: AtomicBool = AtomicBool::new(true);

/// Whether this process says warnings from now on (`cli::main`).
pub fn say_warnings(on: bool) {
    SAYS_WARNINGS.store(on, Ordering::Relaxed);
}

/// Says `message` on stderr as a warning, where this process says them.
pub fn warn(message: &str) {
    if SAYS_WARNINGS.load(Ordering::Relaxed) {
        eprintln!("warning: {message}");
    }
}

/// A progress bar with ETA on stderr, or nothing when quiet.
pub fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} (ETA {eta})")
            .expect("a valid template"),
    );
    bar
}

/// The run's output folder: `out`, or out/<command>-<label>-<unix time> (with -2, -3, ... when that is taken) when
/// none is given; `force` replaces a result there.
pub fn out_dir(out: Option<&Path>, command: &str, label: &str, force: bool) -> Result<OutDir> {
    let out = match out {
        Some(path) => OutDir::create(path, force, command),
        None => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            OutDir::create_unique(&PathBuf::from("out").join(format!("{command}-{}-{stamp}", slug(label, 40))))
        }
    }?;
    super::interrupt::running(&out, command);
    Ok(out)
}

/// A file-system name for `text`: lower-case letters and digits, other runs of characters as one `-`, at most
/// `max` characters.
pub fn slug(text: &str, max: usize) -> String {
    let lower: String = text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let slug: String = lower.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-").chars().take(max).collect();
    if slug.is_empty() { "untitled".into() } else { slug }
}

/// The CLIP folder a command uses: `clip`, or the embedded model's.
pub fn clip_dir(clip: Option<&Path>) -> Result<PathBuf> {
    Ok(match clip {
        Some(dir) => dir.to_path_buf(),
        None => embedded_model_dir()?.join("clip"),
    })
}

/// Checks now, before any long work, that the CLIP model from `dir` takes this model's images.
pub fn check_clip(embedder: &ClipEmbedder, dir: &Path, model: &DiffusionModel) -> Result<()> {
    let [c, h, w] = model.image_shape();
    let _ = embedder.image_embeds(&Tensor::zeros([1, c, h, w], (Kind::Float, Device::Cpu))).with_context(|| {
        format!("the CLIP model {} cannot embed this model's {w}x{h} images; give one that can with --clip", dir.display())
    })?;
    Ok(())
}

/// The CLIP model at `clip` (default: the embedded model's), checked to take this model's images.
pub fn load_clip(clip: Option<&Path>, model: &DiffusionModel) -> Result<(ClipEmbedder, PathBuf)> {
    let dir = clip_dir(clip)?;
    let embedder = ClipEmbedder::load(&dir, model.device)?;
    check_clip(&embedder, &dir, model)?;
    Ok((embedder, dir))
}
