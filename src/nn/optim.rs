//! Optimisers and learning-rate schedules.
//!
//! SGD with momentum mu and L2 weight decay lambda, per parameter value w with gradient g:
//!   v <- mu * v + (g + lambda * w)
//!   w <- w - lr * v
//! Adam (PyTorch's `torch.optim.Adam`, L2 decay added to the gradient), at step t >= 1:
//!   g <- g + lambda * w
//!   m <- b1 * m + (1 - b1) * g          v <- b2 * v + (1 - b2) * g^2
//!   w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! AdamW (`torch.optim.AdamW`): the same without lambda in g, and first w <- w - lr * lambda * w.
//! Weight decay applies to every parameter, or only to weights (`Decay::WeightsOnly`,
//! `--no-bias-decay`): biases and batch norm's scale and shift are then left alone.

use super::Param;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// The optimisers.
pub enum OptimizerKind {
    /// Stochastic gradient descent with momentum.
    #[default]
    Sgd,
    /// Adam (`torch.optim.Adam`).
    Adam,
    /// AdamW (`torch.optim.AdamW`): decoupled weight decay.
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<OptimizerKind, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::Adamw),
            _ => Err(format!(
                "unknown optimizer `{s}`: expected sgd, adam or adamw"
            )),
        }
    }
}

impl OptimizerKind {
    /// The per-parameter state buffers, named as in PyTorch's optimizer state.
    pub fn buffer_names(self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Sgd => &["momentum_buffer"],
            OptimizerKind::Adam | OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// Which parameters weight decay applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decay {
    /// Every parameter.
    #[default]
    All,
    /// Weights only: biases and batch norm's scale and shift are left alone
    /// (`--no-bias-decay`).
    WeightsOnly,
}

/// An optimiser with its per-parameter state (momentum or Adam's moments).
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// SGD, Adam or AdamW.
    pub kind: OptimizerKind,
    /// SGD's momentum.
    pub momentum: f32,
    /// The L2 (SGD, Adam) or decoupled (AdamW) weight decay.
    pub weight_decay: f32,
    /// Which parameters the decay applies to.
    pub decay: Decay,
    /// Adam's beta1.
    pub beta1: f32,
    /// Adam's beta2.
    pub beta2: f32,
    /// Adam's epsilon.
    pub eps: f32,
    /// Per parameter (in the network's order), one buffer per `buffer_names()` entry.
    pub state: Vec<Vec<Vec<f32>>>,
}

impl Optimizer {
    /// SGD with `momentum` and L2 `weight_decay` on every parameter.
    pub fn sgd(momentum: f32, weight_decay: f32) -> Optimizer {
        Optimizer {
            kind: OptimizerKind::Sgd,
            momentum,
            weight_decay,
            decay: Decay::All,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            state: Vec::new(),
        }
    }

    /// Adam or AdamW (`kind`) with `(beta1, beta2)`, `eps` and `weight_decay`.
    pub fn adam(kind: OptimizerKind, betas: (f32, f32), eps: f32, weight_decay: f32) -> Optimizer {
        Optimizer {
            kind,
            momentum: 0.0,
            weight_decay,
            decay: Decay::All,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            state: Vec::new(),
        }
    }

    /// The same optimiser with weight decay applied to `decay`.
    pub fn with_decay(mut self, decay: Decay) -> Optimizer {
        self.decay = decay;
        self
    }

    /// One step over every parameter, in the same order every step (the state is kept
    /// per position); `step` counts optimiser steps from 1 (Adam's bias correction).
    pub fn step<'a>(
        &mut self,
        params: impl IntoIterator<Item = &'a mut Param>,
        lr: f32,
        step: u64,
    ) {
        for (index, p) in params.into_iter().enumerate() {
            self.update(index, p, lr, step);
        }
    }

    /// Updates parameter number `index`.
    /// Each value's update depends on that value alone, so the parameter is split into
    /// pieces updated in parallel with the same result on any thread count.
    fn update(&mut self, index: usize, p: &mut Param, lr: f32, step: u64) {
        let nbuf = self.kind.buffer_names().len();
        if self.state.len() <= index {
            self.state.resize(index + 1, Vec::new());
        }
        let st = &mut self.state[index];
        if st.len() != nbuf || st.iter().any(|b| b.len() != p.value.len()) {
            *st = vec![vec![0.0; p.value.len()]; nbuf];
        }
        let wd = if self.decay == Decay::WeightsOnly && p.role.decay_is_optional() {
            0.0
        } else {
            self.weight_decay
        };
        match self.kind {
            OptimizerKind::Sgd => {
                let mu = self.momentum;
                p.value
                    .par_chunks_mut(PIECE)
                    .zip(p.grad.par_chunks(PIECE))
                    .zip(st[0].par_chunks_mut(PIECE))
                    .for_each(|((w, g), v)| {
                        for ((w, &g), v) in w.iter_mut().zip(g).zip(v.iter_mut()) {
                            *v = mu * *v + (g + wd * *w);
                            *w -= lr * *v;
                        }
                    });
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
                let t = step.max(1) as i32;
                let c1 = 1.0 - (b1 as f64).powi(t);
                let c2 = 1.0 - (b2 as f64).powi(t);
                let step_size = (lr as f64 / c1) as f32;
                let c2_sqrt = c2.sqrt() as f32;
                let decoupled = self.kind == OptimizerKind::Adamw;
                let (m, v) = st.split_at_mut(1);
                p.value
                    .par_chunks_mut(PIECE)
                    .zip(p.grad.par_chunks(PIECE))
                    .zip(m[0].par_chunks_mut(PIECE))
                    .zip(v[0].par_chunks_mut(PIECE))
                    .for_each(|(((w, g), m), v)| {
                        let it = w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
                        for (((w, &g), m), v) in it {
                            let g = if decoupled {
                                *w -= lr * wd * *w;
                                g
                            } else {
                                g + wd * *w
                            };
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            *w -= step_size * *m / (v.sqrt() / c2_sqrt + eps);
                        }
                    });
            }
        }
    }
}

/// Values per parallel piece of an optimiser update: small parameters stay on one thread.
const PIECE: usize = 1 << 14;

/// How the learning rate changes over training. Evaluated per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// The factor of each decay.
        gamma: f32,
    },
    /// Half a cosine from the base rate down to zero over all iterations.
    Cosine,
    /// One cycle (as `torch.optim.lr_scheduler.OneCycleLR`, cosine annealing): from lr/25
    /// up to lr over the first 30% of iterations, then down to lr/1e4.
    OneCycle,
}

impl Schedule {
    /// Learning rate at `iteration` (counted from 0 over the whole run); see
    /// `lr_with_warmup` for a linear warm-up in front of it.
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
            Schedule::OneCycle => {
                let total = total_iters.max(2) as f64;
                let up = (0.3 * total).floor().max(1.0);
                let (start, end) = (base as f64 / 25.0, base as f64 / 25.0 / 1e4);
                let i = iteration as f64;
                let cos = |from: f64, to: f64, t: f64| {
                    to + (from - to) * 0.5 * (1.0 + (PI * t.clamp(0.0, 1.0)).cos())
                };
                let v = if i <= up {
                    cos(start, base as f64, i / up)
                } else {
                    cos(base as f64, end, (i - up) / (total - 1.0 - up).max(1.0))
                };
                v as f32
            }
        }
    }

    /// `lr` with a linear warm-up over the first `warmup` iterations.
    pub fn lr_with_warmup(
        &self,
        base: f32,
        iteration: usize,
        iters_per_epoch: usize,
        total_iters: usize,
        warmup: usize,
    ) -> f32 {
        let lr = self.lr(base, iteration, iters_per_epoch, total_iters);
        if iteration < warmup {
            lr * (iteration + 1) as f32 / warmup as f32
        } else {
            lr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ParamRole;

    #[test]
    fn sgd_matches_the_update_rule_by_hand() {
        let mut p = Param::new("weight", ParamRole::Weight, &[2]);
        p.value = vec![1.0, -2.0];
        p.grad = vec![0.5, 0.25];
        let mut sgd = Optimizer::sgd(0.9, 0.1);
        sgd.step([&mut p], 0.1, 1);
        // v = g + 0.1 w = [0.6, 0.05]; w = w - 0.1 v
        assert!((p.value[0] - 0.94).abs() < 1e-6 && (p.value[1] + 2.005).abs() < 1e-6);
        sgd.step([&mut p], 0.1, 2);
        // v = 0.9 [0.6, 0.05] + [0.5 + 0.094, 0.25 - 0.2005]
        let v0 = 0.9 * 0.6 + 0.5 + 0.094;
        assert!((p.value[0] - (0.94 - 0.1 * v0)).abs() < 1e-6);
    }

    #[test]
    fn biases_can_be_excluded_from_decay() {
        let mut b = Param::new("bias", ParamRole::Bias, &[1]);
        b.value = vec![1.0];
        let mut sgd = Optimizer::sgd(0.0, 0.5).with_decay(Decay::WeightsOnly);
        sgd.step([&mut b], 1.0, 1);
        assert_eq!(b.value[0], 1.0);
        let mut sgd = Optimizer::sgd(0.0, 0.5);
        sgd.step([&mut b], 1.0, 1);
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
        // Warm-up: linear from lr/warmup to lr.
        assert!((c.lr_with_warmup(1.0, 0, 10, 100, 10) - 0.1).abs() < 1e-6);
        assert!((Schedule::Constant.lr_with_warmup(1.0, 4, 10, 100, 10) - 0.5).abs() < 1e-6);
        assert_eq!(Schedule::Constant.lr_with_warmup(1.0, 10, 10, 100, 10), 1.0);
        // One cycle: lr/25 at the start, the peak at 30%, lr/25e4 at the end.
        let o = Schedule::OneCycle;
        assert!((o.lr(1.0, 0, 10, 101) - 0.04).abs() < 1e-6);
        assert!((o.lr(1.0, 30, 10, 101) - 1.0).abs() < 1e-6);
        assert!((o.lr(1.0, 100, 10, 101) - 0.04e-4).abs() < 1e-8);
        assert!(o.lr(1.0, 60, 10, 101) < 1.0 && o.lr(1.0, 60, 10, 101) > 0.04e-4);
    }
}
