//! A stop asked for while a run works (Ctrl-C, or the SIGTERM `mpirun` turns it into): the run ends at its next
//! checkpoint with `Interrupted`, which every layer passes up unchanged and `main` ends with status 130.
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks every run of this process to stop at its next checkpoint; true when that had been asked already.
pub fn request_stop() -> bool {
    STOP.swap(true, Ordering::SeqCst)
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The error a run stopped on request ends with; `main` exits with 130 (128 + SIGINT) on it.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[error("stopped by Ctrl-C after {at}; {resume}")]
pub struct Interrupted {
    /// Where the run stopped ("step 3 of 20 of the mental average").
    pub at: String,
    /// How to continue it.
    pub resume: String,
}

impl Interrupted {
    /// The exit status of a run stopped so (128 + SIGINT, as shells report it).
    pub const STATUS: i32 = 130;
}

/// The exit status `error` ends a process with: `Interrupted::STATUS` for a stop asked for, else 1.
pub fn status_of(error: &anyhow::Error) -> i32 {
    if error.downcast_ref::<Interrupted>().is_some() {
        Interrupted::STATUS
    } else {
        1
    }
}
