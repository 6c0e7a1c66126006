//! Fashion-MNIST as published: four IDX files (gzipped, as Debian's `dataset-fashion-mnist` ships them; plain
//! files are read too), 60,000 training and 10,000 test images of 28x28 bytes, labels 0-9.
//!
//! IDX: a big-endian u32 magic (0x0000_08NN: unsigned bytes, NN dimensions), NN big-endian u32 sizes, the data.
use super::{RawImages, Split, SETUP_HINT, SOURCE_SIDE};
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The folder under the data folder where scripts/setup_data.sh puts the files.
pub const SUBDIR: &str = "fashion-mnist";

/// The split's images and labels from `dir` (the `fashion-mnist` folder).
pub fn load(dir: &Path, split: Split) -> Result<RawImages> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (image_dims, pixels) = read_idx(&images_path, 3)?;
    let (label_dims, labels) = read_idx(&labels_path, 1)?;
    ensure!(
        image_dims[1..] == [SOURCE_SIDE, SOURCE_SIDE],
        "{}: images are {}x{}, not {SOURCE_SIDE}x{SOURCE_SIDE}",
        images_path.display(),
        image_dims[1],
        image_dims[2]
    );
    ensure!(
        image_dims[0] == label_dims[0],
        "{} holds {} images but {} holds {} labels",
        images_path.display(),
        image_dims[0],
        labels_path.display(),
        label_dims[0]
    );
    if let Some(n) = labels.iter().position(|&l| l > 9) {
        bail!("{}: label {n} is {}, outside 0-9", labels_path.display(), labels[n]);
    }
    Ok(RawImages { pixels, labels })
}

/// The gzipped file, else the plain one.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    [gz.clone(), plain]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no Fashion-MNIST file {} (nor without .gz): {SETUP_HINT}", gz.display()))
}

/// An IDX file of unsigned bytes with `rank` dimensions: (sizes, data). Gzip is recognised by its magic bytes.
fn read_idx(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}: {SETUP_HINT}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * rank;
    ensure!(bytes.len() >= header, "{}: truncated IDX header ({} bytes)", path.display(), bytes.len());
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes")) as usize;
    let magic = word(0);
    ensure!(
        magic == 0x0800 + rank,
        "{}: bad IDX magic {magic:#010x}, expected {:#010x} (unsigned bytes, {rank} dimensions)",
        path.display(),
        0x0800 + rank
    );
    let dims: Vec<usize> = (1..=rank).map(word).collect();
    let expected = dims.iter().product::<usize>();
    let data = &bytes[header..];
    ensure!(
        data.len() >= expected,
        "{}: truncated: sizes {dims:?} need {expected} bytes of data, the file holds {}",
        path.display(),
        data.len()
    );
    ensure!(
        data.len() == expected,
        "{}: {} bytes after the data of sizes {dims:?}",
        path.display(),
        data.len() - expected
    );
    Ok((dims, data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| out.extend(d.to_be_bytes()));
        out.extend(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn reads_plain_and_gzipped_files() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..2 * 28 * 28).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("t10k-images-idx3-ubyte.gz"), gzip(&idx(0x803, &[2, 28, 28], &pixels))).unwrap();
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), idx(0x801, &[2], &[3, 9])).unwrap();
        let set = load(dir.path(), Split::Test).unwrap();
        assert_eq!(set.pixels, pixels);
        assert_eq!(set.labels, [3, 9]);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load(dir.path(), Split::Train).err().unwrap());
        assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("setup_data.sh"), "{err}");

        let images = dir.path().join("train-images-idx3-ubyte");
        std::fs::write(&images, idx(0x801, &[1, 28, 28], &[0; 784])).unwrap();
        let err = format!("{:#}", read_idx(&images, 3).err().unwrap());
        assert!(err.contains("train-images-idx3-ubyte: bad IDX magic 0x00000801"), "{err}");

        std::fs::write(&images, idx(0x803, &[2, 28, 28], &[0; 784])).unwrap();
        let err = format!("{:#}", read_idx(&images, 3).err().unwrap());
        assert!(err.contains("train-images-idx3-ubyte: truncated"), "{err}");

        let gz = gzip(&idx(0x803, &[1, 28, 28], &[0; 784]));
        std::fs::write(&images, &gz[..gz.len() / 2]).unwrap();
        let err = format!("{:#}", read_idx(&images, 3).err().unwrap());
        assert!(err.contains("train-images-idx3-ubyte: corrupt gzip"), "{err}");
    }
}
