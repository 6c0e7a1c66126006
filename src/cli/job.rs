//! The processes this `dma` runs among: the ranks of an MPI job when an MPI launcher (`mpirun`, `srun`) started
//! several and the binary was built with `--features mpi`, else this process alone. A binary without MPI refuses to
//! be one of several rather than run the same job several times over.
//!
//! How a job ends: an error every rank met in the same place (`agree`) is said once, by rank 0; an error rank 0
//! met and passed on (`Ranks::follow_root`) ends the others quietly with its status; an error a rank met alone,
//! while the others may be waiting for it in a collective operation, aborts the whole job (MPI_Abort).
use anyhow::{bail, Result};
use dma::distributed::{launcher, Ranks, RootStopped};

pub struct Job {
    pub ranks: Ranks,
    #[cfg(feature = "mpi")]
    mpi: Option<(dma::distributed::mpi::Universe, &'static dma::distributed::mpi::World)>,
}

/// An error every rank knows of (`agree`), said once by rank 0 and ending every rank with status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Agreed(String);

impl Job {
    /// Joins the MPI job this process was started in, if any.
    pub fn start() -> Result<Self> {
        let launched = launcher::size().unwrap_or(1);
        #[cfg(feature = "mpi")]
        if launched > 1 {
            let Some((universe, world)) = dma::distributed::mpi::World::initialize() else { bail!("MPI was initialised twice") };
            return Ok(Self { ranks: Ranks::new(world), mpi: Some((universe, world)) });
        }
        if launched > 1 {
            bail!(
                "this dma was built without MPI, but it is one of {launched} processes an MPI launcher started: they would run the same job {launched} times over. \
                 Build it with `cargo build --release --features mpi` (README: \"Across GPUs and nodes\"), or start one process"
            );
        }
        Ok(Self {
            ranks: Ranks::alone(),
            #[cfg(feature = "mpi")]
            mpi: None,
        })
    }

    /// Ends the process after `error` with the status it calls for, saying it where it should be said, and
    /// finalising MPI where every rank ends together.
    pub fn exit_with(self, error: anyhow::Error) -> ! {
        let ranks = self.ranks;
        if let Some(stopped) = error.downcast_ref::<RootStopped>() {
            let status = stopped.status;
            drop(self);
            std::process::exit(status);
        }
        let status = dma::stop::status_of(&error);
        if error.downcast_ref::<Agreed>().is_some() {
            if ranks.is_root() {
                eprintln!("error: {error:#}");
            }
            drop(self);
            std::process::exit(status);
        }
        if ranks.size() == 1 {
            eprintln!("error: {error:#}");
            std::process::exit(status);
        }
        eprintln!("error (rank {} of {}, on {}): {error:#}", ranks.rank(), ranks.size(), ranks.host());
        self.abort(status)
    }

    #[cfg(feature = "mpi")]
    fn abort(self, status: i32) -> ! {
        match self.mpi {
            Some((_, world)) => world.abort(status),
            None => std::process::exit(status),
        }
    }

    #[cfg(not(feature = "mpi"))]
    fn abort(self, status: i32) -> ! {
        std::process::exit(status)
    }

    /// Ends the process after success, with every rank.
    pub fn exit_ok(self) -> ! {
        drop(self);
        std::process::exit(0)
    }
}

/// Every rank's `outcome` of a stage all of them go through (setting up, writing): on every rank `Ok` when all
/// succeeded, else an `Agreed` error that rank 0 says: its own, or the first failing rank's, named.
pub fn agree<T>(ranks: Ranks, outcome: Result<T>) -> Result<T> {
    if ranks.size() == 1 {
        return outcome;
    }
    let mine = match &outcome {
        Ok(_) => Vec::new(),
        Err(error) => format!("{error:#}").into_bytes(),
    };
    let all = ranks.all_gather(&mine);
    let failed: Vec<(usize, String)> = all.iter().enumerate().filter(|(_, m)| !m.is_empty()).map(|(r, m)| (r, String::from_utf8_lossy(m).into_owned())).collect();
    match (outcome, failed.first()) {
        (Ok(value), None) => Ok(value),
        (outcome, Some((rank, message))) => {
            let same_everywhere = failed.len() == ranks.size() && failed.iter().all(|(_, m)| m == message);
            let said = if same_everywhere || *rank == 0 { message.clone() } else { format!("rank {rank}: {message}") };
            drop(outcome);
            Err(Agreed(said).into())
        }
        (Err(error), None) => Err(error),
    }
}

/// Refuses to go on unless every rank runs the same command on the same model files: `fingerprint` is what this
/// rank was asked (its arguments, the settings they resolved to, the hashes of the model's weights).
pub fn check_same_job(ranks: Ranks, fingerprint: &str) -> Result<()> {
    if ranks.size() == 1 {
        return Ok(());
    }
    let all = ranks.all_gather(fingerprint.as_bytes());
    let differing: Vec<usize> = all.iter().enumerate().filter(|(_, f)| f.as_slice() != all[0].as_slice()).map(|(r, _)| r).collect();
    if !differing.is_empty() {
        return Err(Agreed(format!(
            "ranks {differing:?} were not given the same job as rank 0 (other arguments, or model files with other hashes); every rank must run the same command on the same files"
        ))
        .into());
    }
    Ok(())
}
