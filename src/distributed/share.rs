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

    /// How many of the first `total` latents this rank holds (counted, not listed: `total` may be absurd, and is
    /// checked against the memory after this).
    pub fn count(&self, total: i64) -> i64 {
        // In i128: a count near i64::MAX rounded up to whole blocks overflows i64.
        let (total, b, size, rank) = (total.max(0) as i128, self.batch as i128, self.size as i128, self.rank as i128);
        let blocks = total / b + i128::from(total % b != 0);
        let owned = if rank < blocks { (blocks - rank - 1) / size + 1 } else { 0 };
        // The last block may be partial; it is this rank's when its index falls to it.
        let short = if blocks > 0 && (blocks - 1) % size == rank { blocks * b - total } else { 0 };
        (owned * b - short) as i64
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
    pub fn assemble<T>(&self, total: i64, item: impl Fn(usize, usize) -> Option<T>) -> Result<Vec<T>> {
        let mut next = vec![0usize; self.size];
        let mut items = Vec::with_capacity(total as usize);
        for row in 0..total {
            let rank = self.owner(row);
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
        let blocks = total / self.batch + i64::from(total % self.batch != 0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latent_is_held_by_one_rank_in_blocks_of_the_batch() {
        for (total, batch, size) in [(12, 2, 3), (13, 2, 3), (5, 4, 2), (256, 16, 3), (7, 1, 7), (3, 2, 2)] {
            let shares: Vec<Share> = (0..size).map(|r| Share::new(batch, r, size)).collect();
            let mut all: Vec<i64> = shares.iter().flat_map(|s| s.rows(total)).collect();
            all.sort();
            assert_eq!(all, (0..total).collect::<Vec<_>>(), "{total} latents in blocks of {batch} over {size} ranks");
            for share in &shares {
                assert_eq!(share.count(total), share.rows(total).len() as i64, "{share:?} of {total}");
                assert!(share.rows(total).iter().all(|r| share.owner(*r) == share.rank));
            }
            let assembled = shares[0].assemble(total, |rank, i| shares[rank].rows(total).get(i).copied()).unwrap();
            assert_eq!(assembled, (0..total).collect::<Vec<_>>(), "assembled in order");
        }
        // Counting does not list: an absurd K is counted at once (and refused by the memory check after).
        assert_eq!(Share::new(8, 0, 1).count(i64::MAX), i64::MAX);
    }
}
