//! Measuring images: CLIP embeddings, zero-shot classes, sharpness (and, later, the paper's metrics).
pub mod clip_embedder;
pub mod sharpness;
pub mod zero_shot;
