//! Fashion-MNIST and the MNIST digits as one labelled set of 20 classes (see `classes`), 32x32 grayscale.
//!
//! The 28x28 images are zero-padded by 2 pixels on each side: both sets are white on black, so the border is more
//! background. They are kept as bytes in one tensor (70 MB for the training split, a quarter of the f32 size) and
//! converted to f32 in [-1,1] (background -1) when taken out.
use super::classes::{DIGIT_BASE, NUM_CLASSES};
use super::{fashion_mnist, mnist_digits, Rng, Split, SETUP_HINT, SOURCE_SIDE};
use anyhow::{bail, ensure, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// The side of the images a `Dataset` gives out.
pub const IMAGE_SIDE: i64 = 32;

pub struct Dataset {
    /// u8 [N,1,32,32].
    pixels: Tensor,
    labels: Vec<usize>,
    /// The indices of each class's images, for class-balanced sampling.
    by_class: Vec<Vec<i64>>,
}

impl Dataset {
    /// Both sources' `split` from the data folder (`super::data_dir()` where scripts/setup_data.sh installs it).
    pub fn load(data_dir: &Path, split: Split) -> Result<Self> {
        ensure!(data_dir.is_dir(), "no data folder {}: {SETUP_HINT}", data_dir.display());
        let fashion = fashion_mnist::load(&data_dir.join(fashion_mnist::SUBDIR), split)?;
        let digits = mnist_digits::load(&data_dir.join(mnist_digits::SUBDIR), split)?;
        let labels: Vec<usize> = fashion
            .labels
            .iter()
            .map(|&l| l as usize)
            .chain(digits.labels.iter().map(|&d| DIGIT_BASE + d as usize))
            .collect();
        let mut pixels = fashion.pixels;
        pixels.extend(digits.pixels);
        let side = SOURCE_SIDE as i64;
        let margin = (IMAGE_SIDE - side) / 2;
        let pixels = Tensor::from_slice(&pixels)
            .view([labels.len() as i64, 1, side, side])
            .constant_pad_nd([margin, margin, margin, margin]);
        let mut by_class = vec![Vec::new(); NUM_CLASSES];
        for (i, &class) in labels.iter().enumerate() {
            by_class[class].push(i as i64);
        }
        if let Some(empty) = by_class.iter().position(Vec::is_empty) {
            bail!("{}: no {split:?} images of class {empty}", data_dir.display());
        }
        Ok(Self { pixels, labels, by_class })
    }

    pub fn num_images(&self) -> usize {
        self.labels.len()
    }

    /// Every image's class id.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        self.by_class.iter().map(Vec::len).collect()
    }

    /// All images, f32 [N,1,32,32] in [-1,1], in the order of `labels()`.
    pub fn images(&self) -> Tensor {
        to_unit_range(&self.pixels)
    }

    /// `n` images, f32 [n,1,32,32] in [-1,1], with their class ids. Classes are drawn uniformly, then an image of
    /// the class: the digits (850 training images a class) weigh as much as Fashion-MNIST (6,000), and a broad
    /// concept's member classes appear equally often, so its modes are equally weighted.
    pub fn batch(&self, rng: &mut Rng, n: usize) -> (Tensor, Vec<usize>) {
        let mut classes = Vec::with_capacity(n);
        let mut indices = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.below(NUM_CLASSES);
            classes.push(class);
            indices.push(*rng.choose(&self.by_class[class]));
        }
        (to_unit_range(&self.pixels.index_select(0, &Tensor::from_slice(&indices))), classes)
    }
}

/// Bytes 0..=255 to f32 -1..=1.
fn to_unit_range(pixels: &Tensor) -> Tensor {
    pixels.to_kind(Kind::Float) / 127.5 - 1.0
}
