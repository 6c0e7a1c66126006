//! Composing models into something that turns prompts into images, and what is built from that: the mental
//! average, modes, evaluation, sweeps, baselines.
pub mod baselines;
pub mod defaults;
pub mod embedded;
pub mod evaluation;
pub mod memory;
pub mod mental_average;
pub mod model;
pub mod modes;
pub mod sdxl;
pub mod sweep;

pub use model::DiffusionModel;
