//! Measuring images: zero-shot classes with a CLIP model, sharpness (and, later, the paper's metrics).
pub mod sharpness;
pub mod zero_shot;
