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

/// The byte counts of every rank's part and where each starts, for the variable-count collectives.
fn partition(counts: &[Count]) -> (Vec<Count>, usize) {
    let displs = counts.iter().scan(0, |at, &n| {
        let start = *at;
        *at += n;
        Some(start)
    });
    (displs.collect(), counts.iter().map(|&n| n as usize).sum())
}

/// Every message goes with one leading byte: an empty Rust buffer's address is 1, which Open MPI reads as
/// MPI_IN_PLACE ((void *) 1) and refuses.
fn framed(bytes: &[u8]) -> Vec<u8> {
    [&[0u8][..], bytes].concat()
}

/// The parts of `buffer`, of `counts` bytes each, without their leading byte.
fn split(buffer: &[u8], counts: &[Count]) -> Vec<Vec<u8>> {
    let mut at = 0;
    counts.iter().map(|&n| {
        let part = buffer[at + 1..at + n as usize].to_vec();
        at += n as usize;
        part
    }).collect()
}

impl World {
    fn counts(&self, bytes: &[u8]) -> Vec<Count> {
        let own = Count::try_from(bytes.len()).expect("a message under 2 GiB per rank");
        let mut counts = vec![0 as Count; self.world.size() as usize];
        self.world.all_gather_into(&own, &mut counts[..]);
        counts
    }
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
        let bytes = &framed(bytes)[..];
        let counts = self.counts(bytes);
        let (displs, total) = partition(&counts);
        let mut buffer = vec![0u8; total];
        {
            let mut parts = PartitionMut::new(&mut buffer[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(bytes, &mut parts);
        }
        split(&buffer, &counts)
    }

    fn gather(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
        let bytes = &framed(bytes)[..];
        let counts = self.counts(bytes);
        let root = self.world.process_at_rank(0);
        if self.world.rank() != 0 {
            root.gather_varcount_into(bytes);
            return None;
        }
        let (displs, total) = partition(&counts);
        let mut buffer = vec![0u8; total];
        {
            let mut parts = PartitionMut::new(&mut buffer[..], &counts[..], &displs[..]);
            root.gather_varcount_into_root(bytes, &mut parts);
        }
        Some(split(&buffer, &counts))
    }

    fn broadcast(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut length = bytes.len() as u64;
        root.broadcast_into(&mut length);
        bytes.resize(length as usize, 0);
        if length > 0 {
            root.broadcast_into(&mut bytes[..]);
        }
    }

    fn host(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| super::hostname())
    }
}
