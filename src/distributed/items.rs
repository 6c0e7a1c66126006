//! Independent items across ranks (a concept's seed in `dma eval`, a model's seed in `dma compare`): handed out
//! round by round, item `todo[r * N + k]` to rank k in round r, and after every round sent to rank 0, which keeps
//! them in item order. Each item is computed whole by one rank from its own seed, so its outcome does not depend
//! on which rank computed it or on how many there are.
//!
//! A stop asked for (`Interrupted`) on any rank ends every rank after the round: what finished is kept, the items
//! in progress start again on resume. Any other error on a rank is its own, and `cli::job` aborts the job on it.
use super::{Parcel, Ranks};
use crate::stop::{status_of, Interrupted};
use anyhow::Result;

/// The work of one run's items.
pub trait Items {
    /// Computes item `item` on this rank.
    fn compute(&mut self, item: usize) -> Result<Parcel>;
    /// On rank 0: item `item`'s outcome, whichever rank computed it (in item order within a round).
    fn keep(&mut self, item: usize, parcel: Parcel) -> Result<()>;
}

/// What a rank sends after a round, in its first byte.
const IDLE: u8 = 0;
const DONE: u8 = 1;
const STOPPED: u8 = 2;

/// Computes the items `todo` over `ranks`, every rank calling this with the same `todo`.
pub fn spread(ranks: Ranks, todo: &[usize], work: &mut dyn Items) -> Result<()> {
    for round in todo.chunks(ranks.size()) {
        let message = match round.get(ranks.rank()).map(|&item| work.compute(item)) {
            None => vec![IDLE],
            Some(Ok(parcel)) => [vec![DONE], parcel.to_bytes()?].concat(),
            Some(Err(error)) => match error.downcast::<Interrupted>() {
                Ok(stopped) => [vec![STOPPED], serde_json::to_vec(&stopped)?].concat(),
                Err(error) => return Err(error),
            },
        };
        let outcome = match ranks.gather(&message) {
            Some(messages) => keep_round(round, &messages, work),
            None => Ok(()),
        };
        ranks.follow_root(outcome, status_of)?;
    }
    Ok(())
}

/// On rank 0: keeps the round's finished items; a stop if any rank stopped (rank 0's own first).
fn keep_round(round: &[usize], messages: &[Vec<u8>], work: &mut dyn Items) -> Result<()> {
    let mut stopped: Option<Interrupted> = None;
    for (rank, message) in messages.iter().enumerate() {
        match message.split_first() {
            Some((&DONE, bytes)) => work.keep(round[rank], Parcel::from_bytes(bytes, &format!("rank {rank}'s item"))?)?,
            Some((&STOPPED, bytes)) if stopped.is_none() => stopped = Some(serde_json::from_slice(bytes)?),
            _ => {}
        }
    }
    match stopped {
        Some(stopped) => Err(stopped.into()),
        None => Ok(()),
    }
}
