//! Contrastive training of a CLIP model (image and text towers from scratch), resumable like the diffusion
//! trainer. Every caption that truly describes an image counts as its match (several images of one batch can
//! share a class, and a broad caption describes several classes), so the loss is InfoNCE with several positives.
use crate::checkpoint::training::{self as checkpoint, prefixed_params, Resume};
use crate::models::clip::{ClipConfig, ClipModel};
use crate::models::image_processor::ImageProcessor;
use crate::optim::AdamW;
use crate::weights::{write_safetensors, Weights};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClipTrainSettings {
    pub steps: usize,
    pub batch: i64,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
    pub checkpoint_every: usize,
}

impl ClipTrainSettings {
    /// Linear warm-up, then cosine decay to 10%.
    pub fn lr_at(&self, step: usize) -> f64 {
        super::cosine_lr(self.lr, self.warmup, self.steps, step)
    }
}

pub struct ClipTrainer {
    pub settings: ClipTrainSettings,
    pub model: ClipModel,
    weights: Weights,
    params: Vec<(String, Tensor)>,
    optimizer: AdamW,
    pub step: usize,
}

/// CLIP caps its inverse temperature at 100 so training stays stable.
const MAX_LOGIT_SCALE: f64 = 4.6052;

impl ClipTrainer {
    /// The model described by `model_dir`'s config.json and preprocessor_config.json, from the checkpoint in
    /// `train_dir` when there is one, else freshly initialised.
    pub fn new(model_dir: &Path, train_dir: &Path, settings: ClipTrainSettings, device: Device) -> Result<Self> {
        let config = ClipConfig::from_file(&model_dir.join("config.json"))?;
        let processor = ImageProcessor::load(model_dir, config.vision_config.image_size, config.vision_config.num_channels)?;
        let resume = Resume::open_training(train_dir, &settings, settings.steps)?;
        tch::manual_seed(settings.seed as i64);
        let weights = resume.weights("clip", device);
        let model = weights.build(|p| ClipModel::new(p, &config, processor))?;
        let params = prefixed_params(&[("clip", &weights)]);
        let shared = params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let mut optimizer = AdamW::new(shared, settings.lr, settings.weight_decay);
        resume.restore(&mut optimizer)?;
        Ok(Self { step: resume.step, settings, model, weights, params, optimizer })
    }

    /// One step on images [B,C,H,W] in [0,1], captions' ids [B,L], and `matches` [B,B] (image i, caption j: 1 when
    /// caption j describes image i). Returns the loss.
    pub fn train_step(&mut self, images: &Tensor, ids: &Tensor, matches: &Tensor) -> Result<f64> {
        let device = self.params[0].1.device();
        let pixels = self.model.preprocess(&images.to_device(device))?;
        let logits = self.model.logits_per_image(&pixels, &ids.to_device(device));
        let matches = matches.to_device(device).to_kind(Kind::Float);
        // Cross-entropy against the uniform distribution over each row's matches, both directions.
        let soft_ce = |logits: &Tensor, m: &Tensor| {
            let target = m / m.sum_dim_intlist(1, true, Kind::Float);
            -(target * logits.log_softmax(1, Kind::Float)).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float)
        };
        let loss = (soft_ce(&logits, &matches) + soft_ce(&logits.tr(), &matches.tr())) / 2.0;
        self.optimizer.zero_grad();
        loss.backward();
        self.optimizer.clip_grad_norm(1.0);
        self.optimizer.set_lr(self.settings.lr_at(self.step));
        self.optimizer.step();
        tch::no_grad(|| {
            for (name, p) in &mut self.params {
                if name == "clip.logit_scale" {
                    let _ = p.clamp_(0.0, MAX_LOGIT_SCALE);
                }
            }
        });
        self.step += 1;
        Ok(loss.double_value(&[]))
    }

    pub fn save_checkpoint(&self, train_dir: &Path) -> Result<()> {
        checkpoint::save(train_dir, self.step, &self.settings, &self.params, &self.optimizer, Vec::new())
    }

    /// Writes the weights into the model folder (model.safetensors, transformers' CLIPModel key names).
    pub fn export(&self, model_dir: &Path) -> Result<()> {
        let tensors = self.weights.named_tensors();
        let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(&model_dir.join("model.safetensors"), &named)
    }
}
