//! The processes a run is spread over (MPI ranks, or this process alone), and the few things they share.
//!
//! DMA's latents are independent but for one quantity, the target (the mean h of all K), once per aligned step.
//! The K latents are split across ranks in blocks of the sampler's batch (`Share`), so that every block goes
//! through the network exactly as it does in one process; and every mean over latents is exact (`exact`), so it
//! does not depend on how many ranks added which part. The same command therefore gives the same bits on 1, 2 or
//! 3 ranks. The one-process path is the same code with one rank.
pub mod exact;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod share;

pub use share::Share;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// What the ranks of a run do together. Every rank calls the same operations in the same order.
pub trait Collective {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// How many ranks the run has.
    fn size(&self) -> usize;
    /// Element-wise sums of `values` over the ranks, in place on every rank (integers: exact in any order).
    fn sum_i64(&self, values: &mut [i64]);
    /// The largest of every rank's `value`, on every rank.
    fn max_f64(&self, value: f64) -> f64;
    /// Every rank's `bytes`, in rank order, on every rank.
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>>;
    /// Every rank's `bytes`, in rank order, on rank 0 (`None` elsewhere).
    fn gather(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>>;
    /// Rank 0's `bytes`, on every rank.
    fn broadcast(&self, bytes: &mut Vec<u8>);
    /// The host this rank runs on.
    fn host(&self) -> String;
}

/// One process, the whole run.
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_i64(&self, _: &mut [i64]) {}
    fn max_f64(&self, value: f64) -> f64 {
        value
    }
    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }
    fn gather(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
        Some(vec![bytes.to_vec()])
    }
    fn broadcast(&self, _: &mut Vec<u8>) {}
    fn host(&self) -> String {
        hostname()
    }
}

/// This machine's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// The ranks of a run, with the tensor-level operations the method needs.
pub struct Ranks {
    group: Box<dyn Collective>,
}

impl Ranks {
    pub fn new(group: Box<dyn Collective>) -> Self {
        Self { group }
    }

    /// This process alone.
    pub fn alone() -> Self {
        Self::new(Box::new(Alone))
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn size(&self) -> usize {
        self.group.size()
    }

    /// Whether this is rank 0, the one that reads and writes the run's files.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    pub fn group(&self) -> &dyn Collective {
        self.group.as_ref()
    }

    /// One f64 per latent, from the rank that holds it, in the latents' order on every rank: `local` holds this
    /// rank's, in its rows' order (`Share::rows`), of the first `total` latents.
    pub fn gather_per_latent(&self, share: &Share, total: i64, local: &[f64]) -> Result<Vec<f64>> {
        let parts = self.group.all_gather(&f64_bytes(local));
        let parts: Vec<Vec<f64>> = parts.iter().map(|p| bytes_f64(p)).collect();
        share.assemble(total, self.size(), |rank, i| parts[rank].get(i).copied())
    }

    /// The rows of all ranks' `local` tensors (each rank's rows of the first `total`, in order), as one tensor in the
    /// latents' order: on every rank (`everywhere`), or on rank 0 only (`None` elsewhere). f32 or f64 on the CPU.
    pub fn gather_rows(&self, share: &Share, total: i64, local: &Tensor, everywhere: bool) -> Result<Option<Tensor>> {
        let kind = local.kind();
        let row_shape: Vec<i64> = local.size()[1..].to_vec();
        let bytes = tensor_bytes(local)?;
        let parts = if everywhere { Some(self.group.all_gather(&bytes)) } else { self.group.gather(&bytes) };
        let Some(parts) = parts else { return Ok(None) };
        let row_len: i64 = row_shape.iter().product::<i64>() * element_size(kind)?;
        let rows = share.assemble(total, self.size(), |rank, i| {
            let start = i * row_len as usize;
            parts[rank].get(start..start + row_len as usize).map(|b| b.to_vec())
        })?;
        let flat: Vec<u8> = rows.concat();
        let shape: Vec<i64> = std::iter::once(total).chain(row_shape).collect();
        Ok(Some(Tensor::from_data_size(&flat, &shape, kind)))
    }

    /// Rank 0's bytes on every rank (`bytes` is read on rank 0 and replaced elsewhere).
    pub fn broadcast(&self, bytes: &mut Vec<u8>) {
        self.group.broadcast(bytes)
    }
}

fn element_size(kind: Kind) -> Result<i64> {
    Ok(match kind {
        Kind::Float => 4,
        Kind::Double => 8,
        other => bail!("rows of {other:?} values cannot be gathered across ranks (f32 or f64 only)"),
    })
}

/// A CPU copy of `t`'s values as bytes in native order.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let size = element_size(t.kind())?;
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let mut bytes = vec![0u8; t.numel() * size as usize];
    t.copy_data_u8(&mut bytes, t.numel());
    Ok(bytes)
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

fn bytes_f64(bytes: &[u8]) -> Vec<f64> {
    bytes.chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes"))).collect()
}
