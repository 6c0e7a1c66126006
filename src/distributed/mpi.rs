//! The ranks of an MPI job (Open MPI or MPICH, through rsmpi), started by `mpirun` or `srun`.
use super::Collective;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Count;

/// MPI's world communicator, for the life of the process.
pub struct World {
    world: SimpleCommunicator,
}

/// MPI, while it lives: dropping it finalises MPI (at the end of `main`, on every rank).
pub type Universe = mpi::environment::Universe;

impl World {
    /// Initialises MPI: the universe to drop at the end, and the world; `None` when MPI was initialised already.
    pub fn initialize() -> Option<(Universe, &'static World)> {
        let universe = mpi::initialize()?;
        let world: &'static World = Box::leak(Box::new(World { world: universe.world() }));
        Some((universe, world))
    }

    /// Ends every rank of the job at once with `code` (a rank that fails alone must not leave the others waiting
    /// in a collective).
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The most bytes one collective call moves in all (the parts of every rank together): MPI counts and offsets are
/// 32-bit, so a round of items (an evaluation seed at SD 1.5 size is some 330 MB) goes in several calls. Overridden
/// by `DMA_MPI_BYTES_PER_CALL` (the tests make it small, so that every message takes many calls).
const BYTES_PER_CALL: usize = 1 << 30;

fn bytes_per_call() -> usize {
    std::env::var("DMA_MPI_BYTES_PER_CALL").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0).unwrap_or(BYTES_PER_CALL).min(BYTES_PER_CALL)
}

/// Piece `call` of a message of `len` bytes cut in pieces of `piece` bytes (empty past its end).
fn piece(len: usize, call: usize, piece: usize) -> std::ops::Range<usize> {
    let start = (call * piece).min(len);
    start..(start + piece).min(len)
}

/// Every piece goes with one leading byte: an empty Rust buffer's address is 1, which Open MPI reads as
/// MPI_IN_PLACE ((void *) 1) and refuses.
fn framed(bytes: &[u8]) -> Vec<u8> {
    [&[0u8][..], bytes].concat()
}

/// Every rank's message in pieces: `exchange(piece of this rank, counts of every rank's piece, displacements,
/// receive buffer)` moves one piece of every rank (None where this rank receives nothing), and the pieces are put
/// back together per rank.
fn in_pieces(world: &SimpleCommunicator, bytes: &[u8], receives: bool, mut exchange: impl FnMut(&[u8], &[Count], &[Count], Option<&mut [u8]>)) -> Vec<Vec<u8>> {
    let size = world.size() as usize;
    let mut lengths = vec![0u64; size];
    world.all_gather_into(&(bytes.len() as u64), &mut lengths[..]);
    let lengths: Vec<usize> = lengths.into_iter().map(|l| l as usize).collect();
    // Each rank's piece, framed, fits its share of a call.
    let share = (bytes_per_call() / size).max(2) - 1;
    let calls = lengths.iter().map(|&l| l.div_ceil(share)).max().unwrap_or(0).max(1);
    let mut messages: Vec<Vec<u8>> = lengths.iter().map(|&l| Vec::with_capacity(if receives { l } else { 0 })).collect();
    for call in 0..calls {
        let counts: Vec<Count> = lengths.iter().map(|&l| (piece(l, call, share).len() + 1) as Count).collect();
        let displs: Vec<Count> = counts.iter().scan(0, |at, &n| {
            let start = *at;
            *at += n;
            Some(start)
        }).collect();
        let mut buffer = vec![0u8; if receives { counts.iter().map(|&n| n as usize).sum() } else { 0 }];
        exchange(&framed(&bytes[piece(bytes.len(), call, share)]), &counts, &displs, receives.then_some(&mut buffer[..]));
        if receives {
            for (rank, message) in messages.iter_mut().enumerate() {
                let start = displs[rank] as usize + 1;
                message.extend_from_slice(&buffer[start..displs[rank] as usize + counts[rank] as usize]);
            }
        }
    }
    messages
}

impl Collective for World {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn sum_i64(&self, values: &mut [i64]) {
        if values.is_empty() {
            return;
        }
        let mine = values.to_vec();
        self.world.all_reduce_into(&mine[..], values, SystemOperation::sum());
    }

    fn max_f64(&self, value: f64) -> f64 {
        let mut largest = 0.0f64;
        self.world.all_reduce_into(&value, &mut largest, SystemOperation::max());
        largest
    }

    fn all_gather(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        in_pieces(&self.world, bytes, true, |mine, counts, displs, buffer| {
            let mut parts = PartitionMut::new(buffer.expect("every rank receives"), counts, displs);
            self.world.all_gather_varcount_into(mine, &mut parts);
        })
    }

    fn gather(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
        let root = self.world.process_at_rank(0);
        let is_root = self.world.rank() == 0;
        let messages = in_pieces(&self.world, bytes, is_root, |mine, counts, displs, buffer| match buffer {
            Some(buffer) => {
                let mut parts = PartitionMut::new(buffer, counts, displs);
                root.gather_varcount_into_root(mine, &mut parts);
            }
            None => root.gather_varcount_into(mine),
        });
        is_root.then_some(messages)
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut length = bytes.len() as u64;
        root.broadcast_into(&mut length);
        bytes.resize(length as usize, 0);
        for piece in bytes.chunks_mut(bytes_per_call()) {
            root.broadcast_into(piece);
        }
    }

    fn host(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| super::hostname())
    }
}
