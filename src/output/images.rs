//! Image tensors to PNG files: single images, grids, and text chunks carrying the run's parameters.
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Encodes one image [C,H,W] with values in [0,1] (C = 1 or 3) as PNG bytes, with `text` as tEXt chunks.
pub fn png_bytes(image: &Tensor, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let size = image.size();
    let (channels, height, width) = match size.as_slice() {
        [c @ (1 | 3), h, w] => (*c, *h, *w),
        _ => bail!("cannot write an image of shape {size:?} as PNG (need [1 or 3, H, W])"),
    };
    let pixels = (image.to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0).round().to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous();
    let data = Vec::<u8>::try_from(pixels.flatten(0, -1))?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
        encoder.set_color(if channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
        encoder.set_depth(png::BitDepth::Eight);
        for (key, value) in text {
            encoder.add_text_chunk(key.to_string(), value.clone())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&data)?;
    }
    Ok(out)
}

/// Tiles images [N,C,H,W] into one image, `columns` wide, with a 2-pixel white gutter. Tiles are shrunk by an
/// integer factor (area average) so the grid is at most `max_width` pixels wide.
pub fn grid(images: &Tensor, columns: i64, max_width: i64) -> Tensor {
    let (n, c, h, w) = images.size4().unwrap();
    let columns = columns.clamp(1, n.max(1));
    let shrink = ((columns * w) as f64 / max_width as f64).ceil().max(1.0) as i64;
    let images = if shrink > 1 { images.avg_pool2d([shrink, shrink], [shrink, shrink], [0, 0], false, true, None::<i64>) } else { images.shallow_clone() };
    let (th, tw) = (h / shrink, w / shrink);
    let rows = (n + columns - 1) / columns;
    let gap = 2;
    let canvas = Tensor::ones([c, rows * (th + gap) - gap, columns * (tw + gap) - gap], (Kind::Float, tch::Device::Cpu));
    for i in 0..n {
        let (r, col) = (i / columns, i % columns);
        canvas.narrow(1, r * (th + gap), th).narrow(2, col * (tw + gap), tw).copy_(&images.get(i));
    }
    canvas
}

/// Images [N,C,H,W] enlarged by whole pixels (nearest neighbour) until they are at least `min_side` high, so
/// small images (the embedded model's 32x32) are visible in a figure; larger images are returned unchanged.
pub fn enlarge_to(images: &Tensor, min_side: i64) -> Tensor {
    let (_, _, h, w) = images.size4().unwrap();
    let factor = (min_side + h - 1) / h.max(1);
    if factor <= 1 {
        return images.shallow_clone();
    }
    images.upsample_nearest2d([h * factor, w * factor], None, None)
}

/// A grid roughly square in shape.
pub fn square_grid(images: &Tensor, max_width: i64) -> Tensor {
    let n = images.size()[0];
    grid(images, (n as f64).sqrt().ceil() as i64, max_width)
}
