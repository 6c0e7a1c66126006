//! Learning an adapter from the samples of one mode: the ordinary noise-prediction loss on those samples (their
//! final latents, so no encoder is needed), with only the adapter's parameters trained. Both kinds use AdamW at a
//! constant learning rate with weight decay 1e-2 and gradient clipping at 1, as diffusers' training scripts do.
use super::class_embedding::ClassEmbedding;
use super::lora::Lora;
use super::textual_inversion::TextualInversion;
use super::{Adapter, AdapterKind};
use crate::optim::AdamW;
use crate::checkpoint::training::{Resume, TrainingState};
use crate::checkpoint::Checkpoints;
use crate::models::denoiser::Condition;
use crate::pipelines::DiffusionModel;
use crate::schedulers::ddim::DdimScheduler;
use crate::training::diffusion::noise_prediction_loss;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterTraining {
    pub kind: AdapterKind,
    pub steps: usize,
    pub lr: f64,
    /// Samples per step, drawn with replacement from the mode's samples.
    pub batch: i64,
    /// LoRA's rank (the paper: 1).
    pub rank: i64,
    pub seed: u64,
}

const WEIGHT_DECAY: f64 = 1e-2;

/// The prompt a Textual Inversion adapter is trained and used with: the concept's prompt followed by the token,
/// so the token only has to say which mode.
pub fn prompt_with_token(prompt: &str, token: &str) -> String {
    format!("{prompt} {token}")
}

/// The initial embeddings of a new token, one per text encoder: the mean input embedding of the prompt's own
/// tokens (its ids less the start, end and padding ids, i.e. those of the empty prompt), so training starts at the
/// concept.
fn initial_embeddings(model: &DiffusionModel, prompt: &str) -> Result<Vec<Tensor>> {
    let mut rows = Vec::new();
    for (tokenizer, text_encoder) in model.text_encoders("Textual Inversion")? {
        let specials = tokenizer.encode("")?;
        let words: Vec<i64> = tokenizer.encode(prompt)?.into_iter().filter(|id| !specials.contains(id)).collect();
        ensure!(!words.is_empty(), "the prompt {prompt:?} has no tokens to start a Textual Inversion embedding from");
        let embeds = tch::no_grad(|| text_encoder.embed_tokens(&Tensor::from_slice(&words).unsqueeze(0).to_device(model.device)));
        rows.push(embeds.get(0).mean_dim(0, false, Kind::Float).to_device(Device::Cpu));
    }
    Ok(rows)
}

/// The names of a Textual Inversion's learned rows in checkpoints: `token` (and SDXL's second encoder's `token_2`).
fn token_row_name(encoder: usize) -> String {
    match encoder {
        0 => "token".to_string(),
        i => format!("token_{}", i + 1),
    }
}

/// The text context during training: Textual Inversion differentiates through the text encoder(s) (the prompt
/// with the token); LoRA's context never changes.
enum Conditioning {
    Learned(String),
    Fixed(Condition),
}

/// A learned tensor: the one saved at `resume`'s step, or `fresh` when starting anew; a leaf requiring gradients
/// on `device`.
fn learnable(resume: &Resume, name: &str, fresh: Tensor, device: Device) -> Result<Tensor> {
    let tensor = resume.tensor(name)?.unwrap_or(fresh);
    Ok(tensor.to_kind(Kind::Float).to_device(device).detach().set_requires_grad(true))
}

/// Trains an adapter of `settings.kind` on `samples` (final latents [N,C,H,W] of one mode) and leaves it applied
/// to `model`. Textual Inversion adds `token` (it must be new to the tokenizer) and learns it in
/// `prompt_with_token(prompt, token)`; a class embedding adds the class `token`, starting from the rows of the
/// class `prompt` names; LoRA learns with `prompt` itself. Training starts from `stage`'s checkpoint
/// when `checkpoints` has one (a finished stage trains no more) and shows them every step; `progress` is told of
/// every step.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &mut DiffusionModel,
    samples: &Tensor,
    prompt: &str,
    token: &str,
    settings: &AdapterTraining,
    progress: &dyn Fn(u64),
    stage: &str,
    checkpoints: &mut dyn Checkpoints,
) -> Result<Adapter> {
    ensure!(samples.size()[0] > 0, "no samples to learn an adapter from");
    ensure!(settings.steps > 0 && settings.batch > 0 && settings.lr > 0.0, "adapter training needs steps, batch and lr above 0");
    let scheduler = DdimScheduler::new(&model.scheduler, 1)?;
    let recorded = serde_json::to_value(settings)?;
    let resume = checkpoints.training_start(stage, &recorded)?;
    if resume.step > settings.steps {
        bail!("{stage}: the checkpoint is at training step {} of {}; it is damaged or belongs to another run", resume.step, settings.steps);
    }
    let (params, conditioning) = match settings.kind {
        AdapterKind::Ti => {
            let rows = initial_embeddings(model, prompt)?
                .into_iter()
                .enumerate()
                .map(|(i, row)| learnable(&resume, &token_row_name(i), row, model.device))
                .collect::<Result<Vec<_>>>()?;
            model.add_token(token, &rows)?;
            let params: Vec<(String, Tensor)> = rows.into_iter().enumerate().map(|(i, row)| (token_row_name(i), row)).collect();
            (params, Conditioning::Learned(prompt_with_token(prompt, token)))
        }
        AdapterKind::ClassEmbedding => {
            let rows = model
                .class_rows(prompt)?
                .into_iter()
                .enumerate()
                .map(|(i, row)| learnable(&resume, &format!("class.{i}"), row, model.device))
                .collect::<Result<Vec<_>>>()?;
            model.add_class(token, &rows)?;
            let condition = model.condition(token)?;
            (rows.into_iter().enumerate().map(|(i, row)| (format!("class.{i}"), row)).collect(), Conditioning::Fixed(condition))
        }
        AdapterKind::Lora => {
            ensure!(settings.rank > 0, "the LoRA rank must be at least 1");
            let mut lora = Lora::init(model, settings.rank, settings.seed);
            for (module, layer) in lora.layers.iter_mut() {
                layer.down = learnable(&resume, &format!("{module}.lora_A"), layer.down.detach(), model.device)?;
                layer.up = learnable(&resume, &format!("{module}.lora_B"), layer.up.detach(), model.device)?;
            }
            lora.apply(model)?;
            let params = lora.layers.into_iter().flat_map(|(m, l)| [(format!("{m}.lora_A"), l.down), (format!("{m}.lora_B"), l.up)]).collect();
            (params, Conditioning::Fixed(model.condition(prompt)?))
        }
    };
    let mut optimizer = AdamW::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), settings.lr, WEIGHT_DECAY);
    resume.restore(&mut optimizer)?;
    progress(resume.step as u64);
    let count = samples.size()[0];
    for step in resume.step..settings.steps {
        tch::manual_seed(settings.seed as i64 + step as i64);
        let picks = Tensor::randint(count, [settings.batch], (Kind::Int64, Device::Cpu)).to_device(samples.device());
        let x0 = samples.index_select(0, &picks).to_device(model.device).to_kind(model.kind);
        let condition = match &conditioning {
            Conditioning::Learned(prompt) => model.trainable_condition(prompt)?,
            Conditioning::Fixed(condition) => condition.shallow_clone(),
        };
        let loss = noise_prediction_loss(&model.denoiser, &scheduler, &x0, &condition);
        let value = loss.double_value(&[]);
        ensure!(value.is_finite(), "adapter training ({stage}) step {}: the loss is {value}; the last checkpoint is kept", step + 1);
        optimizer.zero_grad();
        loss.backward();
        optimizer.clip_grad_norm(1.0);
        optimizer.step();
        progress(1);
        checkpoints.after_training_step(stage, &TrainingState { step: step + 1, steps: settings.steps, settings: &recorded, params: &params, optimizer: &optimizer })?;
    }
    let learned = |i: usize| params[i].1.detach().to_device(Device::Cpu);
    Ok(match settings.kind {
        AdapterKind::Ti => Adapter::TextualInversion(TextualInversion { token: token.to_string(), embeddings: (0..params.len()).map(learned).collect() }),
        AdapterKind::ClassEmbedding => {
            let rows: Vec<Tensor> = (0..params.len()).map(learned).collect();
            Adapter::ClassEmbedding(ClassEmbedding { name: token.to_string(), rows: Tensor::stack(&rows, 0) })
        }
        AdapterKind::Lora => {
            let layers = params
                .chunks(2)
                .map(|pair| {
                    let module = pair[0].0.trim_end_matches(".lora_A").to_string();
                    (module, super::lora::LoraLayer { down: pair[0].1.detach(), up: pair[1].1.detach() })
                })
                .collect();
            let lora = Lora { network: model.denoiser.component().to_string(), layers };
            lora.apply(model)?;
            Adapter::Lora(lora)
        }
    })
}

/// The mean noise-prediction loss of `model` on `samples` given the prompt's context, over `draws` fixed
/// (seeded) draws of timesteps and noise per sample: the same seed gives the same draws, so two models or
/// prompts compared with one seed see exactly the same noise.
pub fn mean_loss(model: &DiffusionModel, samples: &Tensor, prompt: &str, seed: u64, draws: usize) -> Result<f64> {
    let scheduler = DdimScheduler::new(&model.scheduler, 1)?;
    let condition = model.condition(prompt)?;
    let x0 = samples.to_device(model.device).to_kind(model.kind);
    let mut total = 0.0;
    for draw in 0..draws {
        tch::manual_seed(seed as i64 + draw as i64);
        total += tch::no_grad(|| noise_prediction_loss(&model.denoiser, &scheduler, &x0, &condition)).double_value(&[]);
    }
    Ok(total / draws.max(1) as f64)
}
