//! A learned class embedding: Textual Inversion's analogue for a class-conditional model (DiT). A new class is
//! added after the null class, and its row of every block's label table is learned so that sampling the class
//! draws what a set of images shows. Stored as one tensor [blocks, width] named `class_embedding.<name>` in
//! learned_class.safetensors (diffusers has no loader for this; the layout is ours).
use crate::pipelines::DiffusionModel;
use crate::weights::write_safetensors;
use anyhow::{bail, ensure, Result};
use std::path::Path;
use tch::{Kind, Tensor};

pub const FILE_NAME: &str = "learned_class.safetensors";

/// The key prefix that tells a class embedding from a Textual Inversion token in an adapter file.
pub const KEY_PREFIX: &str = "class_embedding.";

pub struct ClassEmbedding {
    /// The class's name: the prompt that samples it.
    pub name: String,
    /// The class's row of each block's label table [blocks, width], f32.
    pub rows: Tensor,
}

impl ClassEmbedding {
    /// Tensors read from an adapter file, when they are one class embedding.
    pub fn from_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<Self> {
        let [(key, tensor)] = tensors else {
            bail!("{}: a class embedding file holds one tensor named `{KEY_PREFIX}<name>`; this one has {}", path.display(), tensors.len());
        };
        let Some(name) = key.strip_prefix(KEY_PREFIX) else { bail!("{}: the tensor `{key}` is not named `{KEY_PREFIX}<name>`", path.display()) };
        ensure!(tensor.dim() == 2, "{}: the class embedding `{name}` has shape {:?}; one row per block [blocks, width] is expected", path.display(), tensor.size());
        Ok(Self { name: name.to_string(), rows: tensor.to_kind(Kind::Float) })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        write_safetensors(path, &[(format!("{KEY_PREFIX}{}", self.name).as_str(), &self.rows.detach())])
    }

    /// Adds the class to the model under its name; rows of another shape than the model's label tables (an
    /// embedding learned for another model) are an error.
    pub fn apply(&self, model: &mut DiffusionModel) -> Result<()> {
        let rows: Vec<Tensor> = self.rows.unbind(0);
        model.add_class(&self.name, &rows)?;
        Ok(())
    }

    /// A prompt that names another class would ignore the adapter silently.
    pub fn check_prompt(&self, prompt: &str) -> Result<()> {
        if !prompt.trim().eq_ignore_ascii_case(&self.name) {
            bail!("the prompt {prompt:?} does not name `{}`, the class this adapter learned; give --prompt {:?}", self.name, self.name);
        }
        Ok(())
    }
}
