//! Training the embedded model: its recipe (architecture and schedule) and the resumable training loop.
pub mod checkpoint;
pub mod diffusion;
pub mod embedded;
pub mod ema;
