//! Optimisers shared by the method (latents) and training (weights).
pub mod adam;
pub mod adamw;

pub use adam::Adam;
pub use adamw::AdamW;
