//! PyTorch checkpoint files (`.pt`, `.pth`, `.bin`, `.ckpt`): a zip of `<root>/data.pkl`, the pickled object, and
//! `<root>/data/<key>`, one entry per storage. Only tensors and state dicts are read (`pickle`'s restricted
//! reader); the tensors found are returned by their keys, nested dicts joined with dots, a Lightning checkpoint's
//! `state_dict` taken as the state dict. Views with offsets and strides, and storages shared by several tensors,
//! read as torch.load gives them.
use super::pickle::{self, TensorRef, Value};
use super::zip::stored_entries;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Nested dicts deeper than this are refused (a hostile pickle can nest without end).
const MAX_DEPTH: usize = 64;

/// Every tensor of the PyTorch checkpoint at `path`, on the CPU in its stored dtype, by key. A file that is not a
/// zip archive, holds anything but tensors and plain data, or is damaged is an error naming the file.
pub fn read_torch_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let what = path.display().to_string();
    let file = super::open_plain_file(path, "a PyTorch checkpoint")?;
    // SAFETY: the map is read-only and dropped before this function returns; tensors are copied out of it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {what}"))?;
    tensors_from_torch_bytes(&mmap).with_context(|| format!("{what}: cannot read it as a PyTorch checkpoint"))
}

/// As `read_torch_file`, from the file's bytes.
pub fn tensors_from_torch_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        bail!("this is PyTorch's legacy format (before 1.6), which is not read; load and save it again with a recent torch");
    }
    ensure!(bytes.starts_with(b"PK"), "not a zip archive (torch.save's format since PyTorch 1.6)");
    let entries = stored_entries(bytes)?;
    let pickle_name = entries.keys().find(|name| name.ends_with("data.pkl") && name.matches('/').count() == 1).context("no <root>/data.pkl in the archive")?;
    let root = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Some(order) = entries.get(&format!("{root}byteorder")) {
        let order = &bytes[order.clone()];
        ensure!(order == b"little", "its storages are {} (byteorder); only little-endian files are read", String::from_utf8_lossy(order));
    }
    let object = pickle::read(&bytes[entries[pickle_name].clone()])?;
    let mut found = Vec::new();
    collect_tensors(&state_dict(object), "", 0, &mut found)?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for (name, r) in found {
        if !storages.contains_key(&r.key) {
            let range = entries.get(&format!("{root}data/{}", r.key)).with_context(|| format!("tensor `{name}`: its storage data/{} is missing", r.key))?;
            let size = usize::try_from(r.storage_numel).ok().and_then(|n| n.checked_mul(r.kind.elt_size_in_bytes()));
            ensure!(size.is_some_and(|s| s <= range.len()), "tensor `{name}`: its storage data/{} holds {} bytes, fewer than {} elements of {:?}", r.key, range.len(), r.storage_numel, r.kind);
            let data = &bytes[range.start..range.start + size.unwrap_or(0)];
            storages.insert(r.key.clone(), Tensor::f_from_data_size(data, &[r.storage_numel], r.kind)?);
        }
        out.push((name.clone(), view(&storages[&r.key], &r).with_context(|| format!("tensor `{name}`"))?));
    }
    Ok(out)
}

/// A Lightning checkpoint's `state_dict` entry, else the object itself.
fn state_dict(object: Value) -> Value {
    if let Value::Dict(items) = &object {
        let inner = items.borrow().iter().find(|(k, _)| matches!(k, Value::Str(s) if s == "state_dict")).map(|(_, v)| v.clone());
        if let Some(inner @ Value::Dict(_)) = inner {
            return inner;
        }
    }
    object
}

/// The tensors in `value` by their keys (`prefix` before them); other data is skipped.
fn collect_tensors(value: &Value, prefix: &str, depth: usize, out: &mut Vec<(String, TensorRef)>) -> Result<()> {
    ensure!(depth <= MAX_DEPTH, "dicts nested deeper than {MAX_DEPTH}");
    match value {
        Value::Tensor(t) => out.push((prefix.to_string(), t.clone())),
        Value::Dict(items) => {
            for (key, item) in items.borrow().iter() {
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                collect_tensors(item, &name, depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The tensor `r` describes, copied out of its storage; a view reaching outside the storage is an error.
fn view(storage: &Tensor, r: &TensorRef) -> Result<Tensor> {
    ensure!(r.size.iter().all(|&s| s >= 0) && r.stride.iter().all(|&s| s >= 0) && r.offset >= 0, "a negative size, stride or offset");
    let empty = r.size.contains(&0);
    if !empty {
        let last = r.size.iter().zip(&r.stride).try_fold(r.offset, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
        ensure!(last.is_some_and(|l| l < r.storage_numel), "its view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements", r.offset, r.size, r.stride, r.storage_numel);
    }
    // A fresh contiguous tensor: tensors sharing a storage are independent once read, as after torch.load and clone.
    let mut out = Tensor::empty(r.size.as_slice(), (r.kind, tch::Device::Cpu));
    if !empty {
        out.f_copy_(&storage.f_as_strided(r.size.as_slice(), r.stride.as_slice(), r.offset)?)?;
    }
    Ok(out)
}
