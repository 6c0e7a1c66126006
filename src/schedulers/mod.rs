//! Noise schedules and update rules. A scheduler is a pure function of (model output, timestep, sample): it knows
//! nothing of the network that made the output, so guidance, alignment or any other change to the model's
//! prediction happens before the step, in the pipeline.
pub mod ddim;

pub use ddim::{DdimConfig, DdimScheduler, DdimStep};
