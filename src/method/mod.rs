//! Diffusion Mental Averages: progressive trajectory alignment in h-space, as hooks on a sampling loop.
pub mod alignment;
pub mod hspace;
pub mod schedules;

pub use alignment::{AlignSettings, Alignment, StepLog};
pub use hspace::{HBranch, HSpace};
pub use schedules::Schedule;
