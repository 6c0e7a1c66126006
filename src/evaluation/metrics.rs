//! The paper's metrics on CLIP embeddings (issue "Evaluation"): consistency (do prototypes from different seeds
//! agree?) and representativeness (is a prototype near the centre of the concept's samples?). Both are cosine
//! distances, 1 - cos, so 0 is best. Sharpness lives in `sharpness`.
use tch::{Kind, Tensor};

fn unit_rows(embeds: &Tensor) -> Tensor {
    let embeds = embeds.to_kind(Kind::Double);
    &embeds / embeds.norm_scalaropt_dim(2, [1], true)
}

/// The mean pairwise cosine distance between embeddings [R,D] of prototypes made from R seeds; None for R < 2.
pub fn consistency(embeds: &Tensor) -> Option<f64> {
    let r = embeds.size()[0];
    if r < 2 {
        return None;
    }
    let unit = unit_rows(embeds);
    // Identical embeddings (a deterministic average's, under shared samples) are at distance 0 exactly, not at the
    // 1e-16 their rounded norms leave.
    let same = embeds.unsqueeze(1).eq_tensor(&embeds.unsqueeze(0)).all_dims(Some([2].as_slice()), false);
    let cosine = unit.matmul(&unit.tr()).masked_fill(&same, 1.0);
    // Sum over distinct pairs: the off-diagonal entries, each pair counted twice.
    let off_diagonal = (cosine.sum(Kind::Double) - cosine.trace()).double_value(&[]);
    Some(1.0 - off_diagonal / (r * (r - 1)) as f64)
}

/// The cosine distance of each embedding [N,D] to the mean of the reference embeddings [M,D] (the concept's
/// samples): each one's representativeness.
pub fn distances_to_mean(embeds: &Tensor, reference: &Tensor) -> Vec<f64> {
    let mean = unit_rows(&unit_rows(reference).mean_dim(0, true, Kind::Double));
    let cosine = unit_rows(embeds).matmul(&mean.tr()).squeeze_dim(1);
    Vec::<f64>::try_from(cosine.neg() + 1.0).expect("a 1-D tensor")
}

/// The middle value (the mean of the two middle ones for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The mean; None when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn rows(data: &[f32], d: i64) -> Tensor {
        Tensor::from_slice(data).view([-1, d]).to_device(Device::Cpu)
    }

    // The metrics compute in float64 on a few exactly representable values: rounding is about 1e-16, so 1e-12 holds
    // on any machine.

    #[test]
    fn identical_prototypes_are_perfectly_consistent() {
        let same = rows(&[0.3, -1.0, 2.0, 0.3, -1.0, 2.0, 0.6, -2.0, 4.0], 3);
        assert!(consistency(&same).unwrap().abs() < 1e-12, "{:?}", consistency(&same));
        assert_eq!(consistency(&rows(&[1.0, 0.0], 2)), None, "one prototype has no pairs");
        // Bitwise-identical embeddings are at distance 0 exactly, whatever their norms round to.
        let copies = rows(&[0.3, -1.7, 2.9, 0.3, -1.7, 2.9, 0.3, -1.7, 2.9], 3);
        assert_eq!(consistency(&copies), Some(0.0));
    }

    #[test]
    fn consistency_is_the_mean_distance_over_pairs() {
        // Three unit vectors: e1, e2, and e1 again. Pairs: (e1,e2) 1, (e1,e1) 0, (e2,e1) 1 -> mean 2/3.
        let embeds = rows(&[1.0, 0.0, 0.0, 1.0, 2.0, 0.0], 2);
        assert!((consistency(&embeds).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Opposite directions are the farthest apart: distance 2.
        assert!((consistency(&rows(&[1.0, 0.0, -3.0, 0.0], 2)).unwrap() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn representativeness_measures_distance_to_the_samples_centre() {
        // Samples spread symmetrically around e1: their mean direction is e1.
        let samples = rows(&[1.0, 1.0, 1.0, -1.0], 2);
        let distances = distances_to_mean(&rows(&[5.0, 0.0, 0.0, 1.0, 1.0, 1.0], 2), &samples);
        assert!(distances[0].abs() < 1e-12, "on the centre: {distances:?}");
        assert!((distances[1] - 1.0).abs() < 1e-12, "orthogonal: {distances:?}");
        assert!((distances[2] - (1.0 - 0.5f64.sqrt())).abs() < 1e-12, "45 degrees: {distances:?}");
    }

    #[test]
    fn median_and_mean() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(mean(&[1.0, 2.0]), Some(1.5));
    }
}
