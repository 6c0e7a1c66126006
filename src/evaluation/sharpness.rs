//! Sharpness as a number: the variance of an image's Laplacian, the usual focus measure. Fine detail (edges,
//! texture) raises it; blur, such as the pixel average of many samples, lowers it. Colour images are measured on
//! their mean over channels.
use tch::{Kind, Tensor};

/// The variance of the 3x3 Laplacian of each image [N,C,H,W] with values in [0,1], over the image's interior
/// (no padding, so the border adds no edges of its own).
pub fn laplacian_variance(images: &Tensor) -> Vec<f64> {
    let gray = images.to_kind(Kind::Float).mean_dim(1, true, Kind::Float);
    let kernel = Tensor::from_slice(&[0f32, 1., 0., 1., -4., 1., 0., 1., 0.]).view([1, 1, 3, 3]).to_device(gray.device());
    let laplacian = gray.conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    Vec::<f64>::try_from(laplacian.flatten(1, -1).var_dim(1, false, false).to_kind(Kind::Double)).expect("a 1-D tensor")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn a_flat_image_has_no_sharpness_and_blur_lowers_it() {
        let flat = Tensor::full([1, 1, 16, 16], 0.5, (Kind::Float, Device::Cpu));
        assert_eq!(laplacian_variance(&flat), vec![0.0]);
        // A checkerboard of 1-pixel squares: every interior Laplacian is +-4, so the variance is 16.
        let rows = Tensor::arange(16, (Kind::Float, Device::Cpu)).view([16, 1]);
        let board = ((&rows + rows.view([1, 16])).remainder(2.0)).view([1, 1, 16, 16]);
        let sharp = laplacian_variance(&board)[0];
        // Small integers throughout (0/1 pixels, a -4/1 kernel, 98 values of +4 and 98 of -4): exact in float32.
        assert!((sharp - 16.0).abs() < 1e-9, "{sharp}");
        let blurred = board.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>);
        let soft = laplacian_variance(&blurred)[0];
        assert!(soft < sharp / 4.0, "blur should lower the sharpness: {soft} vs {sharp}");
    }

    #[test]
    fn each_image_is_measured_on_its_own() {
        let noise = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let flat = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let both = laplacian_variance(&Tensor::cat(&[&noise, &flat], 0));
        assert_eq!(both.len(), 2);
        // A flat image's Laplacian is 0 - 0 exactly.
        assert!(both[0] > 0.0 && both[1] == 0.0, "{both:?}");
        // Alone or in a batch of two: a convolution may pick another kernel for another batch size, which sums the
        // 9 taps in another order; a few float32 ulps of the variance.
        let alone = laplacian_variance(&noise)[0];
        assert!((both[0] - alone).abs() <= 8.0 * f32::EPSILON as f64 * alone, "{} alone, {} in a batch", alone, both[0]);
    }
}
