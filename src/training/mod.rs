//! Training the embedded model: its recipe (architecture and schedule) and the resumable training loop.
pub mod clip;
pub mod diffusion;
pub mod embedded;
pub mod ema;

/// The learning rate at `step`: linear warm-up over `warmup` steps, then cosine decay to 10% of `lr` at `steps`.
pub fn cosine_lr(lr: f64, warmup: usize, steps: usize, step: usize) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / steps.saturating_sub(warmup).max(1) as f64;
    lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}
