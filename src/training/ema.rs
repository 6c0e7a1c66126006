//! An exponential moving average of weights: what is exported and sampled from, smoother than the raw weights.
use tch::Tensor;

pub struct Ema {
    pub decay: f64,
    /// Averaged copies, by the same names as the parameters they follow.
    pub tensors: Vec<(String, Tensor)>,
}

impl Ema {
    pub fn new(params: &[(String, Tensor)], decay: f64) -> Self {
        Self { decay, tensors: params.iter().map(|(n, p)| (n.clone(), p.detach().copy())).collect() }
    }

    /// avg <- decay * avg + (1 - decay) * param, with the decay warmed up as (1 + step) / (10 + step) so early
    /// averages are not dominated by the random initialisation.
    pub fn update(&mut self, params: &[(String, Tensor)], step: usize) {
        let decay = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        tch::no_grad(|| {
            for ((_, avg), (_, p)) in self.tensors.iter_mut().zip(params) {
                avg.copy_(&(&*avg * decay + p * (1.0 - decay)));
            }
        });
    }
}
