//! Measuring images: CLIP embeddings, zero-shot classes, and the paper's metrics (consistency,
//! representativeness) with sharpness.
pub mod clip_embedder;
pub mod metrics;
pub mod sharpness;
pub mod zero_shot;
