//! Adam on one tensor (torch.optim.Adam's update). Adam is elementwise, so on a batch of independent latents one
//! state is exactly one optimizer per latent, and rows can be dropped from the state when their latent stops.
use tch::Tensor;

pub struct Adam {
    pub lr: f64,
    pub m: Tensor,
    pub v: Tensor,
    pub step: i32,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Adam {
    pub fn new(like: &Tensor, lr: f64) -> Self {
        Self { lr, m: like.zeros_like(), v: like.zeros_like(), step: 0 }
    }

    /// Returns `x` moved one Adam step against `grad` (no weight decay).
    pub fn update(&mut self, x: &Tensor, grad: &Tensor) -> Tensor {
        self.step += 1;
        self.m = &self.m * BETA1 + grad * (1.0 - BETA1);
        self.v = &self.v * BETA2 + grad.square() * (1.0 - BETA2);
        let m_hat = &self.m / (1.0 - BETA1.powi(self.step));
        let v_hat_sqrt = (&self.v / (1.0 - BETA2.powi(self.step))).sqrt();
        x - m_hat / (v_hat_sqrt + EPS) * self.lr
    }

    /// Keeps only the rows `rows` of the optimizer state.
    pub fn keep_rows(&mut self, rows: &Tensor) {
        self.m = self.m.index_select(0, rows);
        self.v = self.v.index_select(0, rows);
    }
}
