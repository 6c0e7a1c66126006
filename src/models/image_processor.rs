//! transformers' image processors for the models here (`CLIPImageProcessor`, `BlipImageProcessor`) and the
//! torchvision transform of OpenAI's CLIP code (resize the shortest edge, centre crop, normalise), which the first
//! one reproduces: channel conversion, PIL's bicubic resize, centre crop, normalisation, on tensors.
use crate::files::read_json;
use anyhow::{anyhow, bail, ensure, Result};
use serde::Deserialize;
use std::path::Path;
use tch::{Kind, Tensor};

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
pub struct ImageProcessor {
    resize: Option<Resize>,
    crop: Option<(i64, i64)>,
    /// Per-channel mean and standard deviation.
    normalize: Option<(Vec<f64>, Vec<f64>)>,
    channels: i64,
    image_size: i64,
}

impl ImageProcessor {
    /// Reads `dir`/preprocessor_config.json when there is one; missing settings take the defaults of
    /// transformers' CLIPImageProcessor, except sizes, which default to the model's image size.
    pub fn load(dir: &Path, image_size: i64, channels: i64) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let (file, source) = if path.is_file() {
            (read_json::<ProcessorFile>(&path)?, path.display().to_string())
        } else {
            (ProcessorFile::default(), format!("defaults (no {})", path.display()))
        };
        Self::new(file, image_size, channels).map_err(|e| anyhow!("{source}: {e}"))
    }

    /// OpenAI's CLIP preprocessing (the defaults: shortest edge and centre crop to the model's size, bicubic,
    /// OpenAI's mean and standard deviation), as ImageReward's torchvision transform applies it.
    pub fn openai(image_size: i64) -> Result<Self> {
        Self::new(ProcessorFile::default(), image_size, 3)
    }

    /// An RGB bicubic resize to `size` x `size` and nothing else (DreamSim's `Resize((224, 224))`; it normalises
    /// per backbone itself).
    pub fn resize_only(size: i64) -> Result<Self> {
        let file = ProcessorFile {
            size: Some(SizeField::Dict(SizeDict { shortest_edge: None, height: Some(size), width: Some(size) })),
            do_center_crop: false,
            do_normalize: false,
            ..ProcessorFile::default()
        };
        Self::new(file, size, 3)
    }

    fn new(file: ProcessorFile, s: i64, channels: i64) -> Result<Self> {
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
