//! Means over latents that do not depend on the order of their terms, so that a mean over K latents spread across
//! ranks is the same bits however they are spread. Every value is scaled by one power of two, 2^S, chosen from the
//! largest |value| over all ranks so that no sum of up to K of them can leave an i64, and rounded to an integer;
//! integers add exactly in any order (an MPI sum included); the sum is scaled back and divided by K once.
//!
//! The only rounding is of each value to a multiple of 2^-S, where 2^-S is about K x max|value| / 2^62: for SD 1.5's
//! h (|h| below 100, K = 1000) 2e-14, against the 6e-8 relative precision of the f32 values themselves.
use super::Ranks;
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// The element-wise mean over all ranks' rows of `local` ([n, ...], this rank's n of `total` rows; f32 or f64),
/// as [1, ...] in `local`'s dtype, the same bits on every rank and for every split of the rows.
pub fn mean(ranks: &Ranks, local: &Tensor, total: i64) -> Result<Tensor> {
    if total < 1 {
        bail!("a mean over no latents");
    }
    let kind = local.kind();
    // On the rows' own device: only the sums cross to the CPU (power-of-two scaling, rounding and integer sums are
    // exact on any device).
    let values = local.to_kind(Kind::Double);
    let local_max = if values.numel() == 0 { 0.0 } else { values.abs().max().double_value(&[]) };
    let largest = ranks.max(local_max);
    if !largest.is_finite() {
        bail!("a mean over latents of values that are not finite (NaN or Inf)");
    }
    let row_shape: Vec<i64> = local.size()[1..].to_vec();
    if largest == 0.0 {
        return Ok(Tensor::zeros(std::iter::once(1).chain(row_shape).collect::<Vec<_>>(), (kind, local.device())));
    }
    let shift = scale_exponent(largest, total);
    let scale = 2f64.powi(shift);
    let mut sums: Vec<i64> = if values.size()[0] == 0 {
        vec![0; row_shape.iter().product::<i64>() as usize]
    } else {
        let integers = (values * scale).round().to_kind(Kind::Int64).sum_dim_intlist(0, false, Kind::Int64);
        Vec::<i64>::try_from(integers.flatten(0, -1).to_device(tch::Device::Cpu))?
    };
    ranks.sum_i64(&mut sums);
    let mean: Vec<f64> = sums.iter().map(|&s| s as f64 / scale / total as f64).collect();
    let shape: Vec<i64> = std::iter::once(1).chain(row_shape).collect();
    Ok(Tensor::from_slice(&mean).reshape(shape).to_kind(kind).to_device(local.device()))
}

/// S such that `total` values of magnitude at most `largest`, each times 2^S, sum to at most 2^62 in magnitude.
fn scale_exponent(largest: f64, total: i64) -> i32 {
    let value_bits = largest.log2().ceil() as i32;
    let count_bits = (total as f64).log2().ceil() as i32;
    // Rounding can push a value of exactly 2^value_bits up by at most one unit: still below 2^62 over `total`.
    62 - value_bits - count_bits - 1
}

/// The mean of `values` (one per latent, in the latents' order), summed in that order.
pub fn ordered_mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_does_not_depend_on_the_order_of_its_terms_and_is_the_true_mean_to_f32() {
        tch::manual_seed(1);
        let x = Tensor::randn([37, 5, 3], (Kind::Float, tch::Device::Cpu)) * 30.0;
        let ranks = Ranks::alone();
        let a = mean(&ranks, &x, 37).unwrap();
        let reversed = x.flip([0]);
        let b = mean(&ranks, &reversed, 37).unwrap();
        assert!(a.equal(&b), "the same terms in another order give the same bits");
        let exact = x.to_kind(Kind::Double).mean_dim(0, true, Kind::Double);
        let error = (a.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
        let ulp = exact.abs().max().double_value(&[]) * f32::EPSILON as f64;
        assert!(error <= ulp, "within one f32 rounding of the exact mean: {error} > {ulp}");
        let zeros = mean(&ranks, &Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu)), 4).unwrap();
        assert_eq!(zeros.sum(Kind::Double).double_value(&[]), 0.0);
    }
}
