//! The most typical sample: a selection, not a synthesis.
use crate::evaluation::metrics::distances_to_mean;
use tch::Tensor;

/// The index of the sample whose embedding [N,D] is nearest (cosine) the mean of all the samples' embeddings.
pub fn most_typical(embeds: &Tensor) -> usize {
    let distances = distances_to_mean(embeds, embeds);
    distances.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).expect("at least one sample")
}
