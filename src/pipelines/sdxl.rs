//! SDXL's conditioning, as `StableDiffusionXLPipeline` builds it: the prompt through both text encoders, each
//! read at its penultimate layer and the two concatenated along the width; the second encoder's pooled output
//! through its projection; and the six size numbers (original size, crop corner, target size) the UNet's added
//! embedding reads. The unconditional branch's prompt "" is all zeros where the pipeline's
//! `force_zeros_for_empty_prompt` says so (SDXL base does).
use crate::models::clip_text::ClipTextModel;
use crate::models::denoiser::Condition;
use crate::models::tokenizer::Tokenizer;
use crate::nn::Linear;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// The size numbers of an image of `height` x `width` pixels, generated whole: original size = target size, crop
/// corner (0, 0), as the pipeline derives them when none are given.
pub fn default_time_ids(height: i64, width: i64) -> [i64; 6] {
    [height, width, 0, 0, height, width]
}

pub struct SdxlTextEncoders {
    pub tokenizer: Tokenizer,
    pub text_encoder: ClipTextModel,
    pub tokenizer_2: Tokenizer,
    pub text_encoder_2: ClipTextModel,
    /// text_encoder_2's `text_projection` (CLIPTextModelWithProjection), no bias.
    pub text_projection: Linear,
    pub force_zeros_for_empty_prompt: bool,
}

impl SdxlTextEncoders {
    /// The condition for `prompt`, one sample, for images of `time_ids`' size, with gradients through both text
    /// encoders unless called under `no_grad` (Textual Inversion learns through them).
    pub fn trainable_condition(&self, prompt: &str, time_ids: [i64; 6], device: Device) -> Result<Condition> {
        let (states, pooled) = self.encode(prompt, device)?;
        let time_ids = Tensor::from_slice(&time_ids).to_kind(Kind::Float).unsqueeze(0).to_device(device);
        Ok(Condition::TextTime { states, pooled, time_ids })
    }

    /// The prompt's states [1, L, D1 + D2] and pooled embedding [1, P]; zeros for "" where the pipeline zeroes the
    /// empty prompt. Tracks gradients unless called under `no_grad`.
    pub fn encode(&self, prompt: &str, device: Device) -> Result<(Tensor, Tensor)> {
        if self.force_zeros_for_empty_prompt && prompt.is_empty() {
            let options = (self.text_projection.weight.kind(), device);
            let width = self.text_encoder.hidden_size() + self.text_encoder_2.hidden_size();
            let states = Tensor::zeros([1, self.tokenizer.max_length() as i64, width], options);
            return Ok((states, Tensor::zeros([1, self.text_projection.out_features()], options)));
        }
        let ids = |tokenizer: &Tokenizer| -> Result<Tensor> { Ok(Tensor::from_slice(&tokenizer.encode(prompt)?).unsqueeze(0).to_device(device)) };
        Ok(self.encode_ids(&ids(&self.tokenizer)?, &ids(&self.tokenizer_2)?))
    }

    /// `encode` from the two tokenizers' ids [B, L]: both encoders' penultimate states side by side, and the second's
    /// pooled output through its projection.
    pub fn encode_ids(&self, ids_1: &Tensor, ids_2: &Tensor) -> (Tensor, Tensor) {
        let (states_1, _) = self.text_encoder.forward_penultimate(&self.text_encoder.embed_tokens(ids_1));
        let (states_2, last_2) = self.text_encoder_2.forward_penultimate(&self.text_encoder_2.embed_tokens(ids_2));
        let pooled = self.text_projection.forward(&self.text_encoder_2.pooled(&last_2, ids_2));
        (Tensor::cat(&[states_1, states_2], -1), pooled)
    }
}
