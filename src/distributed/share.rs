//! Which latents a rank holds: blocks of `batch` consecutive latents (the sampler's batch), block b on rank
//! b mod size. Each rank's rows, split into batches, are then exactly the batches one process forms over all K
//! (only the last block of all, and the last of the optimised ones, can be partial, and each is the last of its
//! rank's), so every latent goes through the network in the same company however many ranks there are.
use anyhow::{bail, Result};
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub batch: i64,
    pub rank: usize,
    pub size: usize,
}

impl Share {
    /// The share of rank `rank` of `size`, in blocks of `batch` latents.
    pub fn new(batch: i64, rank: usize, size: usize) -> Self {
        Self { batch: batch.max(1), rank, size: size.max(1) }
    }

    /// Every latent, in one process.
    pub fn whole(batch: i64) -> Self {
        Self::new(batch, 0, 1)
    }

    /// The rank that holds latent `row`.
    pub fn owner(&self, row: i64) -> usize {
        ((row / self.batch) as usize) % self.size
    }

    /// This rank's latents among the first `total`, in order.
    pub fn rows(&self, total: i64) -> Vec<i64> {
        (0..total).filter(|&row| self.owner(row) == self.rank).collect()
    }

    /// How many of the first `total` latents this rank holds.
    pub fn count(&self, total: i64) -> i64 {
        self.rows(total).len() as i64
    }

    /// This rank's rows of `all` (the first `all.size()[0]` latents).
    pub fn take(&self, all: &Tensor) -> Tensor {
        if self.size == 1 {
            return all.shallow_clone();
        }
        let rows = Tensor::from_slice(&self.rows(all.size()[0])).to_device(all.device());
        all.index_select(0, &rows)
    }

    /// The first `total` latents' items in order, from `item(rank, i)`: the i-th of `rank`'s rows. A missing item
    /// (a rank that sent fewer than its share) is an error.
    pub fn assemble<T>(&self, total: i64, size: usize, item: impl Fn(usize, usize) -> Option<T>) -> Result<Vec<T>> {
        let mut next = vec![0usize; size];
        let mut items = Vec::with_capacity(total as usize);
        for row in 0..total {
            let rank = Share { rank: 0, ..*self }.owner(row);
            match item(rank, next[rank]) {
                Some(value) => items.push(value),
                None => bail!("rank {rank} sent fewer latents than it holds (latent {row} is missing)"),
            }
            next[rank] += 1;
        }
        Ok(items)
    }

    /// Refuses a run of `total` latents that leaves a rank without a block of its own.
    pub fn check(&self, total: i64, flag: &str) -> Result<()> {
        let blocks = (total + self.batch - 1) / self.batch;
        if (blocks as usize) < self.size {
            bail!(
                "{flag} {total} in batches of {} makes {blocks} block(s) of latents for {} ranks; every rank needs one: run on at most {blocks} ranks, or give a smaller --batch or more latents",
                self.batch,
                self.size
            );
        }
        Ok(())
    }
}
