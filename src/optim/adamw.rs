//! AdamW over a model's named parameters, with decoupled weight decay, gradient-norm clipping and a state that
//! can be saved in a checkpoint and restored.
use super::Adam;
use std::collections::HashMap;
use tch::Tensor;

pub struct AdamW {
    params: Vec<(String, Tensor)>,
    states: Vec<Adam>,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, weight_decay: f64) -> Self {
        let states = params.iter().map(|(_, p)| Adam::new(p, lr)).collect();
        Self { params, states, weight_decay }
    }

    pub fn set_lr(&mut self, lr: f64) {
        for state in &mut self.states {
            state.lr = lr;
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scales gradients so their global norm is at most `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
        let norm = grads.iter().map(|g| g.square().sum(tch::Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        if norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        norm
    }

    /// One step on every parameter that received a gradient.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            for ((_, p), state) in self.params.iter_mut().zip(&mut self.states) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let decayed = &*p * (1.0 - state.lr * self.weight_decay);
                p.copy_(&state.update(&decayed, &grad));
            }
        });
    }

    /// The optimiser state as named tensors (`adam_m.<param>`, `adam_v.<param>`) and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i32) {
        let mut out = Vec::new();
        for ((name, _), s) in self.params.iter().zip(&self.states) {
            out.push((format!("adam_m.{name}"), s.m.shallow_clone()));
            out.push((format!("adam_v.{name}"), s.v.shallow_clone()));
        }
        (out, self.states.first().map_or(0, |s| s.step))
    }

    /// Restores what `state` returned; a parameter missing from the saved state is an error.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>, step: i32) -> anyhow::Result<()> {
        for ((name, p), s) in self.params.iter().zip(&mut self.states) {
            let get = |prefix: &str| {
                saved
                    .get(&format!("{prefix}.{name}"))
                    .map(|t| t.to_device(p.device()).to_kind(p.kind()))
                    .ok_or_else(|| anyhow::anyhow!("the checkpoint has no optimiser state for `{name}`"))
            };
            s.m = get("adam_m")?;
            s.v = get("adam_v")?;
            s.step = step;
        }
        Ok(())
    }
}
