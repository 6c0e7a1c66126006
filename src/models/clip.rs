//! transformers' `CLIPModel`: the text and image towers and their projections into one embedding space, where
//! cosine similarity says how well a caption fits an image. Used for image embeddings (clustering), zero-shot
//! classification and metrics. Loads a model folder in transformers' layout (config.json, model.safetensors and
//! optionally preprocessor_config.json), as OpenAI's CLIP checkpoints on the Hub and the project's own small CLIP
//! are saved.
use crate::files::read_json;
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::clip_vision::{ClipVisionConfig, ClipVisionTransformer};
use crate::nn::Linear;
use crate::weights::{WeightPath, Weights};
use anyhow::{anyhow, bail, ensure, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// config.json of a CLIPModel.
#[derive(Debug, Clone)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    /// Width of the shared space both towers project into.
    pub projection_dim: i64,
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Top {
            #[serde(default = "default_projection_dim")]
            projection_dim: i64,
            text_config: Option<serde_json::Value>,
            vision_config: Option<serde_json::Value>,
        }
        fn default_projection_dim() -> i64 {
            512
        }
        let top: Top = read_json(path)?;
        // Without these the towers would silently take transformers' defaults (e.g. a lone text encoder's config).
        ensure!(
            top.text_config.is_some_and(|c| c.is_object()) && top.vision_config.is_some_and(|c| c.is_object()),
            "{} is not a CLIPModel config: it needs both text_config and vision_config",
            path.display()
        );
        Ok(Self {
            text_config: ClipTextConfig::from_file(path)?,
            vision_config: ClipVisionConfig::from_file(path)?,
            projection_dim: top.projection_dim,
        })
    }
}

pub struct ClipModel {
    text_model: ClipTextModel,
    vision_model: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    /// Logits are exp(logit_scale) times cosine similarities (the learned inverse temperature, 100 for OpenAI's).
    logit_scale: Tensor,
    processor: ClipImageProcessor,
}

impl ClipModel {
    /// Loads a CLIPModel folder: config.json, model.safetensors (every weight must be used) and
    /// preprocessor_config.json when present.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
        let file = dir.join("model.safetensors");
        ensure!(
            file.is_file(),
            "{} has no model.safetensors: a CLIP model folder in transformers' layout has config.json and \
             model.safetensors (pytorch_model.bin is not read)",
            dir.display()
        );
        let processor = ClipImageProcessor::load(dir, &cfg.vision_config)?;
        let weights = Weights::from_files(&[file], device, kind)?;
        weights.build(|p| Self::new(p, &cfg, processor))
    }

    /// Builds the model from weights at the checkpoint root (loaded, trainable or initialised).
    pub fn new(p: &WeightPath, cfg: &ClipConfig, processor: ClipImageProcessor) -> Result<Self> {
        let (text, vision, dim) = (&cfg.text_config, &cfg.vision_config, cfg.projection_dim);
        Ok(Self {
            // Both find their `text_model.` / `vision_model.` prefix themselves.
            text_model: ClipTextModel::load(p, text)?,
            vision_model: ClipVisionTransformer::load(p, vision)?,
            text_projection: Linear::load(&p.sub("text_projection"), text.hidden_size, dim, false)?,
            visual_projection: Linear::load(&p.sub("visual_projection"), vision.hidden_size, dim, false)?,
            logit_scale: p.get("logit_scale", &[])?,
            processor,
        })
    }

    /// Images [B, C, H, W] in [0, 1], any size, 1 or 3 channels, to the pixel values the image tower takes.
    pub fn preprocess(&self, images_0_1: &Tensor) -> Result<Tensor> {
        self.processor.preprocess(images_0_1)
    }

    /// Unit-length image embeddings [B, projection_dim] of pixel values (from `preprocess`).
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Tensor {
        let hidden = self.vision_model.forward(pixel_values);
        unit(&self.visual_projection.forward(&self.vision_model.pooled(&hidden)))
    }

    /// Unit-length text embeddings [N, projection_dim] of token ids [N, L] (int64, ending with the end token).
    pub fn text_embeds(&self, ids: &Tensor) -> Tensor {
        let hidden = self.text_model.forward(ids);
        unit(&self.text_projection.forward(&self.text_model.pooled(&hidden, ids)))
    }

    /// exp(logit_scale): the inverse temperature that turns cosine similarities into logits.
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale.exp().double_value(&[])
    }

    /// exp(logit_scale) times the cosine similarity of each image [B] to each text [N]: [B, N].
    pub fn logits_per_image(&self, pixel_values: &Tensor, ids: &Tensor) -> Tensor {
        self.image_embeds(pixel_values).matmul(&self.text_embeds(ids).tr()) * self.logit_scale.exp()
    }

    /// Zero-shot classification: the probability of each class prompt [N] for each image [B], [B, N] (rows sum
    /// to 1).
    pub fn zero_shot(&self, pixel_values: &Tensor, class_prompt_ids: &Tensor) -> Tensor {
        let logits = self.logits_per_image(pixel_values, class_prompt_ids);
        logits.softmax(-1, logits.kind())
    }
}

fn unit(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true)
}

/// OpenAI's normalisation, transformers' default when preprocessor_config.json does not name one.
const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// PIL's bicubic filter, the only resampling CLIP checkpoints use.
const BICUBIC: i64 = 3;

/// preprocessor_config.json as transformers 5 writes it (sizes as {"shortest_edge": n}, {"height": h, "width":
/// w}) or as OpenAI's repositories ship it (CLIPFeatureExtractor, sizes as plain numbers). Images are taken in
/// [0, 1], so `do_rescale` and `rescale_factor` do not apply; channels are always converted to the model's.
#[derive(Deserialize)]
#[serde(default)]
struct ProcessorFile {
    do_resize: bool,
    size: Option<SizeField>,
    resample: i64,
    do_center_crop: bool,
    crop_size: Option<SizeField>,
    do_normalize: bool,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
}

impl Default for ProcessorFile {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: None,
            resample: BICUBIC,
            do_center_crop: true,
            crop_size: None,
            do_normalize: true,
            image_mean: OPENAI_MEAN.to_vec(),
            image_std: OPENAI_STD.to_vec(),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
enum SizeField {
    Number(i64),
    Dict(SizeDict),
}

/// Other keys (e.g. `longest_edge`) mean resizing rules CLIP does not use: refused rather than ignored.
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct SizeDict {
    shortest_edge: Option<i64>,
    height: Option<i64>,
    width: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
enum Resize {
    /// The shorter side to this length, keeping the aspect ratio (the longer side rounded down).
    ShortestEdge(i64),
    Exact(i64, i64),
}

impl Resize {
    fn parse(size: SizeField) -> Result<Self> {
        Ok(match size {
            // CLIP reads a plain number as the shortest edge (transformers' `default_to_square=False`).
            SizeField::Number(n) | SizeField::Dict(SizeDict { shortest_edge: Some(n), height: None, width: None }) => {
                Self::ShortestEdge(n)
            }
            SizeField::Dict(SizeDict { shortest_edge: None, height: Some(h), width: Some(w) }) => Self::Exact(h, w),
            _ => bail!("size must be a number, {{\"shortest_edge\": n}} or {{\"height\": h, \"width\": w}}"),
        })
    }

    fn output(self, height: i64, width: i64) -> (i64, i64) {
        match self {
            Self::ShortestEdge(n) if width <= height => (n * height / width, n),
            Self::ShortestEdge(n) => (n, n * width / height),
            Self::Exact(h, w) => (h, w),
        }
    }
}

fn parse_crop(size: SizeField) -> Result<(i64, i64)> {
    Ok(match size {
        SizeField::Number(n) => (n, n),
        SizeField::Dict(SizeDict { shortest_edge: None, height: Some(h), width: Some(w) }) => (h, w),
        _ => bail!("crop_size must be a number or {{\"height\": h, \"width\": w}}"),
    })
}

/// transformers' `CLIPImageProcessor`, on tensors: channel conversion, bicubic resize, center crop,
/// normalisation.
pub struct ClipImageProcessor {
    resize: Option<Resize>,
    crop: Option<(i64, i64)>,
    /// Per-channel mean and standard deviation.
    normalize: Option<(Vec<f64>, Vec<f64>)>,
    channels: i64,
    image_size: i64,
}

impl ClipImageProcessor {
    /// Reads `dir`/preprocessor_config.json when there is one; missing settings take the defaults of
    /// transformers' CLIPImageProcessor, except sizes, which default to the model's image size.
    pub fn load(dir: &Path, vision: &ClipVisionConfig) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let (file, source) = if path.is_file() {
            (read_json::<ProcessorFile>(&path)?, path.display().to_string())
        } else {
            (ProcessorFile::default(), format!("defaults (no {})", path.display()))
        };
        Self::new(file, vision).map_err(|e| anyhow!("{source}: {e}"))
    }

    fn new(file: ProcessorFile, vision: &ClipVisionConfig) -> Result<Self> {
        let (s, channels) = (vision.image_size, vision.num_channels);
        ensure!(file.resample == BICUBIC, "resample {} is not supported, only {BICUBIC} (bicubic)", file.resample);
        let resize = file.do_resize.then(|| file.size.map_or(Ok(Resize::ShortestEdge(s)), Resize::parse)).transpose()?;
        let crop = file.do_center_crop.then(|| file.crop_size.map_or(Ok((s, s)), parse_crop)).transpose()?;
        if let Some((h, w)) = crop {
            ensure!((h, w) == (s, s), "crops {h}x{w} images, but the model takes {s}x{s}");
        }
        if file.do_normalize {
            for (name, values) in [("image_mean", &file.image_mean), ("image_std", &file.image_std)] {
                ensure!(
                    values.len() as i64 == channels,
                    "{name} has {} values, but the model takes {channels}-channel images",
                    values.len()
                );
            }
            ensure!(file.image_std.iter().all(|&v| v > 0.0), "image_std must be positive");
        }
        let normalize = file.do_normalize.then_some((file.image_mean, file.image_std));
        Ok(Self { resize, crop, normalize, channels, image_size: s })
    }

    /// Images [B, C, H, W] in [0, 1] (C 1 or 3, any size) to pixel values [B, num_channels, S, S] in float32
    /// (float64 stays float64), on the images' device and differentiable.
    pub fn preprocess(&self, images_0_1: &Tensor) -> Result<Tensor> {
        let size = images_0_1.size();
        let (_, _, h, w) =
            images_0_1.size4().map_err(|_| anyhow!("images must be [batch, channels, height, width], got {size:?}"))?;
        let float = if images_0_1.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let x = images_0_1.to_kind(float);
        let mut x = self.to_channels(&x)?;
        if let Some(resize) = self.resize {
            let (rh, rw) = resize.output(h, w);
            x = resize_bicubic(&x, rh, rw);
        }
        if let Some((ch, cw)) = self.crop {
            x = center_crop(&x, ch, cw)?;
        }
        let (oh, ow, s) = (x.size()[2], x.size()[3], self.image_size);
        ensure!((oh, ow) == (s, s), "preprocessing gives {oh}x{ow} images, but the CLIP model takes {s}x{s}");
        if let Some((mean, std)) = &self.normalize {
            let (kind, device) = (x.kind(), x.device());
            let per_channel = |v: &[f64]| Tensor::from_slice(v).view([1, -1, 1, 1]).to_kind(kind).to_device(device);
            x = (x - per_channel(mean)) / per_channel(std);
        }
        Ok(x)
    }

    fn to_channels(&self, images: &Tensor) -> Result<Tensor> {
        Ok(match (images.size()[1], self.channels) {
            (from, to) if from == to => images.shallow_clone(),
            // Grayscale repeated, as CLIPImageProcessor's RGB conversion does.
            (1, 3) => images.expand([-1, 3, -1, -1], false),
            // ITU-R 601-2 luma, PIL's conversion to grayscale ("L").
            (3, 1) => {
                let luma = Tensor::from_slice(&[0.299, 0.587, 0.114]).view([1, 3, 1, 1]);
                (images * luma.to_kind(images.kind()).to_device(images.device())).sum_dim_intlist(1, true, None)
            }
            (from, to) => bail!("cannot convert {from}-channel images to the {to} channels the CLIP model takes"),
        })
    }
}

/// PIL's bicubic resize, which CLIPImageProcessor (PIL backend) and OpenAI's own preprocessing use: separable,
/// antialiased, with the a = -0.5 cubic, which is libtorch's `_upsample_bicubic2d_aa`; horizontally first, then
/// vertically, each pass clamped to the pixel range as PIL's 8-bit passes are. PIL also rounds each pass to 8
/// bits; that is left out (the result stays differentiable), so this is within about one grey level of PIL.
fn resize_bicubic(x: &Tensor, height: i64, width: i64) -> Tensor {
    let x = x.internal_upsample_bicubic2d_aa([x.size()[2], width], false, None, None).clamp(0.0, 1.0);
    x.internal_upsample_bicubic2d_aa([height, width], false, None, None).clamp(0.0, 1.0)
}

/// The central `height` x `width` window, its offset rounded down as in transformers.
fn center_crop(x: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let (h, w) = (x.size()[2], x.size()[3]);
    ensure!(height <= h && width <= w, "a {h}x{w} image is smaller than the {height}x{width} crop");
    Ok(x.narrow(2, (h - height) / 2, height).narrow(3, (w - width) / 2, width))
}
