//! A CLIP model with its tokenizer: unit-length embeddings of images and of text prompts in one space, for
//! zero-shot classes, clustering samples into modes, and grounded (attribute) embeddings.
use crate::models::clip::ClipModel;
use crate::models::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Images per forward pass of the image tower, to bound memory on large sample sets.
const IMAGE_BATCH: i64 = 256;

pub struct ClipEmbedder {
    pub model: ClipModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl ClipEmbedder {
    /// A CLIPModel folder in transformers' layout with its tokenizer files beside the weights (the embedded CLIP,
    /// or OpenAI's clip-vit-base-patch32 / clip-vit-large-patch14) or in a `tokenizer` subfolder.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let model = ClipModel::load(dir, device, Kind::Float).with_context(|| format!("cannot load the CLIP model {}", dir.display()))?;
        let tokenizer_dir = if dir.join("tokenizer").is_dir() { dir.join("tokenizer") } else { dir.to_path_buf() };
        let tokenizer = Tokenizer::from_folder(&tokenizer_dir).with_context(|| format!("cannot load the CLIP tokenizer in {}", tokenizer_dir.display()))?;
        Ok(Self { model, tokenizer, device })
    }

    /// Unit-length embeddings [B, D] (f32, CPU) of images [B,C,H,W] in [0,1].
    pub fn image_embeds(&self, images_0_1: &Tensor) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in images_0_1.split(IMAGE_BATCH, 0) {
            let pixels = self.model.preprocess(&chunk.to_device(self.device))?;
            out.push(tch::no_grad(|| self.model.image_embeds(&pixels)).to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// Unit-length embeddings [N, D] (f32, CPU) of text prompts; a word the tokenizer cannot encode is an error.
    pub fn text_embeds(&self, prompts: &[String]) -> Result<Tensor> {
        let ids: Vec<i64> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect::<Result<Vec<_>>>()?.concat();
        let ids = Tensor::from_slice(&ids).view([prompts.len() as i64, -1]).to_device(self.device);
        Ok(tch::no_grad(|| self.model.text_embeds(&ids)).to_device(Device::Cpu))
    }
}
