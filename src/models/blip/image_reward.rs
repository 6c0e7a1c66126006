//! ImageReward (Xu et al. 2023), the `image-reward` package's reward model: BLIP's ViT reads the image, BLIP's
//! text encoder reads the prompt against the image tokens, and an MLP maps the prompt's first (`[CLS]`) state to
//! one number, standardised by the mean and standard deviation the package fixes. Loaded from the published
//! `ImageReward.pt` (a PyTorch state dict, read as tensors only), `med_config.json` beside it, and BERT's
//! uncased vocabulary (`vocab.txt` beside it, else bert-base-uncased in the Hugging Face cache, which the package's
//! tokenizer downloads).
use crate::files::read_json;
use crate::hub::hf_cache_snapshot;
use crate::models::bert::{BertConfig, BlipTextModel};
use crate::models::image_processor::ImageProcessor;
use crate::models::tokenizer::WordPieceTokenizer;
use crate::models::vit::{VisionTransformer, VitConfig};
use crate::nn::Linear;
use crate::weights::{read_weight_file, Weights};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The package's `ImageReward.mean` and `ImageReward.std`, which standardise the MLP's output.
const REWARD_MEAN: f64 = 0.16717362830052426;
const REWARD_STD: f64 = 1.0333394966054072;
/// The package tokenizes every prompt to this length (`padding='max_length', truncation=True, max_length=35`).
const PROMPT_LENGTH: usize = 35;
/// The widths of the MLP's layers after the text encoder's (`ImageReward.MLP`); dropouts sit between the first
/// four, so the linear layers are `layers.0, 2, 4, 6, 7`.
const MLP_LAYERS: [(usize, i64); 5] = [(0, 1024), (2, 128), (4, 64), (6, 16), (7, 1)];
const VISION: &str = "blip.visual_encoder";
const TEXT: &str = "blip.text_encoder";

pub struct ImageReward {
    processor: ImageProcessor,
    tokenizer: WordPieceTokenizer,
    vision: VisionTransformer,
    text: BlipTextModel,
    mlp: Vec<Linear>,
    device: Device,
}

/// `ImageReward.pt` itself, or the folder holding it (the package keeps it in ~/.cache/ImageReward).
fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    let file = if path.is_dir() { path.join("ImageReward.pt") } else { path.to_path_buf() };
    ensure!(file.is_file(), "--image-reward {}: no such file (expected ImageReward.pt or the folder holding it)", file.display());
    Ok(file)
}

/// BERT's uncased vocabulary: beside the checkpoint, else the Hugging Face cache's bert-base-uncased.
fn vocabulary(dir: &Path) -> Result<PathBuf> {
    let beside = dir.join("vocab.txt");
    if beside.is_file() {
        return Ok(beside);
    }
    for repo in ["bert-base-uncased", "google-bert/bert-base-uncased"] {
        if let Ok(snapshot) = hf_cache_snapshot(repo) {
            if snapshot.join("vocab.txt").is_file() {
                return Ok(snapshot.join("vocab.txt"));
            }
        }
    }
    bail!(
        "ImageReward needs BERT's uncased vocabulary: put bert-base-uncased's vocab.txt in {}, or download it into \
         the Hugging Face cache (`hf download google-bert/bert-base-uncased vocab.txt`)",
        dir.display()
    )
}

impl ImageReward {
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let file = checkpoint_file(path)?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let text_config: BertConfig = read_json(&dir.join("med_config.json"))?;
        let tensors: HashMap<String, Tensor> = read_weight_file(&file)?.into_iter().collect();
        let source = file.display().to_string();
        // The package builds ViT-L/16 with BLIP's own layer norms (eps 1e-6, timm's).
        let vit = VitConfig::from_weights(&tensors, &format!("{VISION}."), &source).with_context(|| format!("{source} is not an ImageReward checkpoint"))?;
        let weights = Weights::from_tensors(tensors, source, device, kind);
        let p = weights.root();
        // med_config.json's `encoder_width` is not read: BLIP sets it to the ViT's width when it builds the model.
        let vision = VisionTransformer::load(&p.sub(VISION), &vit)?;
        let text = BlipTextModel::load(&p.sub(TEXT), &text_config, vit.width)?;
        let mut width = text_config.hidden_size;
        let mut mlp = Vec::new();
        for (index, out) in MLP_LAYERS {
            mlp.push(Linear::load(&p.sub("mlp.layers").sub(index), width, out, true)?);
            width = out;
        }
        // The checkpoint also holds BLIP's projections for retrieval (`blip.vision_proj`, `blip.text_proj`), which
        // the reward does not use; what it does use must be whole.
        for prefix in [VISION, TEXT, "mlp."] {
            weights.check_all_used(prefix)?;
        }
        let tokenizer = WordPieceTokenizer::from_vocab_file(&vocabulary(dir)?)?;
        ensure!(
            tokenizer.vocab_size() as i64 <= text_config.vocab_size,
            "the vocabulary has {} tokens but ImageReward's text model only {}",
            tokenizer.vocab_size(),
            text_config.vocab_size
        );
        Ok(Self { processor: ImageProcessor::openai(vit.image_size)?, tokenizer, vision, text, mlp, device })
    }

    /// The padded prompt ids [1, 35] and attention mask [1, 35], as the package tokenizes a prompt.
    pub fn prompt_tokens(&self, prompt: &str) -> Result<(Tensor, Tensor)> {
        let (ids, mask) = self.tokenizer.encode_padded(prompt, PROMPT_LENGTH)?;
        let tensor = |v: &[i64]| Tensor::from_slice(v).unsqueeze(0).to_device(self.device);
        Ok((tensor(&ids), tensor(&mask)))
    }

    /// The image tokens [B, 1 + patches, width] of pixel values [B, 3, S, S].
    pub fn image_tokens(&self, pixel_values: &Tensor) -> Tensor {
        self.vision.forward(pixel_values)
    }

    /// The prompt's `[CLS]` state [B, hidden] read against each image's tokens.
    pub fn text_features(&self, ids: &Tensor, mask: &Tensor, image_tokens: &Tensor) -> Result<Tensor> {
        let b = image_tokens.size()[0];
        let states = self.text.forward(&ids.expand([b, -1], false), Some(&mask.expand([b, -1], false)), image_tokens, false)?;
        Ok(states.select(1, 0))
    }

    /// The standardised reward [B] of `[CLS]` states [B, hidden].
    pub fn reward_of_features(&self, features: &Tensor) -> Tensor {
        let out = self.mlp.iter().fold(features.shallow_clone(), |x, layer| layer.forward(&x));
        (out.squeeze_dim(-1) - REWARD_MEAN) / REWARD_STD
    }

    /// The reward [N] (f32, CPU) of images [N, C, H, W] in [0, 1] for `prompt`, `batch` images per pass.
    pub fn score(&self, images_0_1: &Tensor, prompt: &str, batch: i64) -> Result<Tensor> {
        let (ids, mask) = self.prompt_tokens(prompt)?;
        let mut out = Vec::new();
        for chunk in images_0_1.split(batch.max(1), 0) {
            let reward = tch::no_grad(|| -> Result<Tensor> {
                let pixels = self.processor.preprocess(&chunk.to_device(self.device))?;
                Ok(self.reward_of_features(&self.text_features(&ids, &mask, &self.image_tokens(&pixels))?))
            })?;
            out.push(reward.to_kind(Kind::Float).to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// Pixel values [B, 3, S, S] of images in [0, 1], as the package's transform makes them.
    pub fn preprocess(&self, images_0_1: &Tensor) -> Result<Tensor> {
        self.processor.preprocess(images_0_1)
    }
}
