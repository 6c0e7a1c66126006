//! The silhouette (Rousseeuw 1987) of a partition: for each point, how much nearer it is, on average, to the
//! members of its own cluster (a) than to those of the nearest other cluster (b), as (b - a) / max(a, b); the
//! partition's score is the mean over points, from -1 to 1. Unlike a mixture's likelihood, it does not grow with
//! components that carve a non-Gaussian cluster into pieces, so it says how many well-separated groups there are.
use tch::{Kind, Tensor};

/// The mean silhouette of `labels` on `points` [N, d] (f64, CPU), by Euclidean distance, as scikit-learn's
/// `silhouette_score`: a point alone in its cluster scores 0, and empty clusters are ignored. None when fewer than
/// two clusters have members (the silhouette needs another cluster to compare with).
pub fn mean_silhouette(points: &Tensor, labels: &[usize]) -> Option<f64> {
    let clusters = labels.iter().max()? + 1;
    let members = Tensor::from_slice(&labels.iter().map(|&l| l as i64).collect::<Vec<_>>()).one_hot(clusters as i64).to_kind(Kind::Double);
    let sizes = Vec::<f64>::try_from(members.sum_dim_intlist(0, false, Kind::Double)).ok()?;
    if sizes.iter().filter(|&&n| n > 0.0).count() < 2 {
        return None;
    }
    // Summed distances from each point to each cluster's members [N, clusters]; compute mode 2 takes exact
    // differences rather than the faster |x|^2 + |y|^2 - 2xy, whose rounding would make near points' distances noise.
    let to_cluster = Vec::<Vec<f64>>::try_from(Tensor::cdist(points, points, 2.0, Some(2)).matmul(&members)).ok()?;
    let total: f64 = labels
        .iter()
        .zip(&to_cluster)
        .map(|(&own, sums)| {
            if sizes[own] < 2.0 {
                return 0.0;
            }
            // The point's distance to itself is 0, so its own cluster's mean leaves it out of the count.
            let a = sums[own] / (sizes[own] - 1.0);
            let b = (0..clusters).filter(|&c| c != own && sizes[c] > 0.0).map(|c| sums[c] / sizes[c]).fold(f64::INFINITY, f64::min);
            if a.max(b) > 0.0 { (b - a) / a.max(b) } else { 0.0 }
        })
        .sum();
    Some(total / labels.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(xy: &[[f64; 2]]) -> Tensor {
        Tensor::from_slice(&xy.concat()).view([xy.len() as i64, 2])
    }

    #[test]
    fn matches_scikit_learn_on_a_small_case() {
        // sklearn.metrics.silhouette_score(X, labels) on these points is 0.6798851146 (scikit-learn 1.9.1).
        let x = points(&[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0], [6.0, 5.0], [5.0, 7.0], [2.5, 2.5]]);
        let score = mean_silhouette(&x, &[0, 0, 0, 1, 1, 1, 0]).unwrap();
        // The reference is printed to 10 decimals (within 5e-11); float64 arithmetic adds about 1e-16.
        assert!((score - 0.6798851146).abs() < 1e-9, "{score}");
    }

    #[test]
    fn singletons_score_zero_and_one_cluster_has_none() {
        // Two points 1 apart in one cluster, a third alone: the pair's members score (10 - 1) / 10 and
        // (9 - 1) / 9, the singleton 0.
        let x = points(&[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]]);
        let score = mean_silhouette(&x, &[0, 0, 1]).unwrap();
        let pair = [(10.0 - 1.0) / 10.0, (9.0 - 1.0) / 9.0];
        // float64 on three points: rounding about 1e-16.
        assert!((score - (pair[0] + pair[1]) / 3.0).abs() < 1e-12, "{score}");
        assert_eq!(mean_silhouette(&x, &[0, 0, 0]), None);
        // An empty cluster (label 1 unused) is ignored rather than counted as infinitely far.
        assert_eq!(mean_silhouette(&x, &[0, 0, 2]), Some(score));
    }

    #[test]
    fn a_wrong_split_scores_lower_than_the_right_one() {
        let x = points(&[[0.0, 0.0], [0.0, 1.0], [9.0, 0.0], [9.0, 1.0]]);
        let right = mean_silhouette(&x, &[0, 0, 1, 1]).unwrap();
        let wrong = mean_silhouette(&x, &[0, 1, 0, 1]).unwrap();
        assert!(right > 0.8 && wrong < 0.0, "{right} {wrong}");
    }
}
