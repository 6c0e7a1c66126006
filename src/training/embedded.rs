//! The embedded model's recipe: a miniature Stable Diffusion in pixel space (32x32 grayscale, no VAE), with the
//! same UNet and CLIP text encoder code as Stable Diffusion, configured small.
use crate::pipelines::defaults::RunDefaults;
use crate::sampling::guidance::GuidanceInterval;
use serde_json::{json, Value};

/// h-space is the mid block's output: 128 channels at 8x8.
pub fn unet_config() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": 32,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 64,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
        "flip_sin_to_cos": true,
        "freq_shift": 0
    })
}

pub fn text_encoder_config(vocab_size: usize, max_length: usize, bos: i64, eos: i64, pad: i64) -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": max_length,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad
    })
}

/// DDPM's linear schedule, which suits images in pixel space; DDIM samples from it.
pub fn scheduler_config() -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading"
    })
}

/// A pipeline without a VAE: the decoder is the identity.
pub fn model_index() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [null, null]
    })
}

/// The embedded DiT: a class-conditional Diffusion Transformer on the same 32x32 images, in pixel space like the
/// UNet model (2x2 patches: 256 tokens of width 128, 8 blocks; h-space is the last block's 256x128 tokens; 4x4
/// patches, tried first, drew malformed digits: BENCHMARKS.md "The embedded DiT"). It
/// predicts the noise only (no learned sigma: it is trained with the plain noise-prediction loss, as the UNet).
/// `classes` counts its labels (see `data::captions::NUM_LABELS`); the table has one more row, the null class.
pub fn dit_config(classes: usize) -> Value {
    json!({
        "_class_name": "DiTTransformer2DModel",
        "sample_size": 32,
        "in_channels": 1,
        "out_channels": 1,
        "patch_size": 2,
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "num_layers": 8,
        "num_embeds_ada_norm": classes,
        "activation_fn": "gelu-approximate",
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": false,
        "norm_eps": 1e-5,
        "attention_bias": true
    })
}

/// A DiTPipeline without a VAE; `id2label` gives each label's comma-separated names.
pub fn dit_model_index(id2label: &[Vec<String>]) -> Value {
    let names: serde_json::Map<String, Value> = id2label.iter().enumerate().map(|(id, names)| (id.to_string(), json!(names.join(", ")))).collect();
    json!({
        "_class_name": "DiTPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "vae": [null, null],
        "id2label": names
    })
}

/// What `dma average` uses on an embedded model of `network` unless told otherwise: a mental average in under a
/// minute on two CPU cores (the DiT keeps the UNet model's alignment recipe: 52 s, BENCHMARKS.md "The embedded DiT
/// at step 6000"). In pixel space DDIM clips its prediction of x0, and guidance pushes x0 past the clip;
/// re-deriving the noise from the clipped x0 keeps the step consistent (without it, guidance 1.5 already turns
/// thin digits into blobs). With it, guidance 4.5 is where every class of the UNet model's samples is recognisably
/// that class (models/embedded/README.md). The DiT guides only below timestep 600, more strongly: guidance at the
/// highest noise levels bleached its shirts and drew every "footwear" sample to sneakers and boots
/// (models/embedded/dit/README.md "Quality"). For `dma modes`: adapters train for 400 steps of 8 samples so the
/// whole chain for "footwear" fits in minutes.
pub fn run_defaults(network: Network) -> RunDefaults {
    let unet = RunDefaults {
        // The mean of many, align few (BENCHMARKS.md "Cost-quality frontier", 8 concepts x 5 seeds): the first
        // aligned step's target is the mean h of 256 latents, 16 of them are optimised, 80 Adam iterations in that
        // step and 8 in each later one, no early stop, each latent kept at its norm. Against the earlier 16
        // latents x at most 30 iterations with early stop: 11x more consistent (0.0048 against 0.0555), sharper
        // (0.96 of the samples' against 0.74), 0.90x the encoder's forward+backward passes, 1.75x the sampler's.
        latents: 256,
        optimise: Some(16),
        wide_target_steps: Some(1),
        iters: 80,
        later_iters: Some(8),
        tol: 0.0,
        keep_norm: true,
        window: 5,
        batch: 16,
        guidance: 4.5,
        use_clipped_model_output: true,
        ti_steps: 400,
        ti_lr: 1e-2,
        lora_steps: 400,
        lora_lr: 1e-3,
        adapter_batch: 8,
        ..RunDefaults::default()
    };
    match network {
        Network::Unet => unet,
        Network::Dit => RunDefaults { guidance: 10.0, guidance_interval: Some(GuidanceInterval { from: 0, to: 600 }), ..unet },
    }
}

/// The embedded CLIP (transformers' CLIPModel layout): a ViT on 32x32 grayscale images (4x4 patches) and a text
/// tower over the same word vocabulary as the diffusion model's.
pub fn clip_config(vocab_size: usize, max_length: usize, bos: i64, eos: i64, pad: i64) -> Value {
    let mut text = text_encoder_config(vocab_size, max_length, bos, eos, pad);
    text["model_type"] = json!("clip_text_model");
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": 64,
        "logit_scale_init_value": 2.6592,
        "text_config": text,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 4,
            "num_channels": 1,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5
        }
    })
}

/// Images stay 32x32; [0,1] is mapped to [-1,1] as the diffusion model sees them.
pub fn clip_preprocessor_config() -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": false,
        "do_center_crop": false,
        "do_normalize": true,
        "image_mean": [0.5],
        "image_std": [0.5],
        "resample": 3
    })
}

/// The network `dma train` trains.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Network {
    /// The embedded Stable Diffusion: a CLIP text encoder and a UNet, conditioned on captions.
    Unet,
    /// The embedded DiT: a class-conditional transformer whose labels are the 20 kinds and the broad concepts.
    Dit,
}

impl Network {
    pub fn default_steps(self) -> usize {
        match self {
            Self::Unet => 5000,
            Self::Dit => 10000,
        }
    }

    pub fn default_batch(self) -> i64 {
        match self {
            Self::Unet => 64,
            Self::Dit => 128,
        }
    }

    pub fn default_min_snr_gamma(self) -> Option<f64> {
        match self {
            Self::Unet => None,
            Self::Dit => Some(5.0),
        }
    }

    /// The model folder and the training state's folder when not given.
    pub fn default_folders(self) -> (&'static str, &'static str) {
        match self {
            Self::Unet => ("models/embedded", "train/embedded"),
            Self::Dit => ("models/embedded/dit", "train/embedded-dit"),
        }
    }
}
