//! transformers' `BlipForQuestionAnswering` (e.g. Salesforce/blip-vqa-base): a ViT reads the image, a text encoder
//! reads the question against the image tokens, and a decoder, reading the question's states, gives an answer's
//! tokens. Instead of generating one answer, `answer_log_likelihoods` scores each of a list of candidate answers,
//! as BLIP ranks candidates for VQA: the log-probability of the answer's tokens and the closing `[SEP]` after the
//! decoder's start token `[DEC]`.
use crate::files::read_json;
use crate::hub::component_weight_files;
use crate::models::bert::{sequence_log_likelihood, BertConfig, BlipTextModel, LmHead};
use crate::models::image_processor::ImageProcessor;
use crate::models::tokenizer::WordPieceTokenizer;
use crate::models::vit::{VisionTransformer, VitActivation, VitConfig};
use crate::weights::{read_weight_file, Weights};
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `vision_config` of a BLIP config.json; missing fields take transformers' `BlipVisionConfig` defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct BlipVisionConfig {
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    image_size: i64,
    patch_size: i64,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl BlipVisionConfig {
    fn vit(&self) -> Result<VitConfig> {
        ensure!(self.hidden_act == "gelu", "vision_config.hidden_act `{}` is not supported (BLIP uses \"gelu\")", self.hidden_act);
        Ok(VitConfig {
            width: self.hidden_size,
            depth: self.num_hidden_layers,
            heads: self.num_attention_heads,
            mlp_width: self.intermediate_size,
            patch_size: self.patch_size,
            image_size: self.image_size,
            channels: 3,
            layer_norm_eps: self.layer_norm_eps,
            activation: VitActivation::Gelu,
            pre_norm: false,
        })
    }
}

#[derive(Deserialize)]
struct BlipConfigFile {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    text_config: BertConfig,
    #[serde(default)]
    vision_config: BlipVisionConfig,
}

/// transformers' names for the vision tower, as timm's (`models::vit`): `vision_model.embeddings.class_embedding`
/// is `vision_model.cls_token`, `...encoder.layers.N.self_attn.qkv` is `...blocks.N.attn.qkv`, and so on.
fn timm_vision_name(key: &str) -> String {
    let Some(rest) = key.strip_prefix("vision_model.") else { return key.to_string() };
    let renamed = match rest {
        "embeddings.class_embedding" => "cls_token".to_string(),
        "embeddings.position_embedding" => "pos_embed".to_string(),
        "post_layernorm.weight" => "norm.weight".to_string(),
        "post_layernorm.bias" => "norm.bias".to_string(),
        _ => match rest.strip_prefix("embeddings.patch_embedding.") {
            Some(param) => format!("patch_embed.proj.{param}"),
            None => rest
                .replacen("encoder.layers.", "blocks.", 1)
                .replacen(".self_attn.projection.", ".attn.proj.", 1)
                .replacen(".self_attn.qkv.", ".attn.qkv.", 1)
                .replacen(".layer_norm1.", ".norm1.", 1)
                .replacen(".layer_norm2.", ".norm2.", 1),
        },
    };
    format!("vision_model.{renamed}")
}

pub struct BlipVqa {
    processor: ImageProcessor,
    tokenizer: WordPieceTokenizer,
    vision: VisionTransformer,
    text_encoder: BlipTextModel,
    text_decoder: BlipTextModel,
    lm_head: LmHead,
    device: Device,
}

impl BlipVqa {
    /// A BlipForQuestionAnswering folder in transformers' layout: config.json, model.safetensors (or
    /// pytorch_model.bin), vocab.txt, and preprocessor_config.json when present. Every weight must be used.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: BlipConfigFile = read_json(&config_path)?;
        if !config.architectures.is_empty() && !config.architectures.iter().any(|a| a == "BlipForQuestionAnswering") {
            bail!(
                "{} describes a {}, not a BlipForQuestionAnswering (a VQA model such as Salesforce/blip-vqa-base)",
                config_path.display(),
                config.architectures.join(", ")
            );
        }
        let (text, vit) = (&config.text_config, config.vision_config.vit().with_context(|| format!("{}", config_path.display()))?);
        text.validate_decoder_tokens().with_context(|| format!("{}", config_path.display()))?;
        let files = component_weight_files(dir, "model")?;
        let mut tensors = HashMap::new();
        for file in &files {
            tensors.extend(read_weight_file(file)?.into_iter().map(|(k, t)| (timm_vision_name(&k), t)));
        }
        let source = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        let weights = Weights::from_tensors(tensors, source, device, kind);
        let (vision, text_encoder, text_decoder, lm_head) = weights.build(|p| {
            let vision = VisionTransformer::load(&p.sub("vision_model"), &vit)?;
            let text_encoder = BlipTextModel::load(&p.sub("text_encoder"), text, vit.width)?;
            let text_decoder = BlipTextModel::load(&p.sub("text_decoder.bert"), text, text.hidden_size)?;
            let lm_head = LmHead::load(&p.sub("text_decoder.cls.predictions"), text, text_decoder.word_embeddings())?;
            Ok((vision, text_encoder, text_decoder, lm_head))
        })?;
        let tokenizer = WordPieceTokenizer::from_vocab_file(&dir.join("vocab.txt"))?;
        ensure!(
            tokenizer.vocab_size() as i64 <= text.vocab_size,
            "{}: the vocabulary has {} tokens but the text model only {}",
            dir.display(),
            tokenizer.vocab_size(),
            text.vocab_size
        );
        let processor = ImageProcessor::load(dir, vit.image_size, 3)?;
        Ok(Self { processor, tokenizer, vision, text_encoder, text_decoder, lm_head, device })
    }

    pub fn tokenizer(&self) -> &WordPieceTokenizer {
        &self.tokenizer
    }

    /// Pixel values [B, 3, S, S] of images in [0, 1], as the folder's image processor makes them.
    pub fn preprocess(&self, images_0_1: &Tensor) -> Result<Tensor> {
        self.processor.preprocess(images_0_1)
    }

    /// The image tokens [B, 1 + patches, width] of pixel values [B, 3, S, S].
    pub fn image_tokens(&self, pixel_values: &Tensor) -> Tensor {
        self.vision.forward(pixel_values)
    }

    /// The question's states [B, L, hidden] for each image's tokens [B, N, width]: one question, `[CLS] ... [SEP]`
    /// ids [1, L], no padding.
    pub fn question_states(&self, question_ids: &Tensor, image_tokens: &Tensor) -> Result<Tensor> {
        let ids = question_ids.expand([image_tokens.size()[0], -1], false);
        self.text_encoder.forward(&ids, None, image_tokens, false)
    }

    /// Next-token logits [B, T, vocab] of decoder inputs [B, T] (starting with `[DEC]`) reading the question's
    /// states [B, L, hidden].
    pub fn decoder_logits(&self, ids: &Tensor, question_states: &Tensor) -> Result<Tensor> {
        Ok(self.lm_head.forward(&self.text_decoder.forward(ids, None, question_states, true)?))
    }

    /// The decoder's input for `answer`: `[DEC]`, its WordPiece ids, `[SEP]`.
    pub fn answer_ids(&self, answer: &str) -> Result<Vec<i64>> {
        let pieces = self.tokenizer.pieces(answer);
        ensure!(!pieces.is_empty(), "the answer {answer:?} has no tokens");
        let cfg = &self.text_decoder.config;
        Ok([vec![cfg.bos_token_id], pieces, vec![cfg.sep_token_id]].concat())
    }

    /// For images [N, C, H, W] in [0, 1] and a question: [N, answers], each answer's log-likelihood (f32, CPU).
    pub fn answer_log_likelihoods(&self, images_0_1: &Tensor, question: &str, answers: &[String], batch: i64) -> Result<Tensor> {
        let question_ids = Tensor::from_slice(&self.tokenizer.encode(question)).unsqueeze(0).to_device(self.device);
        let answers = answers.iter().map(|a| self.answer_ids(a)).collect::<Result<Vec<_>>>()?;
        let mut rows = Vec::new();
        for chunk in images_0_1.split(batch.max(1), 0) {
            let scores = tch::no_grad(|| -> Result<Tensor> {
                let pixels = self.processor.preprocess(&chunk.to_device(self.device))?;
                let states = self.question_states(&question_ids, &self.image_tokens(&pixels))?;
                let b = states.size()[0];
                let mut columns = Vec::new();
                for ids in &answers {
                    let ids = Tensor::from_slice(ids).unsqueeze(0).expand([b, -1], false).to_device(self.device);
                    let logits = self.decoder_logits(&ids, &states)?;
                    // Half-precision logits are summed in f32.
                    let logits = if logits.kind() == Kind::Double { logits } else { logits.to_kind(Kind::Float) };
                    columns.push(sequence_log_likelihood(&logits, &ids));
                }
                Ok(Tensor::stack(&columns, 1))
            })?;
            rows.push(scores.to_kind(Kind::Float).to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&rows, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::timm_vision_name;

    #[test]
    fn vision_names_map_to_timm() {
        for (hf, timm) in [
            ("vision_model.embeddings.class_embedding", "vision_model.cls_token"),
            ("vision_model.embeddings.patch_embedding.weight", "vision_model.patch_embed.proj.weight"),
            ("vision_model.encoder.layers.3.self_attn.qkv.bias", "vision_model.blocks.3.attn.qkv.bias"),
            ("vision_model.encoder.layers.0.self_attn.projection.weight", "vision_model.blocks.0.attn.proj.weight"),
            ("vision_model.encoder.layers.11.layer_norm2.weight", "vision_model.blocks.11.norm2.weight"),
            ("vision_model.encoder.layers.1.mlp.fc1.weight", "vision_model.blocks.1.mlp.fc1.weight"),
            ("vision_model.post_layernorm.bias", "vision_model.norm.bias"),
            ("text_encoder.embeddings.LayerNorm.weight", "text_encoder.embeddings.LayerNorm.weight"),
        ] {
            assert_eq!(timm_vision_name(hf), timm);
        }
    }
}
