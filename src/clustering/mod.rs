//! Finding the modes of a multimodal concept, as the paper does: embed the generated images, reduce the embeddings
//! with PCA, fit a Gaussian mixture with full covariances; the number of clusters is chosen by the silhouette of
//! the mixtures' clusters (BIC, the paper's choice, on request; see `Criterion`).
//!
//! - `pca`: the principal components and the features projected on them.
//! - `gmm`: the mixture, fitted by EM from k-means starts, and its BIC.
//! - `silhouette`: how well separated a partition's clusters are.
pub mod gmm;
pub mod pca;
pub mod silhouette;

use crate::data::Rng;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::cmp::Reverse;
use tch::Tensor;

/// How many clusters: a fixed number, or chosen by BIC among 1..=max. Written as the flag's text ("auto:8", "3").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClusterCount {
    Auto { max: usize },
    Fixed(usize),
}

impl std::fmt::Display for ClusterCount {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Self::Auto { max } => write!(f, "auto:{max}"),
            Self::Fixed(k) => write!(f, "{k}"),
        }
    }
}

impl Serialize for ClusterCount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClusterCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl ClusterCount {
    /// "auto" (BIC among 1..=8), "auto:N" (among 1..=N), or a positive integer; anything else is an error naming
    /// the value (for a CLI flag `--clusters`).
    pub fn parse(text: &str) -> Result<Self> {
        let positive = |t: &str| t.parse::<usize>().ok().filter(|&k| k > 0);
        let count = match text.strip_prefix("auto") {
            Some("") => Some(Self::Auto { max: 8 }),
            Some(max) => max.strip_prefix(':').and_then(positive).map(|max| Self::Auto { max }),
            None => positive(text).map(Self::Fixed),
        };
        count.with_context(|| format!("--clusters must be \"auto\", \"auto:N\" or a positive integer, got {text:?}"))
    }

    /// Fails with one clear message when the count cannot be fitted to `samples` points (more clusters than
    /// samples, zero clusters, fewer than 2 samples), so a CLI can check before any long work.
    pub fn validate(&self, samples: usize) -> Result<()> {
        if samples < 2 {
            bail!("clustering needs at least 2 samples, got {samples}");
        }
        match *self {
            Self::Auto { max: 0 } | Self::Fixed(0) => bail!("the number of clusters must be at least 1"),
            Self::Fixed(k) if k > samples => bail!("--clusters {k} is more than the {samples} samples"),
            _ => Ok(()),
        }
    }
}

/// How `ClusterCount::Auto` chooses the number of clusters among the mixtures it fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// One cluster when BIC prefers a single Gaussian to every mixture; otherwise the k >= 2 whose clusters have
    /// the highest mean silhouette. A mixture's likelihood keeps rising as components carve a curved or skewed
    /// cluster into pieces, so BIC alone over-counts: on the embedded CLIP's embeddings of real Fashion-MNIST
    /// footwear (three classes) it finds 4 to 7 clusters, the silhouette 3 (BENCHMARKS.md, "Modes of a concept").
    Silhouette,
    /// The lowest BIC, as the paper.
    Bic,
}

/// The samples' clusters, and what the choice of their number was based on.
#[derive(Clone, Debug, Serialize)]
pub struct Clustering {
    /// The number of clusters, fixed or chosen.
    pub k: usize,
    /// Each sample's cluster; clusters are numbered by size, largest first (ties by lowest first member), so
    /// results do not depend on the mixture's internal order.
    pub labels: Vec<usize>,
    /// Members of each cluster, so in descending order.
    pub sizes: Vec<usize>,
    /// What chose k (None for a fixed count).
    pub criterion: Option<Criterion>,
    /// (k, BIC) for every k fitted (one entry for a fixed count); lower is better. Auto leaves out a k whose fit
    /// has a cluster of at most `pca_dims` members: its covariance is singular but for the regularisation, which
    /// makes its likelihood, and so its BIC, meaningless.
    pub bic: Vec<(usize, f64)>,
    /// (k, mean silhouette) for the same fits with two clusters or more; higher is better.
    pub silhouette: Vec<(usize, f64)>,
    /// Dimensions the mixture was fitted in, after capping.
    pub pca_dims: usize,
    /// Share of the variance each kept principal component explains.
    pub explained_variance: Vec<f64>,
    /// Each sample's posterior probability of its cluster.
    pub confidence: Vec<f64>,
}

impl Clustering {
    /// A clustering known only by its assignment of samples to `k` clusters (what the ranks other than 0 of a run
    /// are told), without the figures of how it was found.
    pub fn assignment(k: usize, labels: Vec<usize>) -> Self {
        let sizes = (0..k).map(|c| labels.iter().filter(|&&l| l == c).count()).collect();
        Self { k, labels, sizes, criterion: None, bic: Vec::new(), silhouette: Vec::new(), pca_dims: 0, explained_variance: Vec::new(), confidence: Vec::new() }
    }
}

/// PCA to `pca_dims` dimensions (capped at min(D, N-1)), then a GMM per k, the best of several seeded restarts,
/// and k chosen by `criterion` when the count is auto. Features [N, D] may be of any kind and on any device.
pub fn cluster(features: &Tensor, count: ClusterCount, criterion: Criterion, pca_dims: usize, seed: u64) -> Result<Clustering> {
    let pca = pca::fit(features, pca_dims)?;
    let points = &pca.projection;
    let samples = points.size()[0] as usize;
    count.validate(samples)?;
    let pca_dims = pca.explained_variance.len();
    let fits = match count {
        ClusterCount::Fixed(k) => vec![fit_count(points, k, seed).with_context(|| format!("fitting {k} clusters"))?],
        ClusterCount::Auto { max } => (1..=max.min(samples))
            .filter_map(|k| fit_count(points, k, seed).ok())
            .filter(|fit| fit.sizes.iter().all(|&size| size > pca_dims))
            .collect(),
    };
    let bic = fits.iter().map(|fit| (fit.sizes.len(), fit.bic)).collect();
    let silhouette: Vec<(usize, f64)> = fits.iter().filter_map(|fit| Some((fit.sizes.len(), fit.silhouette?))).collect();
    // One cluster is always fitted and kept (N > pca_dims after capping), so there is a best; ties go to fewer.
    let lowest_bic = fits.iter().enumerate().min_by(|a, b| a.1.bic.total_cmp(&b.1.bic)).map(|(i, _)| i).expect("k = 1 is always supported");
    let chosen = match count {
        ClusterCount::Auto { .. } if criterion == Criterion::Silhouette && fits[lowest_bic].sizes.len() > 1 => fits
            .iter()
            .enumerate()
            .filter_map(|(i, fit)| Some((i, fit.silhouette?)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map_or(lowest_bic, |(i, _)| i),
        _ => lowest_bic,
    };
    let best = fits.into_iter().nth(chosen).expect("chosen among the fits");
    Ok(Clustering {
        k: best.sizes.len(),
        labels: best.labels,
        sizes: best.sizes,
        criterion: matches!(count, ClusterCount::Auto { .. }).then_some(criterion),
        bic,
        silhouette,
        pca_dims,
        explained_variance: pca.explained_variance,
        confidence: best.confidence,
    })
}

/// One k's mixture, as hard clusters numbered by size.
struct Fit {
    bic: f64,
    silhouette: Option<f64>,
    labels: Vec<usize>,
    sizes: Vec<usize>,
    confidence: Vec<f64>,
}

/// Fits k Gaussians to `points` [N, d]. Each k draws from its own generator, so its fit is the same whichever
/// other counts are tried.
fn fit_count(points: &Tensor, k: usize, seed: u64) -> Result<Fit> {
    let mixture = gmm::fit(points, k, &mut Rng::new(seed.wrapping_add(k as u64)))?;
    let (confidence, labels) = mixture.posteriors(points)?.max_dim(1, false);
    let labels: Vec<usize> = Vec::<i64>::try_from(labels)?.into_iter().map(|l| l as usize).collect();
    let (labels, sizes) = number_by_size(&labels, k);
    let silhouette = silhouette::mean_silhouette(points, &labels);
    Ok(Fit { bic: mixture.bic(points)?, silhouette, labels, sizes, confidence: Vec::<f64>::try_from(confidence)? })
}

/// Renumbers clusters 0..k by size, largest first, ties by lowest first member; the new labels and the sizes.
fn number_by_size(labels: &[usize], k: usize) -> (Vec<usize>, Vec<usize>) {
    let mut sizes = vec![0; k];
    let mut first_member = vec![usize::MAX; k];
    for (i, &label) in labels.iter().enumerate() {
        sizes[label] += 1;
        first_member[label] = first_member[label].min(i);
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| (Reverse(sizes[c]), first_member[c]));
    let mut renumbered = vec![0; k];
    for (rank, &c) in order.iter().enumerate() {
        renumbered[c] = rank;
    }
    (labels.iter().map(|&l| renumbered[l]).collect(), order.iter().map(|&c| sizes[c]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// A standard normal draw (Box-Muller), from the project's seeded generator rather than libtorch's global one.
    pub(super) fn normal(rng: &mut Rng) -> f64 {
        // 1 - uniform is in (0, 1], so its logarithm is finite.
        (-2.0 * (1.0 - rng.uniform()).ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.uniform()).cos()
    }

    /// Share of samples whose cluster's most common true class is their own: 1 when every cluster is pure.
    pub(super) fn purity(labels: &[usize], truth: &[usize]) -> f64 {
        let clusters = labels.iter().max().map_or(0, |m| m + 1);
        let classes = truth.iter().max().map_or(0, |m| m + 1);
        let mut counts = vec![vec![0usize; classes]; clusters];
        for (&l, &t) in labels.iter().zip(truth) {
            counts[l][t] += 1;
        }
        counts.iter().map(|row| row.iter().max().unwrap()).sum::<usize>() as f64 / labels.len() as f64
    }

    /// `counts[i]` points around each `centres[i]`, unit variance in every dimension; the points [N, d] and
    /// each one's blob.
    fn blobs(centres: &[Vec<f64>], counts: &[usize], seed: u64) -> (Tensor, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let (mut values, mut truth) = (Vec::new(), Vec::new());
        for (blob, (centre, &count)) in centres.iter().zip(counts).enumerate() {
            for _ in 0..count {
                values.extend(centre.iter().map(|c| c + normal(&mut rng)));
                truth.push(blob);
            }
        }
        (Tensor::from_slice(&values).view([truth.len() as i64, centres[0].len() as i64]), truth)
    }

    /// Three unit blobs in 5-D, 10 apart.
    fn three_blobs(seed: u64) -> (Tensor, Vec<usize>) {
        let centres = [vec![0.0; 5], vec![10.0, 0.0, 0.0, 0.0, 0.0], vec![0.0, 10.0, 0.0, 0.0, 0.0]];
        blobs(&centres, &[100, 100, 100], seed)
    }

    #[test]
    fn auto_finds_three_separated_blobs() {
        let (features, truth) = three_blobs(1);
        let result = cluster(&features, ClusterCount::Auto { max: 8 }, Criterion::Silhouette, 5, 0).unwrap();
        assert_eq!(result.k, 3, "BIC {:?}", result.bic);
        assert_eq!(purity(&result.labels, &truth), 1.0);
        assert_eq!(result.sizes, [100, 100, 100]);
        let best = result.bic.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        assert_eq!(best.0, 3);
        assert!(result.bic.len() > 3, "only {:?} tried", result.bic);
        assert!(result.confidence.iter().all(|&p| p > 0.99));
    }

    #[test]
    fn silhouette_counts_separated_groups_where_bic_counts_their_sub_blobs() {
        // Three groups 40 apart, each two unit blobs 6 apart: six Gaussians, three groups.
        let centres: Vec<Vec<f64>> = [[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]]
            .iter()
            .flat_map(|g| [vec![g[0], g[1]], vec![g[0] + 6.0, g[1]]])
            .collect();
        let (features, truth) = blobs(&centres, &[60; 6], 6);
        let groups: Vec<usize> = truth.iter().map(|blob| blob / 2).collect();
        let by_silhouette = cluster(&features, ClusterCount::Auto { max: 8 }, Criterion::Silhouette, 2, 0).unwrap();
        assert_eq!(by_silhouette.k, 3, "silhouette {:?}", by_silhouette.silhouette);
        assert_eq!(purity(&by_silhouette.labels, &groups), 1.0);
        assert_eq!(by_silhouette.criterion, Some(Criterion::Silhouette));
        let by_bic = cluster(&features, ClusterCount::Auto { max: 8 }, Criterion::Bic, 2, 0).unwrap();
        assert_eq!(by_bic.k, 6, "BIC {:?}", by_bic.bic);
        // Blobs 6 standard deviations apart share a point or two of their tails.
        assert!(purity(&by_bic.labels, &truth) > 0.99);
        // Both fitted the same mixtures; only the choice differs.
        assert_eq!(by_silhouette.bic, by_bic.bic);
        assert_eq!(by_silhouette.silhouette.len(), by_silhouette.bic.len() - 1, "every k >= 2 has a silhouette");
    }

    #[test]
    fn auto_finds_one_cluster_in_one_blob() {
        let (features, _) = blobs(&[vec![0.0; 5]], &[200], 2);
        let result = cluster(&features, ClusterCount::Auto { max: 8 }, Criterion::Silhouette, 5, 0).unwrap();
        assert_eq!(result.k, 1, "BIC {:?}", result.bic);
        assert_eq!(result.sizes, [200]);
    }

    #[test]
    fn fixed_count_numbers_clusters_by_size() {
        let (features, truth) = blobs(&[vec![0.0; 5], vec![10.0; 5]], &[50, 150], 3);
        let result = cluster(&features.to_kind(Kind::Float), ClusterCount::Fixed(2), Criterion::Silhouette, 5, 0).unwrap();
        assert_eq!((result.k, result.bic.len()), (2, 1));
        assert_eq!(result.sizes, [150, 50]);
        // The second blob is the larger, so its samples are cluster 0.
        assert!(result.labels.iter().zip(&truth).all(|(&label, &blob)| label == 1 - blob));
    }

    #[test]
    fn auto_only_tries_counts_the_data_can_support() {
        // 10 samples in 5 dimensions: two clusters would need 6 members each to estimate their covariances.
        let (features, _) = blobs(&[vec![0.0; 5], vec![10.0; 5]], &[5, 5], 4);
        let result = cluster(&features, ClusterCount::Auto { max: 8 }, Criterion::Silhouette, 5, 0).unwrap();
        assert_eq!(result.pca_dims, 5);
        assert_eq!(result.bic.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn same_seed_same_clusters() {
        let (features, _) = three_blobs(5);
        let run = || cluster(&features, ClusterCount::Auto { max: 5 }, Criterion::Silhouette, 3, 7).unwrap();
        let (a, b) = (run(), run());
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.bic, b.bic);
    }

    #[test]
    fn parse_accepts_auto_and_positive_integers_only() {
        assert_eq!(ClusterCount::parse("auto").unwrap(), ClusterCount::Auto { max: 8 });
        assert_eq!(ClusterCount::parse("auto:12").unwrap(), ClusterCount::Auto { max: 12 });
        assert_eq!(ClusterCount::parse("3").unwrap(), ClusterCount::Fixed(3));
        for bad in ["0", "-1", "many", "", "auto:0", "auto12", "auto:x"] {
            let message = ClusterCount::parse(bad).unwrap_err().to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }

    #[test]
    fn validate_rejects_counts_the_samples_cannot_take() {
        assert!(ClusterCount::Fixed(5).validate(5).is_ok());
        assert!(ClusterCount::Auto { max: 8 }.validate(5).is_ok());
        let message = ClusterCount::Fixed(6).validate(5).unwrap_err().to_string();
        assert!(message.contains("6") && message.contains("5 samples"), "{message}");
        assert!(ClusterCount::Fixed(0).validate(5).is_err());
        assert!(ClusterCount::Auto { max: 0 }.validate(5).is_err());
        assert!(ClusterCount::Fixed(1).validate(1).is_err());
    }
}
