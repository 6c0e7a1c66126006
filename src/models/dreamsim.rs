//! DreamSim (Fu et al. 2023), the `dreamsim` package's default "ensemble" model: three ViT-B/16s, DINO, OpenAI's
//! CLIP and OpenCLIP, each reading the image resized to 224x224 and normalised its own way, LoRA-tuned on human
//! similarity judgements (the adapter merged into their q/k/v projections here); DINO gives its class token as the
//! last block leaves it, the CLIPs their projected image embeddings; the three are concatenated, centred and
//! normalised, and the distance of two images is one minus the cosine of their embeddings.
//!
//! Loaded from the folder `dreamsim(cache_dir=...)` fills (./models by default): `checkpoints/
//! dino_vitbase16_pretrain.pth` (DINO's backbone as torch.hub downloads it), `clip_vitb16_pretrain.pth.tar` and
//! `open_clip_vitb16_pretrain.pth.tar` (the CLIPs converted to DINO's layout, with their projection `proj`), and
//! `ensemble_lora/` (peft's adapter_config.json and adapter_model.safetensors or .bin). PyTorch files are read as
//! tensors only.
use crate::files::read_json;
use crate::models::image_processor::ImageProcessor;
use crate::models::vit::{VisionTransformer, VitActivation, VitConfig};
use crate::weights::{read_weight_file, Weights};
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// DreamSim's input size (`dreamsim_args["img_size"]`).
const IMAGE_SIZE: i64 = 224;
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
const OPENAI_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// One of the ensemble's ViTs, in the package's order (`extractor_list.0`, `.1`, `.2`).
#[derive(Clone, Copy, Debug)]
enum Backbone {
    Dino,
    Clip,
    OpenClip,
}

impl Backbone {
    const ALL: [Backbone; 3] = [Backbone::Dino, Backbone::Clip, Backbone::OpenClip];

    fn file(self) -> &'static str {
        match self {
            Self::Dino => "checkpoints/dino_vitbase16_pretrain.pth",
            Self::Clip => "clip_vitb16_pretrain.pth.tar",
            Self::OpenClip => "open_clip_vitb16_pretrain.pth.tar",
        }
    }

    fn normalisation(self) -> ([f64; 3], [f64; 3]) {
        match self {
            Self::Dino => (IMAGENET_MEAN, IMAGENET_STD),
            Self::Clip | Self::OpenClip => (OPENAI_MEAN, OPENAI_STD),
        }
    }

    /// DINO's ViT as its weights give it; the CLIPs as DreamSim converts them (a layer norm after the positions,
    /// every layer norm's eps 1e-5, quick GELU for OpenAI's).
    fn config(self, from_weights: VitConfig) -> VitConfig {
        match self {
            Self::Dino => from_weights,
            Self::Clip | Self::OpenClip => VitConfig {
                layer_norm_eps: 1e-5,
                activation: if matches!(self, Self::Clip) { VitActivation::QuickGelu } else { VitActivation::Gelu },
                pre_norm: true,
                ..from_weights
            },
        }
    }
}

/// The fields of peft's adapter_config.json the merge needs.
#[derive(Deserialize)]
struct LoraConfig {
    r: i64,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
}

/// The LoRA factors of each backbone's modules: `blocks.N.attn.qkv` -> (lora_A [r, in], lora_B [out, r]).
type Factors = HashMap<String, (Option<Tensor>, Option<Tensor>)>;

/// peft's adapter for the ensemble, split by backbone, and its scale (lora_alpha / r).
fn read_adapter(dir: &Path) -> Result<([Factors; 3], f64)> {
    let config_path = dir.join("adapter_config.json");
    let config: LoraConfig = read_json(&config_path)?;
    ensure!(config.r > 0, "{}: r is {}", config_path.display(), config.r);
    ensure!(!config.use_rslora && !config.use_dora, "{}: rsLoRA and DoRA adapters are not supported", config_path.display());
    let file = ["adapter_model.safetensors", "adapter_model.bin"].map(|f| dir.join(f)).into_iter().find(|f| f.is_file());
    let file = file.with_context(|| format!("{} has no adapter_model.safetensors or adapter_model.bin", dir.display()))?;
    let mut factors: [Factors; 3] = Default::default();
    for (key, tensor) in read_weight_file(&file)? {
        let parsed = key.strip_prefix("base_model.model.extractor_list.").and_then(|rest| {
            let (index, rest) = rest.split_once(".model.")?;
            let index: usize = index.parse().ok().filter(|&i| i < 3)?;
            let (module, factor) = rest.rsplit_once(".lora_")?;
            Some((index, module.to_string(), factor.to_string()))
        });
        let Some((index, module, factor)) = parsed else {
            bail!("{}: `{key}` is not a LoRA factor of DreamSim's ensemble (base_model.model.extractor_list.N.model.<module>.lora_A/B.weight)", file.display());
        };
        let entry = factors[index].entry(module).or_default();
        match factor.as_str() {
            "A.weight" => entry.0 = Some(tensor),
            "B.weight" => entry.1 = Some(tensor),
            _ => bail!("{}: `{key}` is not a LoRA factor", file.display()),
        }
    }
    ensure!(factors.iter().any(|f| !f.is_empty()), "{}: no LoRA weights", file.display());
    Ok((factors, config.lora_alpha / config.r as f64))
}

/// Merges `factors` into the weights they adapt: W + scale * B A, as peft's merge does.
fn merge(tensors: &mut HashMap<String, Tensor>, factors: &Factors, scale: f64, source: &str) -> Result<()> {
    for (module, (down, up)) in factors {
        let (Some(down), Some(up)) = (down, up) else { bail!("{source}: `{module}` has only one of lora_A and lora_B") };
        let key = format!("{module}.weight");
        let weight = tensors.get(&key).with_context(|| format!("the adapter adapts `{module}`, which {source} does not have"))?;
        let update = up.to_kind(Kind::Double).matmul(&down.to_kind(Kind::Double)) * scale;
        ensure!(update.size() == weight.size(), "{source}: the LoRA update of `{module}` is {:?}, the weight {:?}", update.size(), weight.size());
        // Kept in f64: the package adds the update in the model's precision to a weight it has not rounded to the
        // file's (f16 weights plus an f32 update are not an f16 weight); loading rounds it to the model's kind.
        tensors.insert(key, weight.to_kind(Kind::Double) + update);
    }
    Ok(())
}

struct Extractor {
    backbone: Backbone,
    vit: VisionTransformer,
    /// The CLIPs' projection [width, embedding], applied as x @ proj.
    proj: Option<Tensor>,
}

impl Extractor {
    fn features(&self, pixels_0_1: &Tensor) -> Tensor {
        let (mean, std) = self.backbone.normalisation();
        let (kind, device) = (pixels_0_1.kind(), pixels_0_1.device());
        let per_channel = |v: [f64; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]).to_kind(kind).to_device(device);
        let x = (pixels_0_1 - per_channel(mean)) / per_channel(std);
        match &self.proj {
            None => self.vit.blocks_output(&x).select(1, 0),
            Some(proj) => self.vit.forward(&x).select(1, 0).matmul(&proj.to_kind(kind)),
        }
    }
}

pub struct DreamSim {
    resize: ImageProcessor,
    extractors: Vec<Extractor>,
    device: Device,
}

impl DreamSim {
    /// The package's cache folder, holding the three backbones and `ensemble_lora/`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        ensure!(dir.is_dir(), "{}: no such folder (expected the folder DreamSim caches its weights in)", dir.display());
        let (factors, scale) = read_adapter(&dir.join("ensemble_lora"))?;
        let mut extractors = Vec::new();
        for (backbone, factors) in Backbone::ALL.into_iter().zip(&factors) {
            let file: PathBuf = dir.join(backbone.file());
            let source = file.display().to_string();
            let mut tensors: HashMap<String, Tensor> = read_weight_file(&file)?.into_iter().collect();
            merge(&mut tensors, factors, scale, &source)?;
            let proj = match backbone {
                Backbone::Dino => None,
                _ => Some(tensors.remove("proj").with_context(|| format!("{source} has no projection `proj`"))?),
            };
            let cfg = backbone.config(VitConfig::from_weights(&tensors, "", &source)?);
            ensure!(cfg.image_size == IMAGE_SIZE, "{source}: a ViT for {0}x{0} images; DreamSim's take {IMAGE_SIZE}x{IMAGE_SIZE}", cfg.image_size);
            if let Some(proj) = &proj {
                ensure!(proj.dim() == 2 && proj.size()[0] == cfg.width, "{source}: `proj` is {:?}, not [{}, n]", proj.size(), cfg.width);
            }
            let weights = Weights::from_tensors(tensors, source, device, kind);
            // Every weight of a backbone's file must be used: a file of another model fails here.
            let vit = weights.build(|p| VisionTransformer::load(p, &cfg))?;
            extractors.push(Extractor { backbone, vit, proj: proj.map(|p| p.to_device(device).to_kind(kind)) });
        }
        Ok(Self { resize: ImageProcessor::resize_only(IMAGE_SIZE)?, extractors, device })
    }

    /// Images [B, C, H, W] in [0, 1] resized to 224x224 as the package's preprocessing does (RGB, [0, 1]).
    pub fn preprocess(&self, images_0_1: &Tensor) -> Result<Tensor> {
        self.resize.preprocess(images_0_1)
    }

    /// Each backbone's features of preprocessed images [B, 3, 224, 224]: DINO's, CLIP's, OpenCLIP's.
    pub fn features(&self, pixels: &Tensor) -> Vec<Tensor> {
        self.extractors.iter().map(|e| e.features(pixels)).collect()
    }

    /// The embeddings [B, D] of preprocessed images: the features concatenated, centred and of unit length.
    pub fn embed_pixels(&self, pixels: &Tensor) -> Tensor {
        let x = Tensor::cat(&self.features(pixels), 1);
        let x = &x - x.mean_dim(1, true, x.kind());
        &x / x.norm_scalaropt_dim(2.0, [1], true)
    }

    /// The embeddings [N, D] (f32, CPU) of images [N, C, H, W] in [0, 1], `batch` per pass.
    pub fn embed(&self, images_0_1: &Tensor, batch: i64) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in images_0_1.split(batch.max(1), 0) {
            let pixels = self.preprocess(&chunk.to_device(self.device))?;
            out.push(tch::no_grad(|| self.embed_pixels(&pixels)).to_kind(Kind::Float).to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&out, 0))
    }
}

/// DreamSim's distance between embeddings [N, D] and [N, D]: one minus their cosine.
pub fn distance(a: &Tensor, b: &Tensor) -> Tensor {
    let cosine = (a * b).sum_dim_intlist(1, false, a.kind()) / (a.norm_scalaropt_dim(2.0, [1], false) * b.norm_scalaropt_dim(2.0, [1], false));
    cosine.neg() + 1.0
}
