//! The processes a run is spread over (MPI ranks, or this process alone), and the few things they share.
//!
//! DMA's latents are independent but for one quantity, the target (the mean h of all K), once per aligned step.
//! The K latents are split across ranks in blocks of the sampler's batch (`Share`), so that every block goes
//! through the network exactly as it does in one process; and every mean over latents is exact (`exact`), so it
//! does not depend on how many ranks added which part. The same command therefore gives the same bits on 1, 2 or
//! 3 ranks. The one-process path is the same code with one rank.
pub mod exact;
pub mod items;
pub mod launcher;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod parcel;
pub mod share;

pub use parcel::Parcel;
pub use share::Share;

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Nanoseconds this process has spent in operations with the other ranks (waiting for them included).
static COMMUNICATION_NS: AtomicU64 = AtomicU64::new(0);

/// Seconds this process has spent in operations with the other ranks so far, waiting for slower ones included:
/// set beside its compute time, what distribution costs (run.json's `ranks`).
pub fn communication_seconds() -> f64 {
    COMMUNICATION_NS.load(Ordering::Relaxed) as f64 * 1e-9
}

/// `operation`, its time counted as communication.
fn timed<T>(operation: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = operation();
    COMMUNICATION_NS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    result
}

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

/// The ranks of a run, with the operations over latents the method needs. A handle: copies share the group, which
/// lives as long as the process (an MPI communicator is made once, in `main`).
#[derive(Clone, Copy)]
pub struct Ranks {
    group: &'static dyn Collective,
}

static ALONE: Alone = Alone;

impl Ranks {
    pub fn new(group: &'static dyn Collective) -> Self {
        Self { group }
    }

    /// This process alone.
    pub fn alone() -> Self {
        Self::new(&ALONE)
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

    /// The host this rank runs on.
    pub fn host(&self) -> String {
        self.group.host()
    }

    /// Element-wise sums of every rank's `values`.
    pub fn sum(&self, values: &[u64]) -> Vec<u64> {
        let mut sums: Vec<i64> = values.iter().map(|&v| v as i64).collect();
        self.sum_i64(&mut sums);
        sums.into_iter().map(|v| v as u64).collect()
    }

    /// Element-wise sums of every rank's `values`, in place (exact: integers).
    pub fn sum_i64(&self, values: &mut [i64]) {
        timed(|| self.group.sum_i64(values))
    }

    /// The largest of every rank's `value`.
    pub fn max(&self, value: f64) -> f64 {
        timed(|| self.group.max_f64(value))
    }

    /// Every rank's `bytes`, in rank order, on every rank.
    pub fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        timed(|| self.group.all_gather(bytes))
    }

    /// Every rank's `bytes`, in rank order, on rank 0 (`None` elsewhere).
    pub fn gather(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
        timed(|| self.group.gather(bytes))
    }

    /// One f64 per latent, from the rank that holds it, in the latents' order on every rank: `local` holds this
    /// rank's, in its rows' order (`Share::rows`), of the first `total` latents.
    pub fn gather_per_latent(&self, share: &Share, total: i64, local: &[f64]) -> Result<Vec<f64>> {
        let parts = self.all_gather(&f64_bytes(local));
        let parts: Vec<Vec<f64>> = parts.iter().map(|p| bytes_f64(p)).collect();
        share.assemble(total, |rank, i| parts[rank].get(i).copied())
    }

    /// The rows of all ranks' `local` tensors (each rank's rows of the first `total`, in order), as one tensor in the
    /// latents' order: on every rank (`everywhere`), or on rank 0 only (`None` elsewhere). f32 or f64 on the CPU.
    pub fn gather_rows(&self, share: &Share, total: i64, local: &Tensor, everywhere: bool) -> Result<Option<Tensor>> {
        if self.size() == 1 {
            return Ok(Some(local.shallow_clone()));
        }
        let kind = local.kind();
        let row_shape: Vec<i64> = local.size()[1..].to_vec();
        let bytes = tensor_bytes(local)?;
        let parts = if everywhere { Some(self.all_gather(&bytes)) } else { self.gather(&bytes) };
        let Some(parts) = parts else { return Ok(None) };
        let row_len: i64 = row_shape.iter().product::<i64>() * element_size(kind)?;
        let rows = share.assemble(total, |rank, i| {
            let start = i * row_len as usize;
            parts[rank].get(start..start + row_len as usize).map(|b| b.to_vec())
        })?;
        let flat: Vec<u8> = rows.concat();
        let shape: Vec<i64> = std::iter::once(total).chain(row_shape).collect();
        Ok(Some(Tensor::from_data_size(&flat, &shape, kind)))
    }

    /// Rank 0's tensor (`Some` there; f32 or f64) on every rank, on the CPU.
    pub fn broadcast_tensor(&self, tensor: Option<&Tensor>) -> Result<Tensor> {
        if self.size() == 1 {
            return tensor.map(|t| t.shallow_clone()).ok_or_else(|| anyhow::anyhow!("rank 0 has no tensor to give"));
        }
        let mut header = match tensor {
            Some(t) => format!("{}:{:?}", if t.kind() == Kind::Double { "f64" } else { "f32" }, t.size()).into_bytes(),
            None => Vec::new(),
        };
        self.broadcast(&mut header);
        let header = String::from_utf8_lossy(&header).into_owned();
        let (kind, shape) = header.split_once(':').ok_or_else(|| anyhow::anyhow!("rank 0 sent no tensor"))?;
        let kind = if kind == "f64" { Kind::Double } else { Kind::Float };
        let shape: Vec<i64> = serde_json::from_str(shape)?;
        let mut bytes = match tensor {
            Some(t) => tensor_bytes(&t.to_kind(kind))?,
            None => Vec::new(),
        };
        self.broadcast(&mut bytes);
        Ok(Tensor::from_data_size(&bytes, &shape, kind))
    }

    /// Rank 0's bytes on every rank (`bytes` is read on rank 0 and replaced elsewhere).
    pub fn broadcast(&self, bytes: &mut Vec<u8>) {
        timed(|| self.group.broadcast(bytes))
    }

    /// The value `compute` gives on rank 0 (run there alone: what only rank 0 reads or decides), on every rank; when
    /// it fails, rank 0 returns its error and the others a `RootStopped`.
    pub fn from_root<T: serde::Serialize + serde::de::DeserializeOwned>(&self, compute: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.size() == 1 {
            return compute();
        }
        let computed = self.is_root().then(|| compute().and_then(|value| Ok((serde_json::to_vec(&value)?, value))));
        let (outcome, computed) = match computed {
            Some(Ok((bytes, value))) => (Ok(()), Some((bytes, value))),
            Some(Err(error)) => (Err(error), None),
            None => (Ok(()), None),
        };
        self.follow_root(outcome, crate::stop::status_of)?;
        let mut bytes = computed.as_ref().map(|(bytes, _)| bytes.clone()).unwrap_or_default();
        self.broadcast(&mut bytes);
        match computed {
            Some((_, value)) => Ok(value),
            None => Ok(serde_json::from_slice(&bytes)?),
        }
    }

    /// Rank 0's `outcome` (what it made of a step: go on, or stop with an error), on every rank: rank 0 returns its
    /// own; the others return `Ok` or a `RootStopped` with the exit status `status` gives rank 0's error. Where only
    /// rank 0 looks at something (a checkpoint, a Ctrl-C), every rank thus goes on or stops at the same step.
    pub fn follow_root(&self, outcome: Result<()>, status: impl Fn(&anyhow::Error) -> i32) -> Result<()> {
        if self.size() == 1 {
            return outcome;
        }
        let mut message = match &outcome {
            Ok(()) => Vec::new(),
            Err(error) => [status(error).to_ne_bytes().to_vec(), format!("{error:#}").into_bytes()].concat(),
        };
        self.broadcast(&mut message);
        if self.is_root() || message.is_empty() {
            return outcome;
        }
        let status = i32::from_ne_bytes(message[..4].try_into().expect("a status"));
        Err(RootStopped { status, message: String::from_utf8_lossy(&message[4..]).into_owned() }.into())
    }
}

/// Rank 0 stopped the run with an error it has reported itself; the other ranks end with its exit status and say
/// nothing more (one message per job, not one per rank).
#[derive(Debug, thiserror::Error)]
#[error("rank 0 stopped the run: {message}")]
pub struct RootStopped {
    pub status: i32,
    pub message: String,
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
