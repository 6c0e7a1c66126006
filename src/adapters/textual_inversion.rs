//! Textual Inversion (Gal et al. 2022): a new token whose input embedding is learned so that prompts with it
//! draw what a set of images shows. Stored as diffusers stores it: learned_embeds.safetensors with one tensor,
//! named by the token, of shape [1, D] (diffusers' `load_textual_inversion` reads it).
use crate::pipelines::DiffusionModel;
use crate::weights::write_safetensors;
use anyhow::{bail, Result};
use std::path::Path;
use tch::{Kind, Tensor};

pub const FILE_NAME: &str = "learned_embeds.safetensors";

pub struct TextualInversion {
    pub token: String,
    /// The token's input embedding [D], f32.
    pub embedding: Tensor,
}

impl TextualInversion {
    /// Tensors read from an adapter file, when they are one embedding named by its token.
    pub fn from_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<Self> {
        let [(token, tensor)] = tensors else {
            bail!("{}: a Textual Inversion file holds one tensor named by its token; this one has {}", path.display(), tensors.len());
        };
        let embedding = match tensor.size().as_slice() {
            [_] => tensor.shallow_clone(),
            [1, _] => tensor.get(0),
            shape => bail!("{}: the embedding of `{token}` has shape {shape:?}; one vector [D] or [1, D] is supported", path.display()),
        };
        Ok(Self { token: token.clone(), embedding: embedding.to_kind(Kind::Float) })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_safetensors(path, &[(self.token.as_str(), &self.embedding.detach().unsqueeze(0))])
    }

    /// Adds the token to the model's tokenizer and text encoder; a width that does not match the text encoder's
    /// (an embedding learned for another model) is an error.
    pub fn apply(&self, model: &mut DiffusionModel) -> Result<()> {
        model.add_token(&self.token, &self.embedding)?;
        Ok(())
    }

    /// A prompt without the token would ignore the adapter silently.
    pub fn check_prompt(&self, prompt: &str) -> Result<()> {
        if !prompt.contains(&self.token) {
            bail!("the prompt {prompt:?} does not contain `{}`, the token this Textual Inversion adapter learned; write it in the prompt (e.g. {:?})", self.token, format!("{prompt} {}", self.token));
        }
        Ok(())
    }
}
