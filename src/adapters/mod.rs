//! Light adapters that steer a diffusion model toward one mode of a concept: Textual Inversion (a learned token),
//! its analogue for class-conditional models (a learned class embedding) and LoRA (a low-rank update of the
//! network's attention), in the file layouts diffusers and peft use where they have one, and their training on a
//! mode's samples with the noise-prediction loss.
pub mod class_embedding;
pub mod lora;
pub mod textual_inversion;
pub mod training;

use crate::pipelines::model::Conditioner;
use crate::pipelines::DiffusionModel;
use crate::weights::read_safetensors_with_metadata;
use anyhow::{Context, Result};
use class_embedding::ClassEmbedding;
use lora::Lora;
use std::path::{Path, PathBuf};
use textual_inversion::TextualInversion;

/// Which adapter to learn per mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// Rank-1 LoRA on the network's attention projections.
    Lora,
    /// Textual Inversion: one learned token (text-conditioned models).
    Ti,
    /// A learned class: a new row of every label table (class-conditional models: Textual Inversion's analogue).
    #[serde(rename = "class-embedding")]
    ClassEmbedding,
}

impl AdapterKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "LoRA",
            Self::Ti => "Textual Inversion",
            Self::ClassEmbedding => "learned class embedding",
        }
    }

    /// Refuses a kind the model cannot take (Textual Inversion without a text encoder, a class embedding without
    /// classes), so a run fails before it samples.
    pub fn check_fits(self, model: &DiffusionModel) -> Result<()> {
        let family = model.denoiser.family();
        match (self, &model.conditioner) {
            (Self::Ti, Conditioner::Classes(_)) => anyhow::bail!("--adapter-kind ti: Textual Inversion needs a text encoder; this model ({family}) is conditioned on class labels: use lora or class-embedding"),
            (Self::ClassEmbedding, Conditioner::Text { .. } | Conditioner::Sdxl(_)) => anyhow::bail!("--adapter-kind class-embedding needs a class-conditional model; this model ({family}) is conditioned on text: use ti or lora"),
            _ => Ok(()),
        }
    }
}

pub enum Adapter {
    TextualInversion(TextualInversion),
    ClassEmbedding(ClassEmbedding),
    Lora(Lora),
}

impl Adapter {
    /// Reads an adapter file, telling the kind from its keys: LoRA factors (`unet.*.lora_A.weight`), one tensor
    /// named `class_embedding.<name>` (a learned class), or Textual Inversion (one tensor named by a token, or
    /// SDXL's `clip_l` and `clip_g`).
    pub fn read(path: &Path) -> Result<Self> {
        let (tensors, metadata) = read_safetensors_with_metadata(path).with_context(|| format!("cannot read the adapter {}", path.display()))?;
        if tensors.iter().any(|(k, _)| k.contains(".lora_A.") || k.contains(".lora_B.")) {
            Ok(Self::Lora(Lora::from_tensors(path, tensors)?))
        } else if tensors.iter().any(|(k, _)| k.starts_with(class_embedding::KEY_PREFIX)) {
            Ok(Self::ClassEmbedding(ClassEmbedding::from_tensors(path, &tensors)?))
        } else {
            Ok(Self::TextualInversion(TextualInversion::from_tensors(path, &tensors, &metadata)?))
        }
    }

    pub fn kind(&self) -> AdapterKind {
        match self {
            Self::TextualInversion(_) => AdapterKind::Ti,
            Self::ClassEmbedding(_) => AdapterKind::ClassEmbedding,
            Self::Lora(_) => AdapterKind::Lora,
        }
    }

    /// Writes the adapter into `dir` under the file name diffusers looks for; returns the file.
    pub fn write_into(&self, dir: &Path) -> Result<PathBuf> {
        let path = match self {
            Self::TextualInversion(ti) => {
                let path = dir.join(ti.file_name());
                ti.write(&path)?;
                path
            }
            Self::ClassEmbedding(class) => {
                let path = dir.join(class_embedding::FILE_NAME);
                class.write(&path)?;
                path
            }
            Self::Lora(lora) => {
                let path = dir.join(lora::FILE_NAME);
                lora.write(&path)?;
                path
            }
        };
        Ok(path)
    }

    /// Puts the adapter into the model; fails if it was made for a model of other shapes.
    pub fn apply(&self, model: &mut DiffusionModel) -> Result<()> {
        match self {
            Self::TextualInversion(ti) => ti.apply(model),
            Self::ClassEmbedding(class) => class.apply(model),
            Self::Lora(lora) => lora.apply(model),
        }
    }

    /// Checks that `prompt` lets the adapter act (a Textual Inversion token must appear in it; a learned class must
    /// be the class it names).
    pub fn check_prompt(&self, prompt: &str) -> Result<()> {
        match self {
            Self::TextualInversion(ti) => ti.check_prompt(prompt),
            Self::ClassEmbedding(class) => class.check_prompt(prompt),
            Self::Lora(_) => Ok(()),
        }
    }
}
