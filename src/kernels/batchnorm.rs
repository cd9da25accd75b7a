//! The fast batch norm: what `nn::BatchNorm` computes, with its sums in 8 interleaved f64
//! lanes (a single running sum makes every addition wait for the previous one), the
//! channels in parallel and the samples in parallel. The order of every sum is fixed, so
//! results repeat on any thread count. It runs on whole batches: its statistics span the
//! batch.

use crate::nn::{BatchNorm, Layer};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// `sum(f(v))` over `values` in 8 interleaved f64 partial sums. The order is fixed, so
/// results repeat.
fn lanes_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let (blocks, rest) = values.as_chunks::<8>();
    for b in blocks {
        for (a, &v) in acc.iter_mut().zip(b) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| f(v)).sum::<f64>()
}

/// `sum(f(a, b))` over pairs of `a` and `b`, in 8 interleaved partial sums like `lanes_sum`.
fn lanes_dot(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for ((acc, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *acc += f(x, y);
        }
    }
    let rest: f64 = a_rest.iter().zip(b_rest).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().sum::<f64>() + rest
}

/// The values of channel `c` of every sample: one (H*W)-long slice per sample.
fn channel(data: &[f32], channels: usize, plane: usize, c: usize) -> impl Iterator<Item = &[f32]> {
    data.chunks(channels * plane)
        .map(move |s| &s[c * plane..(c + 1) * plane])
}

/// Per-channel working sums, kept so that no batch allocates.
#[derive(Default)]
pub struct FastBatchNorm {
    /// (mean, variance) in forward, (sum dy, sum dy * xhat) in backward.
    sums: Vec<(f64, f64)>,
}

impl FastBatchNorm {
    /// The forward pass of a whole batch `x` into `y`.
    pub fn forward(&mut self, bn: &mut BatchNorm, x: &Tensor, y: &mut Tensor, train: bool) {
        let n = x.batch();
        y.resize_batch(n, bn.input_shape());
        let (channels, plane) = (bn.channels, bn.plane);
        let m = (n * plane) as f64;
        bn.trained = train;
        if train {
            self.sums.resize(channels, (0.0, 0.0));
            self.sums.par_iter_mut().enumerate().for_each(|(c, s)| {
                let values = || channel(&x.data, channels, plane, c);
                let mean = values().map(|v| lanes_sum(v, |v| v as f64)).sum::<f64>() / m;
                let var = values()
                    .map(|v| lanes_sum(v, |v| (v as f64 - mean).powi(2)))
                    .sum::<f64>()
                    / m;
                *s = (mean, var);
            });
            for (c, &(mean, var)) in self.sums.iter().enumerate() {
                bn.record_batch(c, mean, var, m);
            }
            bn.num_batches_tracked += 1;
        } else {
            bn.use_running();
        }
        let (mean, inv, w, b) = (&bn.mean, &bn.inv_std, &bn.weight.value, &bn.bias.value);
        y.data
            .par_chunks_mut(channels * plane)
            .zip(x.data.par_chunks(channels * plane))
            .for_each(|(y, x)| {
                for (c, (y, x)) in y.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
                    let (scale, shift) = (w[c] * inv[c], b[c] - w[c] * inv[c] * mean[c]);
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = x * scale + shift;
                    }
                }
            });
    }

    /// The backward pass of a whole batch: the parameter gradients, and `dx` when wanted.
    pub fn backward(
        &mut self,
        bn: &mut BatchNorm,
        x: &Tensor,
        dy: &Tensor,
        dx: Option<&mut Tensor>,
    ) {
        let n = x.batch();
        let m = (n * bn.plane) as f64;
        // Per channel: sum(dy) and sum(dy * xhat).
        let (channels, plane) = (bn.channels, bn.plane);
        let (mean, inv) = (&bn.mean, &bn.inv_std);
        self.sums.resize(channels, (0.0, 0.0));
        self.sums.par_iter_mut().enumerate().for_each(|(c, s)| {
            let (mean, inv) = (mean[c] as f64, inv[c] as f64);
            *s = (0.0, 0.0);
            let xs = channel(&x.data, channels, plane, c);
            for (xs, gs) in xs.zip(channel(&dy.data, channels, plane, c)) {
                s.0 += lanes_sum(gs, |g| g as f64);
                s.1 += lanes_dot(gs, xs, |g, xv| g as f64 * (xv as f64 - mean)) * inv;
            }
        });
        let sums = &self.sums;
        for (c, &(db, dw)) in sums.iter().enumerate() {
            bn.bias.grad[c] = db as f32;
            bn.weight.grad[c] = dw as f32;
        }
        let Some(dx) = dx else { return };
        dx.resize_batch(n, bn.input_shape());
        let trained = bn.trained;
        let (mean, inv, w) = (&bn.mean, &bn.inv_std, &bn.weight.value);
        dx.data
            .par_chunks_mut(channels * plane)
            .zip(
                x.data
                    .par_chunks(channels * plane)
                    .zip(dy.data.par_chunks(channels * plane)),
            )
            .for_each(|(dx, (x, dy))| {
                for (c, (dx, (x, dy))) in dx
                    .chunks_mut(plane)
                    .zip(x.chunks(plane).zip(dy.chunks(plane)))
                    .enumerate()
                {
                    let k = w[c] * inv[c];
                    if trained {
                        let (mdb, mdw) = ((sums[c].0 / m) as f32, (sums[c].1 / m) as f32);
                        for ((d, &xv), &g) in dx.iter_mut().zip(x).zip(dy) {
                            let xhat = (xv - mean[c]) * inv[c];
                            *d = k * (g - mdb - xhat * mdw);
                        }
                    } else {
                        for (d, &g) in dx.iter_mut().zip(dy) {
                            *d = k * g;
                        }
                    }
                }
            });
    }
}
