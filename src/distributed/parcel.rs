//! A finished item's outcome as bytes: what a rank sends rank 0, and what rank 0 keeps as the item's checkpoint.
//! A JSON record and named tensors in one safetensors file (the record in its metadata), so that every dtype comes
//! back bit for bit and nothing read back can run code.
use crate::weights::{safetensors_bytes, tensors_from_safetensors};
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use tch::{Device, Tensor};

/// The metadata key of the record.
const RECORD: &str = "record";

pub struct Parcel {
    pub record: Value,
    tensors: Vec<(String, Tensor)>,
}

impl Parcel {
    pub fn new(record: Value) -> Self {
        Self { record, tensors: Vec::new() }
    }

    /// The parcel with `tensor` added as `name` (a shallow copy; moved to the CPU when packed).
    pub fn with(mut self, name: impl Into<String>, tensor: &Tensor) -> Self {
        self.tensors.push((name.into(), tensor.shallow_clone()));
        self
    }

    /// Tensor `name`, on `device`.
    pub fn tensor(&self, name: &str, device: Device) -> Result<Tensor> {
        let (_, tensor) = self.tensors.iter().find(|(n, _)| n == name).with_context(|| format!("the item's outcome has no tensor `{name}`"))?;
        Ok(tensor.to_device(device))
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let named: Vec<(&str, &Tensor)> = self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        safetensors_bytes(&named, HashMap::from([(RECORD.to_string(), self.record.to_string())]))
    }

    /// A parcel from `to_bytes`'s bytes; `what` names them in errors (a rank, a checkpoint file).
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let (tensors, metadata) = tensors_from_safetensors(bytes, what)?;
        let record = metadata.get(RECORD).with_context(|| format!("{what} holds no item record"))?;
        let record = serde_json::from_str(record).with_context(|| format!("{what}: the item record is not JSON"))?;
        Ok(Self { record, tensors })
    }
}
