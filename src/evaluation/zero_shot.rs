//! Zero-shot classification with a CLIP model: each class is the mean embedding of its prompts, and an image
//! belongs to the class whose embedding is nearest (cosine).
use super::clip_embedder::ClipEmbedder;
use crate::data::captions::class_captions;
use crate::data::NUM_CLASSES;
use anyhow::Result;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub struct ZeroShot {
    pub embedder: ClipEmbedder,
    /// Unit-length class embeddings [N, D].
    class_embeds: Tensor,
}

impl ZeroShot {
    /// A classifier over classes given as lists of prompts, with the CLIP model and tokenizer in `clip_dir`.
    pub fn new(clip_dir: &Path, class_prompts: &[Vec<String>], device: Device) -> Result<Self> {
        let embedder = ClipEmbedder::load(clip_dir, device)?;
        let mut class_embeds = Vec::with_capacity(class_prompts.len());
        for prompts in class_prompts {
            let mean = embedder.text_embeds(prompts)?.mean_dim(0, false, Kind::Float);
            class_embeds.push(&mean / mean.norm());
        }
        Ok(Self { embedder, class_embeds: Tensor::stack(&class_embeds, 0) })
    }

    /// The embedded model's 20 classes, each by all its training captions.
    pub fn embedded(clip_dir: &Path, device: Device) -> Result<Self> {
        let prompts: Vec<Vec<String>> = (0..NUM_CLASSES).map(class_captions).collect();
        Self::new(clip_dir, &prompts, device)
    }

    /// The class of each image [B,C,H,W] in [0,1].
    pub fn classify(&self, images_0_1: &Tensor) -> Result<Vec<usize>> {
        let similarity = self.embedder.image_embeds(images_0_1)?.matmul(&self.class_embeds.tr());
        Ok(Vec::<i64>::try_from(similarity.argmax(1, false))?.into_iter().map(|c| c as usize).collect())
    }
}
