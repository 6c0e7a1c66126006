//! The embedded model's training data: Fashion-MNIST and MNIST digits as one 20-class labelled set of 32x32
//! grayscale images, and the captions the model learns its words from.
//!
//! - `fashion_mnist`, `mnist_digits`: readers for the files as published, 28x28 bytes with labels.
//! - `classes`: the 20 class ids and names; `dataset`: both sources as one tensor, split and sampled.
//! - `captions`: seeded captions per class, and the broad concepts whose member classes are known.
//! - `rng`: the small seeded generator behind sampling and captions.
//!
//! scripts/setup_data.sh installs the files into `data_dir()`.
pub mod captions;
pub mod classes;
pub mod dataset;
pub mod fashion_mnist;
pub mod mnist_digits;
pub mod rng;

pub use classes::{class_names, NUM_CLASSES};
pub use dataset::Dataset;
pub use rng::Rng;

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Appended to errors about missing data files.
pub(crate) const SETUP_HINT: &str = "run scripts/setup_data.sh to install the training data";

/// The source images' side: both sets are 28x28.
pub const SOURCE_SIDE: usize = 28;

/// The published train/test split (Fashion-MNIST), or the fixed hold-out of `mnist_digits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images of `SOURCE_SIDE`^2 bytes (0 black background, 255 white ink), back to back, with one label each.
pub struct RawImages {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Where scripts/setup_data.sh installs the data: `$DMA_CACHE/data`, by default `~/.cache/dma/data`.
pub fn data_dir() -> Result<PathBuf> {
    if let Some(cache) = std::env::var_os("DMA_CACHE") {
        return Ok(PathBuf::from(cache).join("data"));
    }
    let home = std::env::var_os("HOME").context("neither DMA_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/dma/data"))
}
