//! Named weights read from safetensors files or PyTorch checkpoints (`torch_file`: tensors only, never code),
//! handed out by checkpoint path with their shapes checked.
//!
//! Model structs mirror the checkpoint's key names: a block asks its `WeightPath` for `"conv1.weight"` with the
//! shape its config implies, and a missing key or a wrong shape is an error naming the file, the key and both
//! shapes.
//!
//! Loaded weights are frozen: they never require gradients (DMA differentiates with respect to latents only).
//! For training, the same model code builds from `Weights::trainable` (every weight a leaf requiring gradients)
//! or `Weights::initialise` (missing weights are created with PyTorch's default initialisation), so a model
//! has one definition whether it is loaded, trained or created.
mod pickle;
pub mod torch_file;
mod zip;

use anyhow::{bail, Context, Result};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// How `WeightPath::get` hands out tensors.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Detached copies in the model's dtype: inference.
    Frozen,
    /// The stored leaf tensors themselves, requiring gradients: training.
    Trainable,
    /// Like `Trainable`, creating missing weights with a seeded default initialisation.
    Initialise,
}

/// All tensors of one model component (e.g. a UNet), by checkpoint key.
pub struct Weights {
    tensors: RefCell<HashMap<String, Tensor>>,
    mode: Mode,
    /// Where the tensors came from, for error messages.
    source: String,
    device: Device,
    kind: Kind,
    used: RefCell<BTreeSet<String>>,
}

/// Maps a safetensors dtype to a libtorch kind; integer and bool tensors are kept for completeness.
fn kind_of(dtype: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F64 => Kind::Double,
        D::F32 => Kind::Float,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::I64 => Kind::Int64,
        D::I32 => Kind::Int,
        D::I16 => Kind::Int16,
        D::I8 => Kind::Int8,
        D::U8 => Kind::Uint8,
        D::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The safetensors dtype of a libtorch kind (`kind_of`'s inverse).
fn dtype_of(kind: Kind) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Some(match kind {
        Kind::Double => D::F64,
        Kind::Float => D::F32,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Int64 => D::I64,
        Kind::Int => D::I32,
        Kind::Int16 => D::I16,
        Kind::Int8 => D::I8,
        Kind::Uint8 => D::U8,
        Kind::Bool => D::BOOL,
        _ => return None,
    })
}

/// Opens `path` if it is a plain file (`what` it should be names it in errors): a folder cannot be read, and a
/// FIFO or a device would block or never end.
fn open_plain_file(path: &Path, what: &str) -> Result<std::fs::File> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if metadata.is_dir() {
        bail!("{} is a folder, not {what}", path.display());
    }
    if !metadata.is_file() {
        bail!("{} is not a plain file (a pipe or a device?); expected {what}", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// The file extensions of PyTorch checkpoints (`torch_file`); `tar` for the `.pth.tar` names some projects
/// (DreamSim) give files torch.save wrote.
pub const TORCH_EXTENSIONS: [&str; 5] = ["bin", "pt", "pth", "ckpt", "tar"];

/// Every tensor of a weight file: safetensors, or a PyTorch checkpoint by its extension (.bin, .pt, .pth, .ckpt, .tar).
pub fn read_weight_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if TORCH_EXTENSIONS.contains(&ext) => torch_file::read_torch_file(path),
        _ => read_safetensors(path),
    }
}

/// Reads every tensor of a safetensors file onto the CPU, keeping its stored dtype.
/// A truncated or corrupt file is an error naming the file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// A safetensors file's tensors by name and its free-form metadata.
pub type TensorsAndMetadata = (Vec<(String, Tensor)>, HashMap<String, String>);

/// `read_safetensors`, with the file's free-form metadata.
pub fn read_safetensors_with_metadata(path: &Path) -> Result<TensorsAndMetadata> {
    let file = open_plain_file(path, "a safetensors file")?;
    // SAFETY: the map is read-only and dropped before this function returns; tensors are copied out of it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    tensors_from_safetensors(&mmap, &path.display().to_string())
}

/// Every tensor of the safetensors bytes `bytes` (named `what` in errors), copied onto the CPU in its stored dtype,
/// with the file's free-form metadata.
pub fn tensors_from_safetensors(bytes: &[u8], what: &str) -> Result<TensorsAndMetadata> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{what} is not a valid safetensors file: {e}"))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).with_context(|| format!("{what}: tensor `{name}` has unsupported dtype {:?}", view.dtype()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind).with_context(|| format!("{what}: cannot read tensor `{name}`"))?;
        out.push((name, tensor));
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{what} is not a valid safetensors file: {e}"))?;
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// A tensor's values as safetensors stores them (a CPU copy of its bytes, in this machine's order: little-endian
/// on every platform libtorch runs on).
struct Stored {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Stored {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// `tensors` and the free-form `metadata` as the bytes of a safetensors file (the dtype of each kept).
pub fn safetensors_bytes(tensors: &[(&str, &Tensor)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut stored = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let dtype = dtype_of(tensor.kind()).with_context(|| format!("tensor `{name}` of {:?} cannot be stored", tensor.kind()))?;
        let t = tensor.to_device(Device::Cpu).contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        stored.push((name.to_string(), Stored { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), bytes }));
    }
    safetensors::serialize(stored.iter().map(|(n, s)| (n.as_str(), s)), Some(metadata)).map_err(|e| anyhow::anyhow!("cannot store tensors: {e}"))
}

/// Writes tensors to a safetensors file through a temporary file and a rename, so no half-written file is left.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = crate::files::temp_file_in(dir)?;
    let named: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (*n, t.to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&named, tmp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    crate::files::persist(tmp, path)
}

impl Weights {
    /// Loads and merges one or more weight files (sharded checkpoints come as several).
    pub fn from_files(files: &[PathBuf], device: Device, kind: Kind) -> Result<Self> {
        let mut tensors = HashMap::new();
        for file in files {
            tensors.extend(read_weight_file(file)?);
        }
        let source = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        Ok(Self::from_tensors(tensors, source, device, kind))
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: String, device: Device, kind: Kind) -> Self {
        Self { tensors: RefCell::new(tensors), mode: Mode::Frozen, source, device, kind, used: RefCell::new(BTreeSet::new()) }
    }

    /// Weights to train, starting from `tensors` (e.g. a checkpoint): each becomes a leaf on `device` in `kind`
    /// that requires gradients, and models built from them share these very tensors.
    pub fn trainable(tensors: HashMap<String, Tensor>, source: String, device: Device, kind: Kind) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| (k, t.to_device(device).to_kind(kind).detach().set_requires_grad(true)))
            .collect();
        Self { mode: Mode::Trainable, ..Self::from_tensors(tensors, source, device, kind) }
    }

    /// Fresh weights to train: every weight a model asks for is created on first use, initialised like PyTorch's
    /// layers (norms 1 and 0, biases 0, embeddings N(0, 0.02), other weights U(±1/sqrt(fan_in))), DiT's adaLN-Zero
    /// modulations at zero. Seed the global
    /// RNG first for a reproducible start.
    pub fn initialise(source: String, device: Device, kind: Kind) -> Self {
        Self { mode: Mode::Initialise, ..Self::from_tensors(HashMap::new(), source, device, kind) }
    }

    /// Every tensor by key, sorted: a trainable model's parameters, or what to save.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self.tensors.borrow().iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn root(&self) -> WeightPath<'_> {
        WeightPath { weights: self, prefix: String::new() }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Builds a model from these weights (at the checkpoint root) and checks that it used every one of them.
    pub fn build<M>(&self, build: impl FnOnce(&WeightPath) -> Result<M>) -> Result<M> {
        let model = build(&self.root())?;
        self.check_all_used("")?;
        Ok(model)
    }

    /// Fails when the checkpoint holds weights under `prefix` that no module asked for: the config describes a
    /// smaller model than the checkpoint, which would otherwise run silently with parts missing.
    pub fn check_all_used(&self, prefix: &str) -> Result<()> {
        let used = self.used.borrow();
        let tensors = self.tensors.borrow();
        let mut unused: Vec<&String> = tensors.keys().filter(|k| k.starts_with(prefix) && !used.contains(*k)).collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let shown: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
        bail!(
            "{}: {} weight(s) are not used by the model its config describes (e.g. {}); the config and the weights disagree",
            self.source,
            unused.len(),
            shown.join(", ")
        )
    }
}

/// PyTorch's default initialisation, chosen by the key's name and the tensor's rank.
fn initial_value(key: &str, shape: &[i64], device: Device, kind: Kind) -> Tensor {
    let options = (kind, device);
    let is_embedding = key.ends_with("embedding.weight") || key.ends_with("class_embedding") || key.ends_with("embedding_table.weight");
    // adaLN-Zero (DiT): every block's modulation and the final layer start at zero, so each block starts as the
    // identity and the prediction at zero (Peebles & Xie, section 3.2).
    let is_ada_ln_zero = key.contains("norm1.linear.") || key.contains("proj_out_1.") || key.contains("proj_out_2.");
    if key.ends_with("logit_scale") {
        // CLIP's initial temperature, 1/0.07.
        Tensor::full(shape, (1.0f64 / 0.07).ln(), options)
    } else if is_ada_ln_zero {
        Tensor::zeros(shape, options)
    } else if is_embedding {
        Tensor::randn(shape, options) * 0.02
    } else if key.ends_with(".bias") {
        Tensor::zeros(shape, options)
    } else if shape.len() == 1 {
        // Every 1-D `.weight` in these models is a GroupNorm or LayerNorm scale.
        Tensor::ones(shape, options)
    } else {
        let fan_in: i64 = shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        Tensor::rand(shape, options) * (2.0 * bound) - bound
    }
}

/// A position in the checkpoint's key tree, e.g. `down_blocks.0.resnets.1`.
#[derive(Clone)]
pub struct WeightPath<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightPath<'a> {
    pub fn sub(&self, name: impl std::fmt::Display) -> WeightPath<'a> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        WeightPath { weights: self.weights, prefix }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.tensors.borrow().contains_key(&self.key(name))
    }

    /// The tensor at `name`, which must have exactly `shape`: a frozen copy in the model's device and kind, or,
    /// for training, the trainable tensor itself (created now if initialising).
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let key = self.key(name);
        let w = self.weights;
        if w.mode == Mode::Initialise && !w.tensors.borrow().contains_key(&key) {
            let fresh = initial_value(&key, shape, w.device, w.kind).set_requires_grad(true);
            w.tensors.borrow_mut().insert(key.clone(), fresh);
        }
        let tensors = w.tensors.borrow();
        let tensor = tensors.get(&key).with_context(|| format!("{}: weight `{key}` is missing", w.source))?;
        if tensor.size() != shape {
            bail!("{}: weight `{key}` has shape {:?} but the config implies {:?}", w.source, tensor.size(), shape);
        }
        let out = match w.mode {
            Mode::Frozen => tensor.to_device(w.device).to_kind(w.kind).detach(),
            Mode::Trainable | Mode::Initialise => tensor.shallow_clone(),
        };
        w.used.borrow_mut().insert(key);
        Ok(out)
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind
    }
}
