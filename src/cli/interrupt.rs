//! Stopping a run by signal. The first Ctrl-C (SIGINT) asks the run to stop after the step in progress, once its
//! checkpoint is saved. A second Ctrl-C, or SIGTERM or SIGHUP (what a scheduler or a closed terminal sends, often
//! with a short grace before SIGKILL), stops at once: checkpoints are written atomically, so the last one is intact
//! whatever the moment, and the process leaves with `_exit`, which runs no destructor while libtorch may still be
//! computing on another thread (a plain `exit` there crashed: "Invalid (backend, op) pair", or a segfault).
use dma::checkpoint::run::{resume_hint, run_record};
use dma::stop::request_stop;
use dma::output::OutDir;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

static LISTENING: Once = Once::new();
/// The run being written, for what a hard stop says and cleans up.
static RUN: Mutex<Option<Run>> = Mutex::new(None);

struct Run {
    /// The folder its checkpoints go to.
    folder: PathBuf,
    /// The file whose presence means there is a checkpoint to resume from.
    record: PathBuf,
    /// How to continue it ("continue with `dma average --resume out`").
    resume: String,
    /// Whether `folder` is the run's own staging folder, removed when it holds no checkpoint yet.
    staging: bool,
}

/// Listens for SIGINT, SIGTERM and SIGHUP from now on (once per process).
pub fn listen() {
    LISTENING.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("warning: cannot listen for Ctrl-C ({e}); it will stop the run without a checkpoint");
                return;
            }
        };
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if signal == SIGINT && !request_stop() {
                    eprintln!("\nstopping after this step, once its checkpoint is saved (Ctrl-C again to stop now)");
                } else {
                    stop_now(signal);
                }
            }
        });
    });
}

/// From now on a hard stop speaks of the `dma <command>` run writing into `out`: its staging folder is kept when it
/// holds the run's record (`checkpoint::run::run_record`), and removed when the stop comes before that.
pub fn running(out: &OutDir, command: &str) {
    let run = Run { folder: out.staging().to_path_buf(), record: run_record(out.staging()), resume: resume_hint(command, out.target()), staging: true };
    *RUN.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
}

/// From now on a hard stop speaks of a training run checkpointing into `folder` (its record `record`).
pub fn training(folder: PathBuf, record: PathBuf, resume: String) {
    *RUN.lock().unwrap_or_else(|e| e.into_inner()) = Some(Run { folder, record, resume, staging: false });
}

/// Ends the process at once, saying what was kept; a staging folder with nothing to resume is removed.
fn stop_now(signal: i32) -> ! {
    let name = if signal == SIGINT { "Ctrl-C" } else if signal == SIGTERM { "SIGTERM" } else { "SIGHUP" };
    let message = match RUN.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        Some(run) if run.record.is_file() => format!("stopped by {name}; the last checkpoint is kept in {}; {}", run.folder.display(), run.resume),
        Some(run) => {
            if run.staging {
                let _ = std::fs::remove_dir_all(&run.folder);
            }
            format!("stopped by {name} before the first checkpoint; nothing was kept")
        }
        None => format!("stopped by {name}"),
    };
    // Under mpirun, which turns Ctrl-C into SIGTERM for every rank, the rank that holds the run (rank 0) speaks.
    if dma::distributed::launcher::rank().unwrap_or(0) == 0 {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "\n{message}");
        let _ = stderr.flush();
    }
    // SAFETY: _exit ends the process without running anything else; it is async-signal-safe and we are not even
    // in a signal handler (signal-hook delivers signals to this thread).
    unsafe { libc::_exit(128 + signal) }
}
