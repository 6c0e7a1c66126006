//! The skeleton every command's run shares, and which rank does what in it. Every rank parses the same command
//! line, resolves the same settings, loads the model onto its own device and computes its part; rank 0 alone reads
//! a resumed run's record, owns the output folder and its checkpoints, and writes every output. Each stage all
//! ranks go through ends in agreement (`job::agree`): an error is said once, by rank 0, and every rank stops.
//!
//! A command is: `Run::arguments` (what to run: the given flags, or a stopped run's), its settings, `Run::open`
//! (the output folder, new or resumed), `Run::load_model`, the work (latents shared by the ranks, or independent
//! items handed to them: `Run::items`), and `Run::finish` (rank 0 writes, with what each rank did).
use super::common::{progress_bar, ModelArgs};
use super::job::{agree, check_same_job};
use super::resume::{arguments, resumed_or_new, Resumable};
use anyhow::Result;
use clap::ArgMatches;
use dma::checkpoint::run::{RunCheckpoints, StopOnly};
use dma::checkpoint::{Checkpoints, NoCheckpoints};
use dma::distributed::items::{spread, Items};
use dma::distributed::{communication_seconds, Parcel, Ranks};
use dma::output::OutDir;
use dma::loaders::ModelSource;
use dma::pipelines::DiffusionModel;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// A stopped run taken up by rank 0 (`--resume`): its folder and its record.
pub type Resumed = Option<(OutDir, Value)>;

pub struct Run {
    pub ranks: Ranks,
    command: &'static str,
    /// Rank 0's: the output folder, what run.json says of a resumption (null for a run never stopped), and the
    /// run's checkpoints.
    root: Option<(OutDir, Value, RunCheckpoints)>,
    /// The output folder, known to every rank (for the message on how to resume).
    target: PathBuf,
    no_checkpoints: NoCheckpoints,
    started: Instant,
}

/// One independent item of a run (`Run::items`): its checkpoint stage, what the progress bar calls it, and its
/// progress units.
pub struct Item {
    pub stage: String,
    pub title: String,
    pub work: u64,
}

impl Run {
    /// The arguments every rank runs with: rank 0's (the given ones, or with --resume those of the stopped run,
    /// whose folder and record rank 0 keeps), once every rank is known to have been given the same command line.
    pub fn arguments<A: Resumable>(command: &str, args: A, matches: &ArgMatches, ranks: Ranks) -> Result<(Resumed, A)> {
        // The program's own path aside: nodes may install it elsewhere.
        check_same_job(ranks, &serde_json::to_string(&std::env::args().skip(1).collect::<Vec<_>>())?)?;
        let local = if ranks.is_root() { arguments(command, args, matches) } else { Ok((None, args)) };
        let (resumed, args) = agree(ranks, local)?;
        Ok((resumed, ranks.from_root(|| Ok(args))?))
    }

    /// Opens the run: rank 0 takes up the resumed run's folder (whose settings must still resolve to `resolved`)
    /// or makes a new one with `create`, and keeps the run's checkpoints there, `args` being what --resume starts
    /// again from.
    pub fn open(ranks: Ranks, command: &'static str, resumed: Resumed, args: &impl Serialize, resolved: &Value, create: impl FnOnce() -> Result<OutDir>) -> Result<Self> {
        let root = agree(ranks, ranks.is_root().then(|| resumed_or_new(resumed, resolved, create)).transpose())?;
        let root = root.map(|(out, resumption)| {
            let checkpoints = RunCheckpoints::new(out.staging(), out.target(), command, args, resolved);
            (out, resumption, checkpoints)
        });
        let target = ranks.from_root(|| Ok(root.as_ref().map(|(out, ..)| out.target().to_path_buf()).unwrap_or_default()))?;
        Ok(Self { ranks, command, root, target, no_checkpoints: NoCheckpoints, started: Instant::now() })
    }

    /// The model of `model_args` on this rank's device, made ready by `prepare` (an adapter applied, what the run
    /// asks of it checked), on every rank; on several ranks, every rank must hold the same weights for the same
    /// settings `resolved`.
    pub fn load_model(&self, model_args: &ModelArgs, source: &ModelSource, resolved: &Value, prepare: impl FnOnce(&mut DiffusionModel) -> Result<()>) -> Result<DiffusionModel> {
        let loaded = (|| {
            let mut model = model_args.load_on_rank(source, self.ranks)?;
            prepare(&mut model)?;
            Ok(model)
        })();
        let model = agree(self.ranks, loaded)?;
        if self.ranks.size() > 1 {
            check_same_job(self.ranks, &json!({ "resolved": resolved, "model": model.info.weight_hashes()? }).to_string())?;
        }
        Ok(model)
    }

    /// Rank 0's checkpoints (none on the other ranks).
    pub fn checkpoints(&mut self) -> Option<&mut RunCheckpoints> {
        self.root.as_mut().map(|(_, _, checkpoints)| checkpoints)
    }

    /// The checkpoints of a stage every rank runs its share of (`mental_average::run_stage`): rank 0's, which it
    /// alone is shown and reads; none on the others.
    pub fn shared_stage(&mut self) -> &mut dyn Checkpoints {
        match self.root.as_mut() {
            Some((_, _, checkpoints)) => checkpoints,
            None => &mut self.no_checkpoints,
        }
    }

    /// `error`, saying where rank 0's last checkpoint is kept.
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        match &self.root {
            Some((_, _, checkpoints)) => checkpoints.explain(error),
            None => error,
        }
    }

    /// Seconds since the run was opened.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Computes independent `items`, handed to the ranks round by round (`distributed::items`), each by
    /// `compute(item, checkpoints, progress)`. Rank 0 keeps each finished
    /// item's outcome as its checkpoint, and takes up the outcomes a stopped run finished. Alone, an item also
    /// checkpoints its own stages as it goes; on several ranks, an item stopped half-way starts again on resume.
    /// Returns every item's outcome, in order, on rank 0 (None elsewhere).
    pub fn items(
        &mut self,
        items: &[Item],
        quiet: bool,
        compute: &mut dyn FnMut(usize, &mut dyn Checkpoints, &dyn Fn(u64)) -> Result<Parcel>,
    ) -> Result<Option<Vec<Parcel>>> {
        let ranks = self.ranks;
        // On several ranks nothing is kept until the first round ends: a stop before then must still leave a run
        // to resume (its items start again).
        let recorded = match (ranks.size() > 1, self.root.as_mut()) {
            (true, Some((_, _, checkpoints))) => checkpoints.record_run(),
            _ => Ok(()),
        };
        agree(ranks, recorded)?;
        let finished = self.root.as_ref().map(|(_, _, checkpoints)| items.iter().map(|item| checkpoints.finished_item(&item.stage)).collect::<Result<Vec<_>>>());
        let mut outcomes = agree(ranks, finished.transpose())?.unwrap_or_default();
        let todo: Vec<usize> = (0..items.len()).filter(|&i| outcomes.get(i).is_none_or(Option::is_none)).collect();
        let todo = ranks.from_root(|| Ok(todo))?;
        let mine: u64 = todo.iter().skip(ranks.rank()).step_by(ranks.size()).map(|&i| items[i].work).sum();
        let bar = progress_bar(mine, quiet || !ranks.is_root());
        let mut stop_only = StopOnly::new(self.command, &self.target);
        let mut spreading = Spreading {
            items,
            alone: ranks.size() == 1,
            checkpoints: self.root.as_mut().map(|(_, _, checkpoints)| checkpoints),
            stop_only: &mut stop_only,
            outcomes: &mut outcomes,
            compute,
            progress: &|n| bar.inc(n),
            message: &|title| bar.set_message(title.to_string()),
        };
        spread(ranks, &todo, &mut spreading).map_err(|e| self.explain(e))?;
        bar.finish_and_clear();
        Ok(ranks.is_root().then(|| outcomes.into_iter().map(|o| o.expect("every item is finished")).collect()))
    }

    /// Ends the run: rank 0 writes every output with `write(folder, resumption, ranks)`, `ranks` holding each
    /// rank's host, `device` and `seconds` (named times of its own), and every rank learns whether that worked.
    pub fn finish(self, device: &str, seconds: Value, write: impl FnOnce(OutDir, Value, Vec<Value>) -> Result<()>) -> Result<()> {
        let ranks = self.ranks;
        let mut this_rank = json!({
            "rank": ranks.rank(),
            "host": ranks.host(),
            "device": device,
            // Of the whole run: waiting for and exchanging with the other ranks.
            "communication_seconds": communication_seconds(),
        });
        if let (Some(record), Value::Object(times)) = (this_rank.as_object_mut(), seconds) {
            record.extend(times);
        }
        let all = ranks.gather(this_rank.to_string().as_bytes()).map(|all| all.iter().map(|r| serde_json::from_slice(r).unwrap_or(Value::Null)).collect::<Vec<Value>>());
        let written = match (self.root, all) {
            (Some((out, resumption, checkpoints)), Some(all)) => {
                drop(checkpoints);
                write(out, resumption, all)
            }
            _ => Ok(()),
        };
        agree(ranks, written)
    }
}

/// `Run::items`' work, as `distributed::items` sees it.
struct Spreading<'a> {
    items: &'a [Item],
    alone: bool,
    checkpoints: Option<&'a mut RunCheckpoints>,
    stop_only: &'a mut StopOnly,
    outcomes: &'a mut Vec<Option<Parcel>>,
    compute: &'a mut dyn FnMut(usize, &mut dyn Checkpoints, &dyn Fn(u64)) -> Result<Parcel>,
    progress: &'a dyn Fn(u64),
    message: &'a dyn Fn(&str),
}

impl Items for Spreading<'_> {
    fn compute(&mut self, item: usize) -> Result<Parcel> {
        (self.message)(&self.items[item].title);
        let checkpoints: &mut dyn Checkpoints = match (self.alone, self.checkpoints.as_deref_mut()) {
            (true, Some(checkpoints)) => checkpoints,
            _ => self.stop_only,
        };
        (self.compute)(item, checkpoints, self.progress)
    }

    fn keep(&mut self, item: usize, parcel: Parcel) -> Result<()> {
        if let Some(checkpoints) = self.checkpoints.as_deref_mut() {
            checkpoints.save_item(&self.items[item].stage, &parcel)?;
        }
        // Rank 0's list has a place for every item (`Run::items`).
        self.outcomes[item] = Some(parcel);
        Ok(())
    }
}
