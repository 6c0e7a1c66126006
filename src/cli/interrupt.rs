//! Ctrl-C during a run: the first asks the run to stop after the step in progress, once its checkpoint is saved;
//! a second stops at once (losing that step's work, not the checkpoint before it).
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: i32 = 130;

/// Listens for Ctrl-C (SIGINT) from now on.
pub fn listen() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped; the last checkpoint is kept");
            std::process::exit(EXIT_STATUS);
        }
        eprintln!("\nstopping after this step, once its checkpoint is saved (Ctrl-C again to stop now)");
    });
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The error a run stopped by Ctrl-C ends with; `main` exits with `EXIT_STATUS` on it.
#[derive(Debug, thiserror::Error)]
#[error("stopped by Ctrl-C after {at}; {resume}")]
pub struct Interrupted {
    /// Where the run stopped ("step 3 of 20 of the mental average").
    pub at: String,
    /// How to continue it.
    pub resume: String,
}
