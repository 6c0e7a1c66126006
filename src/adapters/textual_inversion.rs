//! Textual Inversion (Gal et al. 2022): a new token whose input embedding is learned so that prompts with it
//! draw what a set of images shows; SDXL learns one embedding per text encoder. Stored as the tools people use
//! store it:
//! - SD 1.x/2.x: diffusers' learned_embeds.safetensors, one tensor named by the token, [1, D]
//!   (`load_textual_inversion` reads it);
//! - SDXL: the layout SDXL embeddings are shared in (A1111, ComfyUI; diffusers' documentation loads them key by
//!   key): `clip_l` [1, 768] for the first encoder and `clip_g` [1, 1280] for the second, the token in the file's
//!   metadata (`token`; those tools name an embedding by its file, so a file without it is named by its stem).
//!   Also read: diffusers' SDXL training script's pair, learned_embeds.safetensors and learned_embeds_2.safetensors
//!   beside it.
use crate::pipelines::DiffusionModel;
use crate::weights::{read_safetensors, safetensors_bytes};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

pub const FILE_NAME: &str = "learned_embeds.safetensors";
/// Our SDXL embeddings' file (one file, both encoders).
pub const SDXL_FILE_NAME: &str = "learned_embeds_sdxl.safetensors";
/// The SDXL layout's keys, first and second encoder.
const SDXL_KEYS: [&str; 2] = ["clip_l", "clip_g"];
const TOKEN_METADATA: &str = "token";

pub struct TextualInversion {
    pub token: String,
    /// The token's input embedding [D] for each text encoder (one, or SDXL's two), f32.
    pub embeddings: Vec<Tensor>,
}

impl TextualInversion {
    /// The embedding(s) in an adapter file's tensors and metadata: one tensor named by its token, or SDXL's
    /// `clip_l` and `clip_g` (with diffusers' pair, the `_2` file beside `path` is read too).
    pub fn from_tensors(path: &Path, tensors: &[(String, Tensor)], metadata: &HashMap<String, String>) -> Result<Self> {
        if tensors.iter().any(|(k, _)| SDXL_KEYS.contains(&k.as_str())) {
            return Self::sdxl_layout(path, tensors, metadata);
        }
        let (token, embedding) = one_embedding(path, tensors)?;
        let mut embeddings = vec![embedding];
        if let Some(second) = second_file(path).filter(|p| p.is_file()) {
            let (token_2, embedding_2) = one_embedding(&second, &read_safetensors(&second)?)?;
            if token_2 != token {
                bail!("{} names the token `{token_2}` but {} `{token}`; diffusers' SDXL pair holds one token", second.display(), path.display());
            }
            embeddings.push(embedding_2);
        }
        Ok(Self { token, embeddings })
    }

    fn sdxl_layout(path: &Path, tensors: &[(String, Tensor)], metadata: &HashMap<String, String>) -> Result<Self> {
        let mut embeddings = Vec::new();
        for key in SDXL_KEYS {
            let tensor = tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t);
            let tensor = tensor.with_context(|| format!("{}: an SDXL embedding holds `clip_l` and `clip_g`; `{key}` is missing", path.display()))?;
            embeddings.push(vector(path, key, tensor)?);
        }
        if let Some((extra, _)) = tensors.iter().find(|(k, _)| !SDXL_KEYS.contains(&k.as_str())) {
            bail!("{}: an SDXL embedding holds `clip_l` and `clip_g` only, not `{extra}`", path.display());
        }
        let token = match metadata.get(TOKEN_METADATA) {
            Some(token) => token.clone(),
            None => path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        if token.trim().is_empty() || token.chars().any(char::is_whitespace) {
            bail!("{}: the embedding's token {token:?} is not one word", path.display());
        }
        Ok(Self { token, embeddings })
    }

    /// The file name it is written under: diffusers' for one encoder, ours for SDXL's two.
    pub fn file_name(&self) -> &'static str {
        if self.embeddings.len() == 2 {
            SDXL_FILE_NAME
        } else {
            FILE_NAME
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let rows: Vec<Tensor> = self.embeddings.iter().map(|e| e.detach().to_kind(Kind::Float).unsqueeze(0)).collect();
        let (named, metadata): (Vec<(&str, &Tensor)>, HashMap<String, String>) = match rows.as_slice() {
            [row] => (vec![(self.token.as_str(), row)], HashMap::new()),
            [first, second] => (vec![(SDXL_KEYS[0], first), (SDXL_KEYS[1], second)], HashMap::from([(TOKEN_METADATA.to_string(), self.token.clone())])),
            _ => bail!("a Textual Inversion adapter has one embedding per text encoder (one or two), not {}", rows.len()),
        };
        crate::files::write_atomic(path, &safetensors_bytes(&named, metadata)?)
    }

    /// Adds the token to the model's tokenizer(s) and text encoder(s); embeddings that do not fit them (learned
    /// for another model) are an error.
    pub fn apply(&self, model: &mut DiffusionModel) -> Result<()> {
        model.add_token(&self.token, &self.embeddings)?;
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

/// diffusers' SDXL training script writes the second encoder's embedding beside the first, as `<stem>_2`.
fn second_file(path: &Path) -> Option<std::path::PathBuf> {
    let stem = path.file_stem()?.to_str()?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("safetensors");
    Some(path.with_file_name(format!("{stem}_2.{ext}")))
}

/// A file of one tensor named by its token.
fn one_embedding(path: &Path, tensors: &[(String, Tensor)]) -> Result<(String, Tensor)> {
    let [(token, tensor)] = tensors else {
        bail!("{}: a Textual Inversion file holds one tensor named by its token (or SDXL's `clip_l` and `clip_g`); this one has {}", path.display(), tensors.len());
    };
    Ok((token.clone(), vector(path, token, tensor)?))
}

/// One embedding vector [D], stored as [D] or [1, D].
fn vector(path: &Path, name: &str, tensor: &Tensor) -> Result<Tensor> {
    let vector = match tensor.size().as_slice() {
        [_] => tensor.shallow_clone(),
        [1, _] => tensor.get(0),
        [n, _] => bail!("{}: `{name}` holds {n} vectors; only one-vector embeddings are supported", path.display()),
        shape => bail!("{}: the embedding `{name}` has shape {shape:?}; one vector [D] or [1, D] is supported", path.display()),
    };
    Ok(vector.to_kind(Kind::Float))
}
