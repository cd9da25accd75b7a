//! Losses, averaged over the batch.
//!
//! ```text
//! logits z: (N, K)   labels t: (N), one class index each
//! Softmax cross-entropy:  L = 1/N sum_n [ logsumexp(z_n) - z_n[t_n] ]
//!                         dL/dz_n = (softmax(z_n) - onehot(t_n)) / N
//! With label smoothing s, the cross-entropy target is q = (1 - s) onehot + s / K:
//!                         L = 1/N sum_n [ logsumexp(z_n) - sum_k q_k z_nk ],  dL/dz_n = (softmax - q) / N
//! Euclidean:              L = 1/N sum_n 1/2 ||z_n - onehot(t_n)||^2
//!                         dL/dz_n = (z_n - onehot(t_n)) / N
//! ```
//! The log-sum-exp subtracts the row maximum first, so large logits do not overflow.

use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// The loss of a model spec.
pub enum Loss {
    /// Softmax, then the cross-entropy against the label.
    #[default]
    SoftmaxCrossEntropy,
    /// Half the squared distance to the one-hot label.
    Euclidean,
}

/// What one batch contributed: summed (not averaged) loss and the number classified right.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// The loss summed over the samples.
    pub loss_sum: f64,
    /// Samples whose largest logit is their label's.
    pub correct: usize,
    /// Samples.
    pub count: usize,
}

impl BatchStats {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: BatchStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.count += other.count;
    }
    /// The loss per sample.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    /// The share classified right.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
}

/// `9922/10000 (99.22%)`: the count with its share.
impl std::fmt::Display for BatchStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} ({:.2}%)",
            self.correct,
            self.count,
            100.0 * self.accuracy()
        )
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

impl Loss {
    /// Loss of one sample, in f64.
    pub fn sample_loss(self, z: &[f32], label: usize) -> f64 {
        match self {
            Loss::SoftmaxCrossEntropy => {
                let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
                max + sum.ln() - z[label] as f64
            }
            Loss::Euclidean => z
                .iter()
                .enumerate()
                .map(|(k, &v)| {
                    let d = v as f64 - if k == label { 1.0 } else { 0.0 };
                    0.5 * d * d
                })
                .sum(),
        }
    }

    /// Mean loss over the batch (for gradient checks and evaluation).
    pub fn value(self, logits: &Tensor, labels: &[u8]) -> f64 {
        let n = logits.batch();
        (0..n)
            .map(|i| self.sample_loss(logits.sample(i), labels[i] as usize))
            .sum::<f64>()
            / n as f64
    }

    /// Loss of one sample with label smoothing `s` (cross-entropy; Euclidean ignores it).
    pub fn sample_loss_smoothed(self, z: &[f32], label: usize, s: f32) -> f64 {
        if s == 0.0 || self == Loss::Euclidean {
            return self.sample_loss(z, label);
        }
        let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let k = z.len() as f64;
        let s = s as f64;
        z.iter()
            .enumerate()
            .map(|(j, &v)| {
                let q = s / k + if j == label { 1.0 - s } else { 0.0 };
                q * (lse - v as f64)
            })
            .sum()
    }

    /// Mean smoothed loss over the batch (for gradient checks).
    pub fn value_smoothed(self, logits: &Tensor, labels: &[u8], s: f32) -> f64 {
        let n = logits.batch();
        (0..n)
            .map(|i| self.sample_loss_smoothed(logits.sample(i), labels[i] as usize, s))
            .sum::<f64>()
            / n as f64
    }

    /// Computes the batch statistics and writes dL/dlogits (of the batch mean) into `grad`;
    /// `smoothing` is the label smoothing of the cross-entropy target.
    pub fn forward_backward(
        self,
        logits: &Tensor,
        labels: &[u8],
        grad: &mut Tensor,
        smoothing: f32,
    ) -> BatchStats {
        let n = logits.batch();
        assert_eq!(labels.len(), n, "one label per sample");
        grad.resize_batch(n, &logits.shape[1..]);
        self.chunk_forward_backward(&logits.data, labels, &mut grad.data, smoothing, n)
    }

    /// `forward_backward` for some of a batch's samples: `logits` and `grad` hold one row
    /// per label, and the gradient is that of the mean over all `batch` samples.
    pub fn chunk_forward_backward(
        self,
        logits: &[f32],
        labels: &[u8],
        grad: &mut [f32],
        smoothing: f32,
        batch: usize,
    ) -> BatchStats {
        let n = labels.len();
        let k = logits.len() / n.max(1);
        let inv_n = 1.0 / batch as f32;
        let mut stats = BatchStats {
            count: n,
            ..Default::default()
        };
        for (i, (z, g)) in logits.chunks(k).zip(grad.chunks_mut(k)).enumerate() {
            let t = labels[i] as usize;
            assert!(t < k, "label {t} out of range for {k} outputs");
            stats.loss_sum += self.sample_loss_smoothed(z, t, smoothing);
            if argmax(z) == t {
                stats.correct += 1;
            }
            match self {
                Loss::SoftmaxCrossEntropy => {
                    let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let mut sum = 0.0f32;
                    for (g, &v) in g.iter_mut().zip(z) {
                        *g = (v - max).exp();
                        sum += *g;
                    }
                    let uniform = smoothing / k as f32;
                    for g in g.iter_mut() {
                        *g = (*g / sum - uniform) * inv_n;
                    }
                    g[t] -= (1.0 - smoothing) * inv_n;
                }
                Loss::Euclidean => {
                    for (j, (g, &v)) in g.iter_mut().zip(z).enumerate() {
                        *g = (v - if j == t { 1.0 } else { 0.0 }) * inv_n;
                    }
                }
            }
        }
        stats
    }
}

/// Softmax of one row of logits, for reports and `predict`.
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = z.iter().map(|&v| (v - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}
