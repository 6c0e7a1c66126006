//! Single-file checkpoints in the original LDM (CompVis / Stability) key layout, as most fine-tunes are published:
//! the UNet under `model.diffusion_model.`, the VAE under `first_stage_model.`, the text encoder under
//! `cond_stage_model.` (transformers' CLIP layout for SD 1.x, OpenCLIP's for SD 2.x), or for SDXL (Stability's
//! generative-models layout) the two text encoders under `conditioner.embedders.0.` (CLIP) and `.1.` (OpenCLIP).
//!
//! The keys are renamed to diffusers' in memory and the models built by the same code as from a diffusers folder, so
//! a checkpoint loads exactly as its diffusers conversion would. The renaming is derived from the configs (levels,
//! layers per block, which blocks have attention), not from SD 1.5's numbering, so any UNet the configs describe
//! converts. Every key must be renamed and then used by a model, or be one of the known non-model keys.
use crate::models::denoiser::{Denoiser, Network};
use crate::nn::Linear;
use crate::pipelines::model::{Conditioner, DiffusionModel, ModelInfo};
use crate::pipelines::sdxl::SdxlTextEncoders;
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::tokenizer::{ClipTokenizer, Tokenizer};
use crate::models::unet::config::{BlockKind, UNetConfigFile};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::schedulers::ddim::DdimConfig;
use crate::weights::{read_weight_file, Weights};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";
const TEXT: &str = "cond_stage_model.";
/// SD 1.x: transformers' CLIPTextModel, keys as transformers names them.
const CLIP: &str = "cond_stage_model.transformer.";
/// SD 2.x: OpenCLIP's text tower.
const OPEN_CLIP: &str = "cond_stage_model.model.";
/// SDXL: both text encoders.
const SDXL_TEXT: &str = "conditioner.embedders.";
/// SDXL's first text encoder, transformers' CLIPTextModel.
const SDXL_CLIP: &str = "conditioner.embedders.0.transformer.";
/// SDXL's second text encoder, OpenCLIP's text tower with its projection.
const SDXL_OPEN_CLIP: &str = "conditioner.embedders.1.model.";
/// The SDXL refiner's only text encoder (OpenCLIP, first in its list).
const SDXL_REFINER_TEXT: &str = "conditioner.embedders.0.model.";

/// Which built-in configs a checkpoint gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: OpenAI's CLIP ViT-L/14 text encoder, 768-wide context.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder, 1024-wide context.
    Sd2,
    /// SDXL base: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders, 2048-wide context, size conditioning.
    Sdxl,
}

/// Everything a checkpoint's weights do not say: the models' configs, the scheduler's and the tokenizer.
pub struct Configs {
    pub unet: UNetConfig,
    pub text_encoder: ClipTextConfig,
    pub vae: VaeConfig,
    pub scheduler: DdimConfig,
    pub tokenizer: Tokenizer,
    /// SDXL's second text encoder and tokenizer; None for SD 1.x / 2.x.
    pub sdxl: Option<SdxlConfigs>,
}

/// What SDXL adds to the configs: the second text encoder (with its projection) and tokenizer, and the pipeline's
/// `force_zeros_for_empty_prompt`.
pub struct SdxlConfigs {
    pub text_encoder_2: ClipTextConfig,
    pub tokenizer_2: Tokenizer,
    pub force_zeros_for_empty_prompt: bool,
}

/// The configs of diffusers' stable-diffusion-v1-5 and stable-diffusion-2-1 repositories, as
/// [unet, text_encoder, vae, scheduler].
const SD15_CONFIGS: [&str; 4] = [
    include_str!("../../assets/configs/sd15/unet/config.json"),
    include_str!("../../assets/configs/sd15/text_encoder/config.json"),
    include_str!("../../assets/configs/sd15/vae/config.json"),
    include_str!("../../assets/configs/sd15/scheduler/scheduler_config.json"),
];
const SD21_CONFIGS: [&str; 4] = [
    include_str!("../../assets/configs/sd21/unet/config.json"),
    include_str!("../../assets/configs/sd21/text_encoder/config.json"),
    include_str!("../../assets/configs/sd21/vae/config.json"),
    include_str!("../../assets/configs/sd21/scheduler/scheduler_config.json"),
];
/// stable-diffusion-xl-base-1.0's, and its second text encoder's.
const SDXL_CONFIGS: [&str; 4] = [
    include_str!("../../assets/configs/sdxl/unet/config.json"),
    include_str!("../../assets/configs/sdxl/text_encoder/config.json"),
    include_str!("../../assets/configs/sdxl/vae/config.json"),
    include_str!("../../assets/configs/sdxl/scheduler/scheduler_config.json"),
];
const SDXL_TEXT_ENCODER_2_CONFIG: &str = include_str!("../../assets/configs/sdxl/text_encoder_2/config.json");

impl Configs {
    /// SD 1.5's, SD 2.1's or SDXL base 1.0's configs. SD 2.1 (768 px) predicts v; SD 2.1-base (512 px) has the same
    /// keys but predicts the noise, so a 2.1-base checkpoint needs its configs given (`load_with_configs`) or
    /// `scheduler.prediction_type` set after loading.
    pub fn builtin(family: Family) -> Result<Self> {
        let (name, [unet, text_encoder, vae, scheduler]) = match family {
            Family::Sd1 => ("assets/configs/sd15", SD15_CONFIGS),
            Family::Sd2 => ("assets/configs/sd21", SD21_CONFIGS),
            Family::Sdxl => ("assets/configs/sdxl", SDXL_CONFIGS),
        };
        // The embedded files are ours; parsing them directly skips only the checks that `from_file` makes at
        // reading time, which the models and the scheduler make again when they are built.
        fn parse<T: serde::de::DeserializeOwned>(text: &str, name: &str, file: &str) -> Result<T> {
            serde_json::from_str(text).with_context(|| format!("the built-in {name}/{file} is not valid"))
        }
        let unet_file: UNetConfigFile = parse(unet, name, "unet/config.json")?;
        Ok(Self {
            unet: UNetConfig::resolve(&unet_file).with_context(|| format!("the built-in {name}/unet/config.json"))?,
            text_encoder: parse(text_encoder, name, "text_encoder/config.json")?,
            vae: parse(vae, name, "vae/config.json")?,
            scheduler: parse(scheduler, name, "scheduler/scheduler_config.json")?,
            // SD 2.x pads with "!" (id 0), as diffusers' SD 2 tokenizer folders say; SDXL's first tokenizer is
            // SD 1's, its second SD 2's.
            tokenizer: Tokenizer::Clip(match family {
                Family::Sd1 | Family::Sdxl => ClipTokenizer::openai_default()?,
                Family::Sd2 => ClipTokenizer::openai_default_with_pad("!")?,
            }),
            sdxl: match family {
                Family::Sdxl => Some(SdxlConfigs {
                    text_encoder_2: parse(SDXL_TEXT_ENCODER_2_CONFIG, name, "text_encoder_2/config.json")?,
                    tokenizer_2: Tokenizer::Clip(ClipTokenizer::openai_default_with_pad("!")?),
                    force_zeros_for_empty_prompt: true,
                }),
                _ => None,
            },
        })
    }

    /// The configs and tokenizer(s) of a diffusers folder (its weights, if any, are not read); an SDXL folder (one
    /// with `text_encoder_2`) gives SDXL's.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let tokenizer_dir = dir.join("tokenizer");
        anyhow::ensure!(tokenizer_dir.is_dir(), "{}: the configs folder has no `tokenizer` folder", dir.display());
        let sdxl = if dir.join("text_encoder_2").is_dir() {
            let index = dir.join("model_index.json");
            let index = if index.is_file() { Some(crate::files::read_json(&index)?) } else { None };
            Some(SdxlConfigs {
                text_encoder_2: ClipTextConfig::from_file(&dir.join("text_encoder_2").join("config.json"))?,
                tokenizer_2: Tokenizer::from_folder(&dir.join("tokenizer_2"))?,
                force_zeros_for_empty_prompt: super::stable_diffusion::force_zeros_for_empty_prompt(index.as_ref()),
            })
        } else {
            None
        };
        Ok(Self {
            unet: UNetConfig::from_file(&dir.join("unet").join("config.json"))?,
            text_encoder: ClipTextConfig::from_file(&dir.join("text_encoder").join("config.json"))?,
            vae: VaeConfig::from_file(&dir.join("vae").join("config.json"))?,
            scheduler: DdimConfig::from_file(&dir.join("scheduler").join("scheduler_config.json"))?,
            tokenizer: Tokenizer::from_folder(&tokenizer_dir)?,
            sdxl,
        })
    }
}

/// Loads an LDM checkpoint with the built-in configs of the family its keys show.
pub fn load(file: &Path, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let ldm = read_checkpoint(file)?;
    let configs = Configs::builtin(detect_family(&ldm, file)?)?;
    build(file, ldm, configs, device, kind)
}

/// Loads an LDM checkpoint with the configs and tokenizer of the diffusers folder `configs`, for checkpoints the
/// built-in configs do not describe.
pub fn load_with_configs(file: &Path, configs: &Path, device: Device, kind: Kind) -> Result<DiffusionModel> {
    let ldm = read_checkpoint(file)?;
    build(file, ldm, Configs::from_folder(configs)?, device, kind)
}

fn build(
    file: &Path,
    ldm: HashMap<String, Tensor>,
    configs: Configs,
    device: Device,
    kind: Kind,
) -> Result<DiffusionModel> {
    let converted = convert(ldm, &configs, file)?;
    let model = |tensors, part: &str| {
        let source = format!("{} ({part}, keys renamed from the LDM layout)", file.display());
        Weights::from_tensors(tensors, source, device, kind)
    };
    let text_encoder = model(converted.text_encoder, "text encoder").build(|p| ClipTextModel::load(p, &configs.text_encoder))?;
    let conditioner = match configs.sdxl {
        None => Conditioner::Text { tokenizer: configs.tokenizer, text_encoder },
        Some(sdxl) => {
            let (text_encoder_2, text_projection) = model(converted.text_encoder_2, "second text encoder").build(|p| {
                let encoder = ClipTextModel::load(p, &sdxl.text_encoder_2)?;
                let cfg = &sdxl.text_encoder_2;
                Ok((encoder, Linear::load(&p.sub("text_projection"), cfg.hidden_size, cfg.projection_dim, false)?))
            })?;
            let encoders = SdxlTextEncoders {
                tokenizer: configs.tokenizer,
                text_encoder,
                tokenizer_2: sdxl.tokenizer_2,
                text_encoder_2,
                text_projection,
                force_zeros_for_empty_prompt: sdxl.force_zeros_for_empty_prompt,
            };
            super::stable_diffusion::check_sdxl_widths(&configs.unet, &encoders, file)?;
            Conditioner::Sdxl(Box::new(encoders))
        }
    };
    let unet = model(converted.unet, "UNet").build(|p| UNet2DConditionModel::load(p, &configs.unet))?;
    let vae = model(converted.vae, "VAE").build(|p| AutoencoderKL::load(p, &configs.vae))?;
    let info = ModelInfo::new(file.display().to_string(), vec![file.to_path_buf()]);
    Ok(DiffusionModel {
        conditioner,
        denoiser: Denoiser::new(Network::UNet(unet)),
        vae: Some(vae),
        scheduler: configs.scheduler,
        info,
        device,
        kind,
    })
}

/// Reads a checkpoint and checks that it holds the three models in the LDM layout (two text encoders for SDXL).
pub fn read_checkpoint(file: &Path) -> Result<HashMap<String, Tensor>> {
    let ldm: HashMap<String, Tensor> = read_weight_file(file)?.into_iter().collect();
    let has = |prefix: &str| ldm.keys().any(|k| k.starts_with(prefix));
    if !has(UNET) {
        let mut examples: Vec<&str> = ldm.keys().map(String::as_str).collect();
        examples.sort();
        examples.truncate(3);
        bail!(
            "{} is not a Stable Diffusion checkpoint in the single-file (LDM) layout: expected the UNet under \
             `{UNET}`, the VAE under `{VAE}` and the text encoder under `{TEXT}` (SDXL: `{SDXL_TEXT}`), found keys \
             such as {examples:?}. (A diffusers model is loaded from its folder; LoRA and embedding files are not \
             models.)",
            file.display()
        );
    }
    if has(SDXL_REFINER_TEXT) {
        bail!("{}: an SDXL refiner checkpoint (one OpenCLIP text encoder, aesthetic-score conditioning) is not supported: give the base model", file.display());
    }
    let sdxl = has(SDXL_TEXT);
    let text_missing = if sdxl { !(has(SDXL_CLIP) && has(SDXL_OPEN_CLIP)) } else { !has(TEXT) };
    if !has(VAE) || text_missing {
        let (text, expected) = if sdxl { ("text encoders", format!("`{SDXL_CLIP}` and `{SDXL_OPEN_CLIP}`")) } else { ("text encoder", format!("`{TEXT}`")) };
        bail!(
            "{}: this single-file checkpoint lacks its {}; a Stable Diffusion checkpoint holds the UNet (`{UNET}`), \
             the VAE (`{VAE}`) and the {text} ({expected})",
            file.display(),
            if has(VAE) { text } else { "VAE" }
        );
    }
    let in_channels = ldm.get(&format!("{UNET}input_blocks.0.0.weight")).and_then(|w| w.size().get(1).copied());
    if let Some(channels) = in_channels.filter(|&c| c != 4) {
        bail!("{}: the UNet takes {channels} input channels (an inpainting checkpoint?); only text-to-image models (4) are supported", file.display());
    }
    Ok(ldm)
}

/// SD 1.x, 2.x or SDXL, from the text encoders' layout, or else from the width of the context the UNet's
/// cross-attention reads (768 or 1024).
pub fn detect_family(ldm: &HashMap<String, Tensor>, file: &Path) -> Result<Family> {
    if ldm.keys().any(|k| k.starts_with(SDXL_TEXT)) {
        return Ok(Family::Sdxl);
    }
    if ldm.keys().any(|k| k.starts_with(OPEN_CLIP)) {
        return Ok(Family::Sd2);
    }
    if ldm.keys().any(|k| k.starts_with(CLIP)) {
        return Ok(Family::Sd1);
    }
    let width = ldm
        .iter()
        .find(|(k, _)| k.starts_with(UNET) && k.ends_with(".attn2.to_k.weight"))
        .and_then(|(_, t)| t.size().get(1).copied());
    match width {
        Some(768) => Ok(Family::Sd1),
        Some(1024) => Ok(Family::Sd2),
        _ => bail!(
            "{}: cannot tell whether this is SD 1.x or 2.x (text encoder in neither CLIP's nor OpenCLIP's layout, \
             cross-attention context width {width:?}); give the model's diffusers configs",
            file.display()
        ),
    }
}

/// The models' weights under diffusers' key names, as in the `unet/`, `text_encoder/` (with the `text_model.`
/// prefix), `vae/` and, for SDXL, `text_encoder_2/` files of a diffusers folder.
#[derive(Default)]
pub struct DiffusersWeights {
    pub unet: HashMap<String, Tensor>,
    pub text_encoder: HashMap<String, Tensor>,
    pub vae: HashMap<String, Tensor>,
    pub text_encoder_2: HashMap<String, Tensor>,
}

/// Renames an LDM checkpoint's keys to diffusers', for the models the configs describe. Fails on any key that has
/// no place in them and is not a known non-model key. Tensors keep their stored dtype.
pub fn convert(ldm: HashMap<String, Tensor>, configs: &Configs, file: &Path) -> Result<DiffusersWeights> {
    let (unet_rules, vae_rules) = (unet_rules(&configs.unet), vae_rules(&configs.vae));
    let text_layers = configs.text_encoder.num_hidden_layers;
    // SDXL's second encoder is in the file only when the configs have one, so its keys are unplaced otherwise.
    let second_layers = configs.sdxl.as_ref().map(|s| s.text_encoder_2.num_hidden_layers);
    let mut out = DiffusersWeights::default();
    let mut unplaced = Vec::new();
    for (key, tensor) in ldm {
        let placed = if let Some(rest) = key.strip_prefix(UNET) {
            rename(rest, &unet_rules).map(|k| (&mut out.unet, vec![(k, tensor)]))
        } else if let Some(rest) = key.strip_prefix(VAE) {
            rename(rest, &vae_rules).map(|k| (&mut out.vae, vec![vae_tensor(k, tensor)]))
        } else if let Some(rest) = key.strip_prefix(CLIP).or_else(|| key.strip_prefix(SDXL_CLIP)) {
            Some((&mut out.text_encoder, clip_key(rest).map(|k| (k, tensor)).into_iter().collect()))
        } else if let Some(rest) = key.strip_prefix(OPEN_CLIP) {
            open_clip_keys(rest, tensor, OpenClipUse::Penultimate(text_layers)).map(|renamed| (&mut out.text_encoder, renamed))
        } else if let (Some(rest), Some(layers)) = (key.strip_prefix(SDXL_OPEN_CLIP), second_layers) {
            open_clip_keys(rest, tensor, OpenClipUse::WithProjection(layers)).map(|renamed| (&mut out.text_encoder_2, renamed))
        } else if is_training_state(&key) {
            continue;
        } else {
            None
        };
        let Some((target, renamed)) = placed else {
            unplaced.push(key);
            continue;
        };
        for (name, tensor) in renamed {
            if target.insert(name.clone(), tensor).is_some() {
                bail!(
                    "{}: two weights map to `{name}` (the last was `{key}`); the checkpoint mixes layouts",
                    file.display()
                );
            }
        }
    }
    if !unplaced.is_empty() {
        unplaced.sort();
        bail!(
            "{}: {} weight(s) have no place in the models the configs describe (e.g. {}); the checkpoint and the \
             configs disagree (an unusual checkpoint needs its diffusers configs)",
            file.display(),
            unplaced.len(),
            unplaced.iter().take(5).map(String::as_str).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(out)
}

/// Training state that LDM checkpoints carry besides the three models: the UNet's EMA copy and the noise schedule's
/// buffers (the scheduler config defines the schedule).
fn is_training_state(key: &str) -> bool {
    if key.starts_with("model_ema.") {
        return true;
    }
    let buffer_prefixes = ["alphas_cumprod", "sqrt_", "posterior_"];
    !key.contains('.')
        && (matches!(key, "betas" | "logvar" | "log_one_minus_alphas_cumprod")
            || buffer_prefixes.iter().any(|p| key.starts_with(p)))
}

/// How the modules below a prefix are named in LDM and diffusers, where they differ: (LDM, diffusers) pairs.
type LayerNames = &'static [(&'static str, &'static str)];

/// Keys under the LDM prefix `from` go under the diffusers prefix `to`. Where `layers` is given, the module that holds
/// the parameter is renamed through it (resnets and the VAE's attention name their layers differently); elsewhere
/// the names below the prefix are the same in both layouts.
struct Rule {
    from: String,
    to: String,
    layers: Option<LayerNames>,
}

/// Rules in the making: prefixes whose names below are the same in both layouts, or renamed through `LayerNames`.
#[derive(Default)]
struct Rules(Vec<Rule>);

impl Rules {
    fn same(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.0.push(Rule { from: from.into(), to: to.into(), layers: None });
    }

    fn renamed(&mut self, from: impl Into<String>, to: impl Into<String>, layers: LayerNames) {
        self.0.push(Rule { from: from.into(), to: to.into(), layers: Some(layers) });
    }
}

/// The diffusers name of `key`, or None where no rule places it. The rules' prefixes are disjoint.
fn rename(key: &str, rules: &[Rule]) -> Option<String> {
    let rule = rules.iter().find(|r| key.starts_with(&r.from))?;
    let rest = &key[rule.from.len()..];
    match rule.layers {
        None => Some(format!("{}{rest}", rule.to)),
        Some(layers) => {
            let (layer, param) = rest.rsplit_once('.')?;
            let (_, renamed) = layers.iter().find(|(ldm, _)| *ldm == layer)?;
            Some(format!("{}{renamed}.{param}", rule.to))
        }
    }
}

const UNET_RESNET: LayerNames = &[
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];
const VAE_RESNET: LayerNames = &[
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("nin_shortcut", "conv_shortcut"),
];
const VAE_ATTENTION: LayerNames =
    &[("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")];

/// The UNet's renaming. LDM numbers its blocks in one flat list per direction: `input_blocks.0` is conv_in, then
/// each level has one input block per resnet (holding the resnet at `.0` and its transformer, if any, at `.1`) and,
/// except the last level, one for its downsampler; each output level has `layers_per_block + 1` blocks, the last of
/// which also holds the upsampler, after the transformer if there is one.
fn unet_rules(cfg: &UNetConfig) -> Vec<Rule> {
    let mut rules = Rules::default();
    rules.same("time_embed.0.", "time_embedding.linear_1.");
    rules.same("time_embed.2.", "time_embedding.linear_2.");
    rules.same("input_blocks.0.0.", "conv_in.");
    rules.renamed("middle_block.0.", "mid_block.resnets.0.", UNET_RESNET);
    rules.same("middle_block.1.", "mid_block.attentions.0.");
    rules.renamed("middle_block.2.", "mid_block.resnets.1.", UNET_RESNET);
    rules.same("out.0.", "conv_norm_out.");
    rules.same("out.2.", "conv_out.");
    if cfg.text_time.is_some() {
        // SDXL's added embedding (pooled text and size numbers) is the LDM UNet's `label_emb` MLP.
        rules.same("label_emb.0.0.", "add_embedding.linear_1.");
        rules.same("label_emb.0.2.", "add_embedding.linear_2.");
    }
    let levels = cfg.block_out_channels.len();
    let layers = cfg.layers_per_block as usize;
    let mut block = 1;
    for (level, kind) in cfg.down_blocks.iter().enumerate() {
        let to = format!("down_blocks.{level}");
        for layer in 0..layers {
            rules.renamed(format!("input_blocks.{block}.0."), format!("{to}.resnets.{layer}."), UNET_RESNET);
            if *kind == BlockKind::CrossAttn {
                rules.same(format!("input_blocks.{block}.1."), format!("{to}.attentions.{layer}."));
            }
            block += 1;
        }
        if level + 1 < levels {
            rules.same(format!("input_blocks.{block}.0.op."), format!("{to}.downsamplers.0.conv."));
            block += 1;
        }
    }
    let mut block = 0;
    for (level, kind) in cfg.up_blocks.iter().enumerate() {
        let to = format!("up_blocks.{level}");
        let attention = *kind == BlockKind::CrossAttn;
        for layer in 0..=layers {
            rules.renamed(format!("output_blocks.{block}.0."), format!("{to}.resnets.{layer}."), UNET_RESNET);
            if attention {
                rules.same(format!("output_blocks.{block}.1."), format!("{to}.attentions.{layer}."));
            }
            if layer == layers && level + 1 < levels {
                let slot = if attention { 2 } else { 1 };
                rules.same(format!("output_blocks.{block}.{slot}.conv."), format!("{to}.upsamplers.0.conv."));
            }
            block += 1;
        }
    }
    rules.0
}

/// The VAE's renaming. The LDM decoder numbers its levels by resolution like the encoder (0 = full size) and runs
/// them from the last; diffusers numbers its up blocks in the order they run.
fn vae_rules(cfg: &VaeConfig) -> Vec<Rule> {
    let mut rules = Rules::default();
    rules.same("quant_conv.", "quant_conv.");
    rules.same("post_quant_conv.", "post_quant_conv.");
    for part in ["encoder", "decoder"] {
        rules.same(format!("{part}.conv_in."), format!("{part}.conv_in."));
        rules.same(format!("{part}.conv_out."), format!("{part}.conv_out."));
        rules.same(format!("{part}.norm_out."), format!("{part}.conv_norm_out."));
        rules.renamed(format!("{part}.mid.block_1."), format!("{part}.mid_block.resnets.0."), VAE_RESNET);
        rules.renamed(format!("{part}.mid.block_2."), format!("{part}.mid_block.resnets.1."), VAE_RESNET);
        rules.renamed(format!("{part}.mid.attn_1."), format!("{part}.mid_block.attentions.0."), VAE_ATTENTION);
    }
    let levels = cfg.block_out_channels.len();
    let layers = cfg.layers_per_block as usize;
    for level in 0..levels {
        let (from, to) = (format!("encoder.down.{level}"), format!("encoder.down_blocks.{level}"));
        for layer in 0..layers {
            rules.renamed(format!("{from}.block.{layer}."), format!("{to}.resnets.{layer}."), VAE_RESNET);
        }
        if level + 1 < levels {
            rules.same(format!("{from}.downsample.conv."), format!("{to}.downsamplers.0.conv."));
        }
        let (from, to) = (format!("decoder.up.{}", levels - 1 - level), format!("decoder.up_blocks.{level}"));
        for layer in 0..=layers {
            rules.renamed(format!("{from}.block.{layer}."), format!("{to}.resnets.{layer}."), VAE_RESNET);
        }
        if level + 1 < levels {
            rules.same(format!("{from}.upsample.conv."), format!("{to}.upsamplers.0.conv."));
        }
    }
    rules.0
}

/// The LDM VAE's attention projections are 1x1 convolutions [C, C, 1, 1]; diffusers' are linear layers [C, C].
fn vae_tensor(key: String, tensor: Tensor) -> (String, Tensor) {
    let size = tensor.size();
    if key.contains(".mid_block.attentions.") && size.len() == 4 && size[2..] == [1, 1] {
        (key, tensor.reshape([size[0], size[1]]))
    } else {
        (key, tensor)
    }
}

/// SD 1.x's text encoder, stored as transformers names it (old checkpoints without the `text_model.` level). None
/// for the `position_ids` buffer: positions are implied, and some fine-tunes store it corrupted, as floats.
fn clip_key(rest: &str) -> Option<String> {
    let name = rest.strip_prefix("text_model.").unwrap_or(rest);
    (name != "embeddings.position_ids").then(|| format!("text_model.{name}"))
}

const OPEN_CLIP_LAYER: LayerNames = &[
    ("attn.out_proj", "self_attn.out_proj"),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
];

/// How a checkpoint's OpenCLIP text tower is used, with its number of layers in the diffusers model.
#[derive(Clone, Copy)]
enum OpenClipUse {
    /// SD 2.x conditions on the penultimate layer's output (then ln_final), so the diffusers encoder has one layer
    /// fewer than the checkpoint and the last resblock is dropped, as diffusers does; `text_projection` serves only
    /// CLIP's training.
    Penultimate(i64),
    /// SDXL's second encoder (CLIPTextModelWithProjection): every layer, and `text_projection` for the pooled
    /// embedding, stored as OpenCLIP multiplies by it ([width, projection], x @ P), i.e. transposed.
    WithProjection(i64),
}

/// An OpenCLIP text tower's key as transformers' CLIPTextModel names it. `logit_scale` serves only CLIP's training
/// and `attn_mask` is the causal mask, which the model makes itself. Some(empty) for keys deliberately dropped, None
/// for keys with no place.
fn open_clip_keys(rest: &str, tensor: Tensor, use_: OpenClipUse) -> Option<Vec<(String, Tensor)>> {
    let one = |name: &str| Some(vec![(format!("text_model.{name}"), tensor.shallow_clone())]);
    let layers = match use_ {
        OpenClipUse::Penultimate(layers) | OpenClipUse::WithProjection(layers) => layers,
    };
    match (rest, use_) {
        ("text_projection", OpenClipUse::WithProjection(_)) => return Some(vec![("text_projection.weight".to_string(), tensor.tr())]),
        ("text_projection" | "logit_scale" | "attn_mask", _) => return Some(Vec::new()),
        ("token_embedding.weight", _) => return one("embeddings.token_embedding.weight"),
        ("positional_embedding", _) => return one("embeddings.position_embedding.weight"),
        _ => {}
    }
    if let Some(param) = rest.strip_prefix("ln_final.") {
        return one(&format!("final_layer_norm.{param}"));
    }
    let (index, inner) = rest.strip_prefix("transformer.resblocks.")?.split_once('.')?;
    let index: i64 = index.parse().ok()?;
    if index == layers && matches!(use_, OpenClipUse::Penultimate(_)) {
        return Some(Vec::new());
    }
    if index >= layers {
        return None;
    }
    let prefix = format!("text_model.encoder.layers.{index}");
    if let Some(param) = inner.strip_prefix("attn.in_proj_") {
        // q, k and v stacked along the output dimension.
        let parts = tensor.chunk(3, 0);
        let names = ["q_proj", "k_proj", "v_proj"];
        return Some(names.iter().zip(parts).map(|(n, t)| (format!("{prefix}.self_attn.{n}.{param}"), t)).collect());
    }
    let (layer, param) = inner.rsplit_once('.')?;
    let (_, renamed) = OPEN_CLIP_LAYER.iter().find(|(ldm, _)| *ldm == layer)?;
    Some(vec![(format!("{prefix}.{renamed}.{param}"), tensor)])
}
