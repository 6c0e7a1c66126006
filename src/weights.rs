//! Named weights read from safetensors files, handed out by checkpoint path with their shapes checked.
//!
//! Model structs mirror the checkpoint's key names: a block asks its `WeightPath` for `"conv1.weight"` with the
//! shape its config implies, and a missing key or a wrong shape is an error naming the file, the key and both
//! shapes. Weights never require gradients: DMA differentiates with respect to latents only.
use anyhow::{bail, Context, Result};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// All tensors of one model component (e.g. a UNet), by checkpoint key.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
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

/// Reads every tensor of a safetensors file onto the CPU, keeping its stored dtype.
/// A truncated or corrupt file is an error naming the file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is read-only and dropped before this function returns; tensors are copied out of it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype())
            .with_context(|| format!("{}: tensor `{name}` has unsupported dtype {:?}", path.display(), view.dtype()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
            .with_context(|| format!("{}: cannot read tensor `{name}`", path.display()))?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Writes tensors to a safetensors file through a temporary file and a rename, so no half-written file is left.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = crate::files::temp_file_in(dir)?;
    let named: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (*n, t.to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&named, tmp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl Weights {
    /// Loads and merges one or more safetensors files (sharded checkpoints come as several).
    pub fn from_files(files: &[PathBuf], device: Device, kind: Kind) -> Result<Self> {
        let mut tensors = HashMap::new();
        for file in files {
            tensors.extend(read_safetensors(file)?);
        }
        let source = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        Ok(Self::from_tensors(tensors, source, device, kind))
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: String, device: Device, kind: Kind) -> Self {
        Self { tensors, source, device, kind, used: RefCell::new(BTreeSet::new()) }
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

    /// Fails when the checkpoint holds weights under `prefix` that no module asked for: the config describes a
    /// smaller model than the checkpoint, which would otherwise run silently with parts missing.
    pub fn check_all_used(&self, prefix: &str) -> Result<()> {
        let used = self.used.borrow();
        let mut unused: Vec<&String> =
            self.tensors.keys().filter(|k| k.starts_with(prefix) && !used.contains(*k)).collect();
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
        self.weights.tensors.contains_key(&self.key(name))
    }

    /// The tensor at `name`, which must have exactly `shape`; converted to the model's device and float kind.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let key = self.key(name);
        let tensor = self
            .weights
            .tensors
            .get(&key)
            .with_context(|| format!("{}: weight `{key}` is missing", self.weights.source))?;
        if tensor.size() != shape {
            bail!(
                "{}: weight `{key}` has shape {:?} but the config implies {:?}",
                self.weights.source,
                tensor.size(),
                shape
            );
        }
        self.weights.used.borrow_mut().insert(key);
        Ok(tensor.to_device(self.weights.device).to_kind(self.weights.kind).detach())
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind
    }
}
