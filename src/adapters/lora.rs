//! LoRA (Hu et al. 2021) on the network's attention projections (to_q, to_k, to_v, to_out.0 of every self- and
//! cross-attention of a UNet, of every transformer block of a DiT), as diffusers' LoRA training scripts configure
//! peft. Stored as diffusers saves LoRA: pytorch_lora_weights.safetensors with `<network>.<module>.lora_A.weight`
//! [r, in] and `<network>.<module>.lora_B.weight` [out, r], the network being `unet` or `transformer`. The file
//! keeps no alpha, so diffusers loads it with alpha = r: the update is applied at scale 1.
use crate::nn::LowRank;
use crate::pipelines::DiffusionModel;
use crate::weights::write_safetensors;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const FILE_NAME: &str = "pytorch_lora_weights.safetensors";
/// The networks whose LoRA files are read (diffusers' pipeline attribute names).
const NETWORKS: [&str; 2] = ["unet", "transformer"];

/// One projection's factors.
pub struct LoraLayer {
    /// lora_A [r, in].
    pub down: Tensor,
    /// lora_B [out, r].
    pub up: Tensor,
}

pub struct Lora {
    /// The network it adapts: `unet` or `transformer` (see `Denoiser::component`).
    pub network: String,
    /// By module path under the network (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`).
    pub layers: BTreeMap<String, LoraLayer>,
}

impl Lora {
    /// Fresh factors of rank `rank` on every attention projection of `model`'s network, as peft's "gaussian"
    /// initialisation: A ~ N(0, 1/r^2), B = 0, so training starts from the unchanged model. The tensors are f32
    /// leaves requiring gradients, on the model's device.
    pub fn init(model: &mut DiffusionModel, rank: i64, seed: u64) -> Self {
        tch::manual_seed(seed as i64);
        let device = model.device;
        let network = model.denoiser.component().to_string();
        let layers = model
            .denoiser
            .attention_projections_mut()
            .into_iter()
            .map(|(path, linear)| {
                let down = (Tensor::randn([rank, linear.in_features()], (Kind::Float, Device::Cpu)) / rank as f64).to_device(device);
                let up = Tensor::zeros([linear.out_features(), rank], (Kind::Float, device));
                (path, LoraLayer { down: down.set_requires_grad(true), up: up.set_requires_grad(true) })
            })
            .collect();
        Self { network, layers }
    }

    /// Tensors read from an adapter file, when every key is a peft LoRA factor of a module of one network.
    pub fn from_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Self> {
        let mut factors: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut networks = std::collections::BTreeSet::new();
        for (key, tensor) in tensors {
            let (network, module) = key.split_once('.').filter(|(n, _)| NETWORKS.contains(n)).with_context(|| {
                format!("{}: `{key}` is not a UNet or transformer LoRA weight (expected keys `unet.<module>.lora_A.weight` / `.lora_B.weight`, or `transformer.` for a DiT; text-encoder LoRA is not supported)", path.display())
            })?;
            networks.insert(network.to_string());
            let tensor = tensor.to_kind(Kind::Float);
            if let Some(m) = module.strip_suffix(".lora_A.weight") {
                factors.entry(m.to_string()).or_default().0 = Some(tensor);
            } else if let Some(m) = module.strip_suffix(".lora_B.weight") {
                factors.entry(m.to_string()).or_default().1 = Some(tensor);
            } else {
                bail!("{}: `{key}` is not a peft LoRA factor (lora_A / lora_B)", path.display());
            }
        }
        let mut layers = BTreeMap::new();
        for (module, pair) in factors {
            let (Some(down), Some(up)) = pair else {
                bail!("{}: `{module}` has only one of lora_A and lora_B", path.display());
            };
            if down.dim() != 2 || up.dim() != 2 || down.size()[0] != up.size()[1] {
                bail!("{}: `{module}` has lora_A {:?} and lora_B {:?}, which do not form a low-rank update", path.display(), down.size(), up.size());
            }
            layers.insert(module, LoraLayer { down, up });
        }
        if layers.is_empty() {
            bail!("{}: no LoRA weights", path.display());
        }
        let mut networks = networks.into_iter();
        let network = networks.next().unwrap_or_default();
        if let Some(other) = networks.next() {
            bail!("{}: the file holds LoRA weights for both `{network}` and `{other}`; one adapter adapts one network", path.display());
        }
        Ok(Self { network, layers })
    }

    pub fn rank(&self) -> i64 {
        self.layers.values().next().map_or(0, |l| l.down.size()[0])
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let names: Vec<(String, Tensor)> = self
            .layers
            .iter()
            .flat_map(|(m, l)| [(format!("{}.{m}.lora_A.weight", self.network), l.down.detach()), (format!("{}.{m}.lora_B.weight", self.network), l.up.detach())])
            .collect();
        let named: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors(path, &named)
    }

    /// Attaches the factors to the model's attention projections (replacing any LoRA there). The adapter must be for
    /// this model's kind of network, and every layer must name a projection of it with matching shapes; otherwise
    /// the adapter was made for another model.
    pub fn apply(&self, model: &mut DiffusionModel) -> Result<()> {
        let network = model.denoiser.component();
        if self.network != network {
            bail!("the LoRA adapter adapts a `{}` but this model's network is a `{network}` ({}): the adapter was made for another model", self.network, model.denoiser.family());
        }
        remove(model);
        let device = model.device;
        let mut projections: BTreeMap<String, &mut crate::nn::Linear> = model.denoiser.attention_projections_mut().into_iter().collect();
        for (module, layer) in &self.layers {
            let Some(linear) = projections.get_mut(module) else {
                bail!("the LoRA adapter has weights for `{module}`, which this model's {network} does not have: the adapter was made for another model");
            };
            let (inputs, outputs) = (linear.in_features(), linear.out_features());
            if layer.down.size()[1] != inputs || layer.up.size()[0] != outputs {
                bail!(
                    "the LoRA adapter's `{module}` maps {} to {} features but this model's layer maps {inputs} to {outputs}: the adapter was made for another model",
                    layer.down.size()[1],
                    layer.up.size()[0]
                );
            }
            linear.lora = Some(LowRank { down: layer.down.to_device(device), up: layer.up.to_device(device), scale: 1.0 });
        }
        Ok(())
    }
}

/// Takes every LoRA update off the model's network.
pub fn remove(model: &mut DiffusionModel) {
    for (_, linear) in model.denoiser.attention_projections_mut() {
        linear.lora = None;
    }
}
