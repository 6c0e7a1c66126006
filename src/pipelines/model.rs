//! A diffusion model as the method sees it: a prompt -> a condition, a denoiser (whatever its family), the
//! scheduler config, latents -> images. It composes the parts and holds no sampling logic; `loaders` builds it.
use crate::method::hspace::HSpace;
use crate::models::clip_text::ClipTextModel;
use crate::models::denoiser::{Condition, Denoiser};
use crate::models::dit::labels::ClassLabels;
use crate::models::tokenizer::Tokenizer;
use crate::models::vae::AutoencoderKL;
use crate::pipelines::sdxl::{default_time_ids, SdxlTextEncoders};
use crate::sampling::guidance::{GuidanceInterval, GuidedDenoiser};
use crate::schedulers::ddim::DdimConfig;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What turns a prompt into the denoiser's condition.
pub enum Conditioner {
    /// Stable Diffusion: the tokenizer and CLIP text encoder.
    Text { tokenizer: Tokenizer, text_encoder: ClipTextModel },
    /// SDXL: two tokenizers and text encoders, the second's pooled projection, and the size conditioning.
    Sdxl(Box<SdxlTextEncoders>),
    /// A class-conditional model (DiT): the prompt names a class; the empty prompt is the null class.
    Classes(ClassLabels),
}

pub struct DiffusionModel {
    pub conditioner: Conditioner,
    pub denoiser: Denoiser,
    /// None for a model that diffuses in pixel space (the embedded model): its decoder is the identity.
    pub vae: Option<AutoencoderKL>,
    pub scheduler: DdimConfig,
    pub info: ModelInfo,
    pub device: Device,
    pub kind: Kind,
}

/// What a run records about the model it used.
#[derive(Serialize, Clone, Debug)]
pub struct ModelInfo {
    pub source: String,
    pub weight_files: Vec<PathBuf>,
    /// The weight files' SHA-256, once asked for (`weight_hashes`): an SD checkpoint's take seconds to read.
    #[serde(skip)]
    hashes: std::sync::OnceLock<Vec<String>>,
}

impl ModelInfo {
    pub fn new(source: String, weight_files: Vec<PathBuf>) -> Self {
        Self { source, weight_files, hashes: std::sync::OnceLock::new() }
    }

    /// Each weight file's SHA-256, in `weight_files`' order (read once).
    pub fn weight_hashes(&self) -> Result<&[String]> {
        if let Some(hashes) = self.hashes.get() {
            return Ok(hashes);
        }
        let hashes = self.weight_files.iter().map(|f| sha256_file(f)).collect::<Result<Vec<_>>>()?;
        Ok(self.hashes.get_or_init(|| hashes))
    }
}

impl DiffusionModel {
    /// Every tokenizer and text encoder of a text-conditioned model (SDXL's two), in the order the conditioning
    /// concatenates them.
    pub fn text_encoders(&self, what: &str) -> Result<Vec<(&Tokenizer, &ClipTextModel)>> {
        match &self.conditioner {
            Conditioner::Text { tokenizer, text_encoder } => Ok(vec![(tokenizer, text_encoder)]),
            Conditioner::Sdxl(e) => Ok(vec![(&e.tokenizer, &e.text_encoder), (&e.tokenizer_2, &e.text_encoder_2)]),
            Conditioner::Classes(_) => bail!("{what} needs a text encoder; this model ({}) is conditioned on class labels", self.denoiser.family()),
        }
    }

    /// `condition` with gradients through the text encoder(s): Textual Inversion learns a token's embedding
    /// through it.
    pub fn trainable_condition(&self, prompt: &str) -> Result<Condition> {
        match &self.conditioner {
            Conditioner::Text { tokenizer, text_encoder } => {
                let ids = Tensor::from_slice(&tokenizer.encode(prompt)?).unsqueeze(0).to_device(self.device);
                Ok(Condition::Text(text_encoder.forward(&ids)))
            }
            Conditioner::Sdxl(encoders) => {
                let [_, height, width] = self.image_shape();
                encoders.trainable_condition(prompt, default_time_ids(height, width), self.device)
            }
            Conditioner::Classes(_) => bail!("a class-conditional model ({}) has no text encoder to learn through", self.denoiser.family()),
        }
    }

    /// The condition for `prompt` [1, ...]: the text encoder's last hidden state, or the class the prompt names
    /// (the empty prompt: the null class, guidance's unconditional branch).
    pub fn condition(&self, prompt: &str) -> Result<Condition> {
        match &self.conditioner {
            Conditioner::Classes(labels) => {
                let id = if prompt.trim().is_empty() { labels.classes } else { labels.id_of(prompt)? };
                Ok(Condition::Class(Tensor::from_slice(&[id]).to_device(self.device)))
            }
            Conditioner::Text { .. } | Conditioner::Sdxl(_) => tch::no_grad(|| self.trainable_condition(prompt)),
        }
    }

    /// Checks that `prompt` can condition this model (a text prompt's words are in the tokenizer's vocabulary; a
    /// class-conditional model's prompt names a class) and says how a text prompt is cut: Some((its length in
    /// tokens, what the text encoder reads)) when it is longer than that.
    pub fn check_prompt(&self, prompt: &str) -> Result<Option<(usize, usize)>> {
        match &self.conditioner {
            Conditioner::Text { tokenizer, .. } => {
                tokenizer.encode(prompt)?;
                tokenizer.truncation(prompt)
            }
            Conditioner::Sdxl(encoders) => {
                encoders.tokenizer_2.encode(prompt)?;
                encoders.tokenizer.encode(prompt)?;
                encoders.tokenizer.truncation(prompt)
            }
            Conditioner::Classes(labels) => {
                if !prompt.trim().is_empty() {
                    labels.id_of(prompt)?;
                }
                Ok(None)
            }
        }
    }

    /// The two conditions classifier-free guidance needs: the prompt's and the empty prompt's.
    pub fn guidance_conditions(&self, prompt: &str) -> Result<(Condition, Condition)> {
        Ok((self.condition(prompt)?, self.condition("")?))
    }

    /// Classifier-free guidance of this model's denoiser between `cond` and `uncond` (at the timesteps of
    /// `interval`; None: at all), `batch` latents per call.
    pub fn guided<'a>(&'a self, cond: &'a Condition, uncond: &'a Condition, guidance: f64, interval: Option<GuidanceInterval>, batch: i64) -> GuidedDenoiser<'a> {
        GuidedDenoiser { denoiser: &self.denoiser, cond, uncond, kind: self.kind, guidance, interval, batch }
    }

    /// The path to h under `condition`, `batch` latents per call.
    pub fn hspace(&self, condition: Condition, batch: i64) -> HSpace<'_> {
        HSpace::new(&self.denoiser, condition, self.kind, batch)
    }

    /// The prompt that names class `id` of a class-conditional model (`--class-id`): its first name in
    /// id2label, or `class N`.
    pub fn class_prompt(&self, id: i64) -> Result<String> {
        match &self.conditioner {
            Conditioner::Classes(labels) => Ok(labels.display_name(labels.check_id(id)?)),
            Conditioner::Text { .. } | Conditioner::Sdxl(_) => bail!("this model takes a text --prompt; only class-conditional models (DiT) take a class id"),
        }
    }

    /// Teaches the tokenizer(s) a new token and the text encoder(s) its embedding, one row [D] per encoder
    /// (Textual Inversion; SDXL has two). The rows are used as given, so rows that require gradients are trained
    /// through the text encoders.
    pub fn add_token(&mut self, token: &str, rows: &[Tensor]) -> Result<()> {
        let family = self.denoiser.family();
        let device = self.device;
        let mut encoders: Vec<(&mut Tokenizer, &mut ClipTextModel)> = match &mut self.conditioner {
            Conditioner::Text { tokenizer, text_encoder } => vec![(tokenizer, text_encoder)],
            Conditioner::Sdxl(e) => {
                let e = &mut **e;
                vec![(&mut e.tokenizer, &mut e.text_encoder), (&mut e.tokenizer_2, &mut e.text_encoder_2)]
            }
            Conditioner::Classes(_) => bail!("Textual Inversion needs a text encoder; this model ({family}) is conditioned on class labels: use a LoRA adapter or a learned class embedding (--adapter-kind lora or class-embedding)"),
        };
        let widths: Vec<i64> = encoders.iter().map(|(_, e)| e.hidden_size()).collect();
        let given: Vec<Vec<i64>> = rows.iter().map(|r| r.size()).collect();
        anyhow::ensure!(
            given.len() == widths.len() && given.iter().zip(&widths).all(|(g, w)| g.as_slice() == [*w]),
            "the embedding(s) for `{token}` have shapes {given:?}; this model's text encoder(s) need {:?} (an embedding learned for another model?)",
            widths.iter().map(|w| vec![*w]).collect::<Vec<_>>()
        );
        for (tokenizer, text_encoder) in &encoders {
            let (tokens, embeddings) = (tokenizer.vocab_size() as i64, text_encoder.vocab_size());
            anyhow::ensure!(tokens == embeddings, "the tokenizer has {tokens} ids but the text encoder {embeddings} embeddings; cannot add a token to both");
        }
        for ((tokenizer, text_encoder), row) in encoders.iter_mut().zip(rows) {
            tokenizer.add_new_token(token)?;
            text_encoder.add_token_embedding(&row.to_device(device))?;
        }
        Ok(())
    }

    /// The label-table rows (one per block) of the class `prompt` names: where a learned class embedding starts.
    pub fn class_rows(&self, prompt: &str) -> Result<Vec<Tensor>> {
        let Condition::Class(id) = self.condition(prompt)? else {
            bail!("a class embedding needs a class-conditional model; this model ({}) is conditioned on text: use Textual Inversion", self.denoiser.family());
        };
        self.denoiser.class_rows(id.int64_value(&[0]))
    }

    /// Adds a class named `name` whose label-table rows are `rows` (one per block; used as given, so rows that
    /// require gradients are learned): a class-conditional model's Textual Inversion. Returns its id.
    pub fn add_class(&mut self, name: &str, rows: &[Tensor]) -> Result<i64> {
        let family = self.denoiser.family();
        let Conditioner::Classes(labels) = &mut self.conditioner else {
            bail!("a class embedding needs a class-conditional model; this model ({family}) is conditioned on text: use Textual Inversion (--adapter-kind ti)");
        };
        labels.check_new_name(name)?;
        let id = self.denoiser.add_class(rows)?;
        let named = labels.add(name)?;
        anyhow::ensure!(named == id, "the class names and the network's label tables disagree (class {named} named, row {id} added)");
        Ok(id)
    }

    /// The dtype latents are kept and optimised in: f32 even when the model runs in half precision (Adam's small
    /// steps would vanish in f16 rounding), f64 when the model does (for checks).
    pub fn latent_kind(&self) -> Kind {
        if self.kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        }
    }

    /// What the model is conditioned on, as run.json names it: "text" (SD 1.x, 2.x), "sdxl" (two text encoders and
    /// the size numbers) or "class labels" (DiT).
    pub fn conditioning_name(&self) -> &'static str {
        match self.conditioner {
            Conditioner::Text { .. } => "text",
            Conditioner::Sdxl(_) => "sdxl",
            Conditioner::Classes(_) => "class labels",
        }
    }

    /// The dtype the VAE decodes in: the model's, except that an SDXL model in f16 decodes in f32 where its VAE says
    /// it overflows in f16 (`force_upcast`, as SDXL's pipeline does). Layers compute in their input's dtype.
    pub fn vae_kind(&self) -> Kind {
        let upcast = self.kind == Kind::Half && matches!(self.conditioner, Conditioner::Sdxl(_)) && self.vae.as_ref().is_some_and(|v| v.force_upcast);
        if upcast {
            Kind::Float
        } else {
            self.kind
        }
    }

    /// The latent shape [C, H, W] for images of the model's native size.
    pub fn latent_shape(&self) -> [i64; 3] {
        let size = self.denoiser.sample_size();
        [self.denoiser.in_channels(), size, size]
    }

    /// The shape [C, H, W] of the images `decode` gives for latents of `latent_shape()`.
    pub fn image_shape(&self) -> [i64; 3] {
        let [c, h, w] = self.latent_shape();
        match &self.vae {
            Some(vae) => [vae.image_channels, h * vae.scale, w * vae.scale],
            None => [c, h, w],
        }
    }

    /// Latents [B,C,H,W] to images in [0,1], [B,C',H',W'], in f32 on the CPU. A pixel-space model's latents are
    /// images in [-1,1].
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let latents = latents.to_device(self.device).to_kind(self.vae_kind());
        let images = match &self.vae {
            Some(vae) => tch::no_grad(|| vae.images_from_latents(&latents)),
            None => (latents / 2.0 + 0.5).clamp(0.0, 1.0),
        };
        images.to_kind(Kind::Float).to_device(Device::Cpu)
    }

    /// As `decode`, `batch` latents at a time, to bound the VAE's memory on many latents.
    pub fn decode_batched(&self, latents: &Tensor, batch: i64) -> Tensor {
        Tensor::cat(&latents.split(batch.max(1), 0).iter().map(|l| self.decode(l)).collect::<Vec<_>>(), 0)
    }
}

/// A model file's SHA-256, so a run names exactly which weights it used.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}
