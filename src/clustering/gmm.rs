//! A Gaussian mixture with full covariances, fitted by expectation-maximisation from k-means starts, with
//! scikit-learn's `GaussianMixture` regularisation, tolerance and BIC, so results can be checked against it.
use crate::data::Rng;
use anyhow::{Context, Result};
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// Added to every covariance's diagonal, so a component on (nearly) coplanar points stays invertible.
const REG_COVAR: f64 = 1e-6;
/// EM stops when the mean log-likelihood per sample changes by less than this.
const TOL: f64 = 1e-3;
/// EM iterations at most, converged or not.
const MAX_ITER: usize = 200;
/// EM finds a local optimum; restarting from other k-means++ seeds and keeping the best makes a poor one unlikely.
const N_INIT: usize = 5;
/// Lloyd iterations that refine each k-means++ seeding before EM.
const LLOYD_ITERS: usize = 10;

/// A fitted mixture of k Gaussians in d dimensions (f64, CPU).
pub struct Mixture {
    /// Mixing weights [k].
    pub weights: Tensor,
    /// Means [k, d].
    pub means: Tensor,
    /// Covariances [k, d, d], `REG_COVAR` included.
    pub covariances: Tensor,
}

impl Mixture {
    /// The maximum-likelihood mixture for soft assignments `responsibilities` [N, k] of `points` [N, d] (EM's M-step).
    fn from_responsibilities(points: &Tensor, responsibilities: &Tensor) -> Self {
        let (samples, dims) = (points.size()[0], points.size()[1]);
        // As scikit-learn: a tiny floor keeps an emptied component's mean finite instead of 0 / 0.
        let counts = responsibilities.sum_dim_intlist(0, false, Kind::Double) + 10.0 * f64::EPSILON;
        let means = responsibilities.tr().matmul(points) / counts.unsqueeze(1);
        let centred = points.unsqueeze(0) - means.unsqueeze(1);
        let weighted = &centred * responsibilities.tr().unsqueeze(2);
        let covariances = weighted.transpose(1, 2).matmul(&centred) / counts.view([-1, 1, 1])
            + Tensor::eye(dims, (Kind::Double, Device::Cpu)) * REG_COVAR;
        Self { weights: counts / samples as f64, means, covariances }
    }

    /// Each point's log-density [N] and log-posterior of each component [N, k] (EM's E-step).
    fn log_posteriors(&self, points: &Tensor) -> Result<(Tensor, Tensor)> {
        let dims = points.size()[1] as f64;
        let cholesky = self.covariances.f_linalg_cholesky(false).context("a covariance is not positive definite")?;
        // With covariance L L^T, the Mahalanobis distance is |L^-1 (x - mean)|^2 and ln det is 2 sum ln diag L.
        let centred = points.unsqueeze(0) - self.means.unsqueeze(1);
        let whitened = cholesky.linalg_solve_triangular(&centred.transpose(1, 2), false, true, false);
        let mahalanobis = whitened.square().sum_dim_intlist(1, false, Kind::Double);
        let log_det = cholesky.diagonal(0, 1, 2).log().sum_dim_intlist(1, false, Kind::Double) * 2.0;
        let log_gaussian = (mahalanobis + log_det.unsqueeze(1) + dims * (2.0 * PI).ln()) * -0.5;
        let log_joint = log_gaussian.tr() + self.weights.log();
        let log_density = log_joint.logsumexp(1, true);
        Ok((log_density.squeeze_dim(1), log_joint - log_density))
    }

    /// Each point's posterior probability of each component [N, k].
    pub fn posteriors(&self, points: &Tensor) -> Result<Tensor> {
        Ok(self.log_posteriors(points)?.1.exp())
    }

    /// The log-likelihood of all of `points` [N, d].
    pub fn log_likelihood(&self, points: &Tensor) -> Result<f64> {
        Ok(self.log_posteriors(points)?.0.sum(Kind::Double).double_value(&[]))
    }

    /// The Bayesian information criterion on `points` (lower is better): -2 ln L + free parameters * ln N.
    pub fn bic(&self, points: &Tensor) -> Result<f64> {
        let (k, dims) = (self.means.size()[0] as usize, self.means.size()[1] as usize);
        let samples = points.size()[0] as f64;
        Ok(-2.0 * self.log_likelihood(points)? + free_parameters(k, dims) as f64 * samples.ln())
    }
}

/// Free parameters of a k-component full-covariance mixture in d dimensions: means, symmetric covariances and
/// weights (which sum to 1), counted as scikit-learn's `bic` does.
pub fn free_parameters(k: usize, dims: usize) -> usize {
    k * dims + k * dims * (dims + 1) / 2 + (k - 1)
}

/// Fits a k-component mixture to `points` [N, d] (f64, CPU): `N_INIT` restarts, each EM from a k-means start,
/// keeping the one with the highest log-likelihood. A restart whose covariance degenerates is dropped; the fit
/// fails only if all do.
pub fn fit(points: &Tensor, k: usize, rng: &mut Rng) -> Result<Mixture> {
    let mut best: Option<(Mixture, f64)> = None;
    let mut failure = None;
    for _ in 0..N_INIT {
        let start = kmeans(points, k, rng).one_hot(k as i64).to_kind(Kind::Double);
        match expectation_maximisation(points, Mixture::from_responsibilities(points, &start)) {
            Ok((mixture, ll)) if best.as_ref().is_none_or(|(_, best_ll)| ll > *best_ll) => best = Some((mixture, ll)),
            Ok(_) => {}
            Err(error) => failure = Some(error),
        }
    }
    match best {
        Some((mixture, _)) => Ok(mixture),
        None => Err(failure.expect("N_INIT > 0").context(format!("every fit of {k} Gaussians degenerated"))),
    }
}

/// EM from `mixture` until the mean log-likelihood per sample settles; the mixture and its log-likelihood.
fn expectation_maximisation(points: &Tensor, mut mixture: Mixture) -> Result<(Mixture, f64)> {
    let mut previous = f64::NEG_INFINITY;
    for _ in 0..MAX_ITER {
        let (log_density, log_posteriors) = mixture.log_posteriors(points)?;
        let mean_ll = log_density.mean(Kind::Double).double_value(&[]);
        mixture = Mixture::from_responsibilities(points, &log_posteriors.exp());
        if (mean_ll - previous).abs() < TOL {
            break;
        }
        previous = mean_ll;
    }
    let ll = mixture.log_likelihood(points)?;
    Ok((mixture, ll))
}

/// Each point's cluster [N] (int64) after k-means++ seeding (each new centre a point drawn with probability
/// proportional to its squared distance from the nearest centre so far) and `LLOYD_ITERS` Lloyd iterations.
fn kmeans(points: &Tensor, k: usize, rng: &mut Rng) -> Tensor {
    let samples = points.size()[0];
    let mut centres = points.narrow(0, rng.below(samples as usize) as i64, 1);
    while centres.size()[0] < k as i64 {
        let cumulative = squared_distances(points, &centres).min_dim(1, false).0.cumsum(0, Kind::Double);
        let target = rng.uniform() * cumulative.double_value(&[samples - 1]);
        // The first point whose cumulative weight passes the target; the clamp matters only when every point
        // already sits on a centre (total weight 0), and then any point will do.
        let chosen = cumulative.le(target).sum(Kind::Int64).int64_value(&[]).min(samples - 1);
        centres = Tensor::cat(&[centres, points.narrow(0, chosen, 1)], 0);
    }
    let mut labels = squared_distances(points, &centres).argmin(1, false);
    for _ in 0..LLOYD_ITERS {
        let members = labels.one_hot(k as i64).to_kind(Kind::Double);
        let counts = members.sum_dim_intlist(0, false, Kind::Double).unsqueeze(1);
        // A centre left without members stays where it was.
        centres = (members.tr().matmul(points) / counts.clamp_min(1.0)).where_self(&counts.gt(0.0), &centres);
        let next = squared_distances(points, &centres).argmin(1, false);
        if next.equal(&labels) {
            break;
        }
        labels = next;
    }
    labels
}

/// Squared Euclidean distances [N, k] from points [N, d] to centres [k, d].
fn squared_distances(points: &Tensor, centres: &Tensor) -> Tensor {
    (points.unsqueeze(1) - centres.unsqueeze(0)).square().sum_dim_intlist(2, false, Kind::Double)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clustering::tests::{normal, purity};

    fn labels_of(assignment: &Tensor) -> Vec<usize> {
        Vec::<i64>::try_from(assignment).unwrap().into_iter().map(|l| l as usize).collect()
    }

    #[test]
    fn bic_of_one_gaussian_matches_the_closed_form() {
        let points = Tensor::from_slice(&[0.0f64, 1.0, 5.0]).view([3, 1]);
        let mixture = fit(&points, 1, &mut Rng::new(0)).unwrap();
        // The ML Gaussian: mean 2, variance (4 + 1 + 9) / 3, plus the regularisation.
        let variance = 14.0 / 3.0 + REG_COVAR;
        let ll = -1.5 * (2.0 * PI * variance).ln() - 14.0 / (2.0 * variance);
        let parameters = 2.0; // a mean and a variance; one weight is fixed at 1
        let expected = -2.0 * ll + parameters * 3f64.ln();
        let bic = mixture.bic(&points).unwrap();
        // float64 on three points: rounding about 1e-15 of the BIC's magnitude (about 10).
        assert!((bic - expected).abs() < 1e-9, "bic {bic}, expected {expected}");
        assert_eq!(free_parameters(3, 2), 17);
    }

    #[test]
    fn full_covariances_separate_parallel_stripes_that_kmeans_splits_across() {
        // Two long thin stripes side by side, rotated 45 degrees so their axes are correlated: the nearest-centre
        // split of k-means cuts across both, while each stripe is exactly one Gaussian.
        let mut rng = Rng::new(5);
        let (mut values, mut truth) = (Vec::new(), Vec::new());
        for i in 0..400 {
            let stripe = i % 2;
            let along = 10.0 * normal(&mut rng);
            let across = 0.3 * normal(&mut rng) + 4.0 * stripe as f64 - 2.0;
            values.extend([(along - across) / 2f64.sqrt(), (along + across) / 2f64.sqrt()]);
            truth.push(stripe);
        }
        let points = Tensor::from_slice(&values).view([400, 2]);
        let kmeans_purity = purity(&labels_of(&kmeans(&points, 2, &mut Rng::new(0))), &truth);
        assert!(kmeans_purity < 0.8, "k-means purity {kmeans_purity}");
        let mixture = fit(&points, 2, &mut Rng::new(0)).unwrap();
        let labels = labels_of(&mixture.posteriors(&points).unwrap().argmax(1, false));
        assert_eq!(purity(&labels, &truth), 1.0);
    }
}
