//! Measuring images: zero-shot classes with a CLIP model (and, later, the paper's metrics).
pub mod zero_shot;
