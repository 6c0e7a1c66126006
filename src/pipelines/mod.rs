//! Composing models into something that turns prompts into images; loading them from disk.
pub mod baselines;
pub mod defaults;
pub mod embedded;
pub mod evaluation;
pub mod memory;
pub mod mental_average;
pub mod modes;
pub mod single_file;
pub mod source;
pub mod stable_diffusion;
pub mod sweep;

pub use source::ModelSource;
pub use stable_diffusion::StableDiffusion;
