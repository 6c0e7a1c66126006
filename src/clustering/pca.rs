//! Principal component analysis: the few directions along which feature vectors vary most, so a mixture with
//! full covariances can be fitted where a few hundred samples can estimate it (not in CLIP's 768 dimensions).
use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// The strongest principal components of a set of features, and the features in their coordinates.
pub struct Pca {
    /// Unit principal axes [d, D], strongest first; each row's largest-magnitude entry is positive.
    pub components: Tensor,
    /// The centred features projected on the axes [N, d] (f64, CPU).
    pub projection: Tensor,
    /// Share of the total variance each axis explains.
    pub explained_variance: Vec<f64>,
}

/// Fits `dims` components to features [N, D] of any kind and device, capped at min(D, N - 1): N centred points
/// span at most N - 1 directions. Works in f64 on the CPU, so the result does not depend on where the features were.
pub fn fit(features: &Tensor, dims: usize) -> Result<Pca> {
    let shape = features.size();
    ensure!(shape.len() == 2, "PCA needs features [N, D], got shape {shape:?}");
    let (samples, width) = (shape[0] as usize, shape[1] as usize);
    ensure!(samples >= 2, "PCA needs at least 2 samples, got {samples}");
    ensure!(dims >= 1, "PCA needs at least 1 dimension, got {dims}");
    let x = features.to_device(Device::Cpu).to_kind(Kind::Double);
    ensure!(bool::try_from(x.isfinite().all())?, "the features contain NaN or infinite values");
    let centred = &x - x.mean_dim(0, true, Kind::Double);
    // Not `linalg_svd`: tch passes it an empty driver name, which libtorch rejects on the CPU.
    let (_, singular, axes) = centred.svd(true, true);
    let dims = dims.min(width).min(samples - 1);
    let axes = axes.narrow(1, 0, dims as i64).tr();
    // SVD fixes each axis only up to its sign, which LAPACK may choose differently from run to run or machine to
    // machine; pinning it keeps projections, and so everything fitted on them, reproducible.
    let strongest = axes.abs().argmax(1, true);
    let components = &axes * axes.gather(1, &strongest, false).sign();
    let projection = centred.matmul(&components.tr());
    let variance = Vec::<f64>::try_from(singular.square())?;
    let total: f64 = variance.iter().sum();
    // Identical features have no variance to share out; call every share zero rather than 0 / 0.
    let explained_variance = variance[..dims].iter().map(|v| if total > 0.0 { v / total } else { 0.0 }).collect();
    Ok(Pca { components, projection, explained_variance })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clustering::tests::normal;
    use crate::data::Rng;

    /// `n` points spread along a random direction of `dims`-space, with a little isotropic noise; and the direction.
    fn points_on_a_line(n: usize, dims: usize, seed: u64) -> (Tensor, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let direction: Vec<f64> = (0..dims).map(|_| normal(&mut rng)).collect();
        let norm = direction.iter().map(|v| v * v).sum::<f64>().sqrt();
        let direction: Vec<f64> = direction.iter().map(|v| v / norm).collect();
        let mut values = Vec::with_capacity(n * dims);
        for _ in 0..n {
            let t = 5.0 * normal(&mut rng);
            values.extend(direction.iter().map(|v| 3.0 + t * v + 0.01 * normal(&mut rng)));
        }
        (Tensor::from_slice(&values).view([n as i64, dims as i64]), direction)
    }

    #[test]
    fn a_line_is_one_component_along_it() {
        let (points, direction) = points_on_a_line(200, 10, 1);
        let pca = fit(&points.to_kind(Kind::Float), 3).unwrap();
        assert_eq!(pca.projection.size(), [200, 3]);
        assert!(pca.explained_variance[0] > 0.99, "{:?}", pca.explained_variance);
        let first = Vec::<f64>::try_from(pca.components.get(0)).unwrap();
        let cosine: f64 = first.iter().zip(&direction).map(|(a, b)| a * b).sum();
        assert!(cosine.abs() > 0.999, "cosine {cosine}");
    }

    #[test]
    fn components_are_capped_at_samples_minus_one() {
        let (points, _) = points_on_a_line(5, 10, 2);
        let pca = fit(&points, 8).unwrap();
        assert_eq!(pca.projection.size(), [5, 4]);
        assert_eq!(pca.explained_variance.len(), 4);
        // Four directions hold all the variance of five points.
        let total: f64 = pca.explained_variance.iter().sum();
        // A float64 SVD (LAPACK, whose blocking differs between CPUs): rounding near 1e-15 of these O(1) values.
        assert!((total - 1.0).abs() < 1e-9, "total {total}");
    }

    #[test]
    fn component_signs_do_not_depend_on_the_data_sign() {
        let (points, _) = points_on_a_line(50, 6, 3);
        let (a, b) = (fit(&points, 3).unwrap(), fit(&-&points, 3).unwrap());
        // Two float64 SVDs of X and -X: equal to their rounding, near 1e-15 of these O(1) values.
        assert!(a.components.allclose(&b.components, 1e-9, 1e-9, false));
        assert!(a.projection.allclose(&-b.projection, 1e-9, 1e-9, false));
    }
}
