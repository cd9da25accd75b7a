//! Optimiser and learning-rate schedules.
//!
//! SGD with momentum mu and L2 weight decay lambda, per parameter value w with gradient g:
//!   v <- mu * v + (g + lambda * w)
//!   w <- w - lr * v
//! Weight decay applies to every parameter unless `decay_bias = false` excludes biases.

use crate::layers::Param;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    pub decay_bias: bool,
    /// One velocity buffer per parameter, in the network's parameter order.
    #[serde(skip)]
    pub velocity: Vec<Vec<f32>>,
}

impl Sgd {
    pub fn new(momentum: f32, weight_decay: f32, decay_bias: bool) -> Sgd {
        Sgd {
            momentum,
            weight_decay,
            decay_bias,
            velocity: Vec::new(),
        }
    }

    /// Updates parameter number `index` (parameters must be visited in the same order
    /// every step).
    pub fn update(&mut self, index: usize, p: &mut Param, lr: f32) {
        if self.velocity.len() <= index {
            self.velocity.resize(index + 1, Vec::new());
        }
        let v = &mut self.velocity[index];
        if v.len() != p.value.len() {
            *v = vec![0.0; p.value.len()];
        }
        let wd = if p.is_bias && !self.decay_bias {
            0.0
        } else {
            self.weight_decay
        };
        let mu = self.momentum;
        for ((w, &g), v) in p.value.iter_mut().zip(&p.grad).zip(v.iter_mut()) {
            *v = mu * *v + (g + wd * *w);
            *w -= lr * *v;
        }
    }
}

/// How the learning rate changes over training. Evaluated per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step { every: usize, gamma: f32 },
    /// Half a cosine from the base rate down to zero over all iterations.
    Cosine,
}

impl Schedule {
    /// Learning rate at `iteration` (counted from 0 over the whole run).
    pub fn lr(
        &self,
        base: f32,
        iteration: usize,
        iters_per_epoch: usize,
        total_iters: usize,
    ) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                let epoch = iteration / iters_per_epoch.max(1);
                base * gamma.powi((epoch / every.max(1)) as i32)
            }
            Schedule::Cosine => {
                let t = iteration as f64 / total_iters.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (PI * t).cos())) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_matches_the_update_rule_by_hand() {
        let mut p = Param::new("weight", &[2], false);
        p.value = vec![1.0, -2.0];
        p.grad = vec![0.5, 0.25];
        let mut sgd = Sgd::new(0.9, 0.1, true);
        sgd.update(0, &mut p, 0.1);
        // v = g + 0.1 w = [0.6, 0.05]; w = w - 0.1 v
        assert!((p.value[0] - 0.94).abs() < 1e-6 && (p.value[1] + 2.005).abs() < 1e-6);
        sgd.update(0, &mut p, 0.1);
        // v = 0.9 [0.6, 0.05] + [0.5 + 0.094, 0.25 - 0.2005]
        let v0 = 0.9 * 0.6 + 0.5 + 0.094;
        assert!((p.value[0] - (0.94 - 0.1 * v0)).abs() < 1e-6);
    }

    #[test]
    fn biases_can_be_excluded_from_decay() {
        let mut b = Param::new("bias", &[1], true);
        b.value = vec![1.0];
        let mut sgd = Sgd::new(0.0, 0.5, false);
        sgd.update(0, &mut b, 1.0);
        assert_eq!(b.value[0], 1.0);
        let mut sgd = Sgd::new(0.0, 0.5, true);
        sgd.update(0, &mut b, 1.0);
        assert_eq!(b.value[0], 0.5);
    }

    #[test]
    fn schedules() {
        let s = Schedule::Step {
            every: 2,
            gamma: 0.1,
        };
        assert_eq!(s.lr(1.0, 0, 10, 100), 1.0);
        assert_eq!(s.lr(1.0, 19, 10, 100), 1.0);
        assert!((s.lr(1.0, 20, 10, 100) - 0.1).abs() < 1e-7);
        let c = Schedule::Cosine;
        assert_eq!(c.lr(1.0, 0, 10, 100), 1.0);
        assert!((c.lr(1.0, 50, 10, 100) - 0.5).abs() < 1e-6);
        assert!(c.lr(1.0, 100, 10, 100).abs() < 1e-6);
        assert_eq!(Schedule::Constant.lr(0.3, 77, 10, 100), 0.3);
    }
}
