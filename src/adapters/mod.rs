//! Light adapters that steer a diffusion model toward one mode of a concept: Textual Inversion (a learned token)
//! and LoRA (a low-rank update of the UNet's attention), in the file layouts diffusers and peft use, and their
//! training on a mode's samples with the noise-prediction loss.
pub mod lora;
pub mod textual_inversion;
pub mod training;

use crate::pipelines::DiffusionModel;
use crate::weights::read_safetensors;
use anyhow::{Context, Result};
use lora::Lora;
use std::path::{Path, PathBuf};
use textual_inversion::TextualInversion;

/// Which adapter to learn per mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// Rank-1 LoRA on the UNet's attention projections.
    Lora,
    /// Textual Inversion: one learned token.
    Ti,
}

impl AdapterKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "LoRA",
            Self::Ti => "Textual Inversion",
        }
    }
}

pub enum Adapter {
    TextualInversion(TextualInversion),
    Lora(Lora),
}

impl Adapter {
    /// Reads an adapter file, telling the kind from its keys: LoRA factors (`unet.*.lora_A.weight`), or one tensor
    /// named by a token (Textual Inversion).
    pub fn read(path: &Path) -> Result<Self> {
        let tensors = read_safetensors(path).with_context(|| format!("cannot read the adapter {}", path.display()))?;
        if tensors.iter().any(|(k, _)| k.contains(".lora_A.") || k.contains(".lora_B.")) {
            Ok(Self::Lora(Lora::from_tensors(path, tensors)?))
        } else {
            Ok(Self::TextualInversion(TextualInversion::from_tensors(path, &tensors)?))
        }
    }

    pub fn kind(&self) -> AdapterKind {
        match self {
            Self::TextualInversion(_) => AdapterKind::Ti,
            Self::Lora(_) => AdapterKind::Lora,
        }
    }

    /// Writes the adapter into `dir` under the file name diffusers looks for; returns the file.
    pub fn write_into(&self, dir: &Path) -> Result<PathBuf> {
        let path = match self {
            Self::TextualInversion(ti) => {
                let path = dir.join(textual_inversion::FILE_NAME);
                ti.write(&path)?;
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
            Self::Lora(lora) => lora.apply(model),
        }
    }

    /// Checks that `prompt` lets the adapter act (a Textual Inversion token must appear in it).
    pub fn check_prompt(&self, prompt: &str) -> Result<()> {
        match self {
            Self::TextualInversion(ti) => ti.check_prompt(prompt),
            Self::Lora(_) => Ok(()),
        }
    }
}
