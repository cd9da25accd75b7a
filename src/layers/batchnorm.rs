//! Batch normalisation over channels, as `torch.nn.BatchNorm2d` (x: (N, C, H, W)) and
//! `torch.nn.BatchNorm1d` (x: (N, C)); one struct, with H = W = 1 for the 1-D case.
//!
//! Training: per channel c, over the N*H*W values of the batch,
//!   mean = E[x], var = E[(x - mean)^2] (biased), xhat = (x - mean) / sqrt(var + eps)
//!   y = weight * xhat + bias
//!   running_mean <- (1 - m) running_mean + m * mean
//!   running_var  <- (1 - m) running_var  + m * var * M / (M - 1)   (unbiased, M = N*H*W)
//!   num_batches_tracked += 1
//! Evaluation: the running statistics replace mean and var.
//! Backward (training), with M values per channel:
//!   dweight = sum(dy * xhat), dbias = sum(dy)
//!   dx = weight / sqrt(var + eps) * (dy - dbias / M - xhat * dweight / M)
//! Backward (evaluation): dx = dy * weight / sqrt(running_var + eps).

use super::{Layer, Param, Scratch};
use crate::tensor::Tensor;
use rayon::prelude::*;

pub struct BatchNorm {
    name: String,
    shape: Vec<usize>,
    channels: usize,
    /// H * W (1 for BatchNorm1d).
    plane: usize,
    pub eps: f32,
    pub momentum: f32,
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub num_batches_tracked: i64,
    /// Per channel: the batch mean and 1/sqrt(var + eps) of the last forward.
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    trained: bool,
    /// Per channel: (mean, variance) in forward, (sum dy, sum dy * xhat) in backward; kept
    /// so that no batch allocates.
    sums: Vec<(f64, f64)>,
    unused_scratch: Vec<Scratch>,
}

impl BatchNorm {
    /// `shape` is (C, H, W) or (C,).
    pub fn new(name: &str, shape: &[usize], eps: f32, momentum: f32) -> Result<BatchNorm, String> {
        let (channels, plane) = match *shape {
            [c] => (c, 1),
            [c, h, w] => (c, h * w),
            _ => return Err(format!("needs a (C, H, W) or (C) input, gets {shape:?}")),
        };
        let mut weight = Param::new("weight", &[channels], true);
        weight.value.fill(1.0);
        Ok(BatchNorm {
            name: name.to_string(),
            shape: shape.to_vec(),
            channels,
            plane,
            eps,
            momentum,
            weight,
            bias: Param::new("bias", &[channels], true),
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            num_batches_tracked: 0,
            mean: vec![0.0; channels],
            inv_std: vec![1.0; channels],
            trained: false,
            sums: vec![(0.0, 0.0); channels],
            unused_scratch: Vec::new(),
        })
    }
}

/// `sum(f(v))` over `values` in 8 interleaved f64 partial sums: a single running sum makes
/// every addition wait for the previous one. The order is fixed, so results repeat.
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

impl Layer for BatchNorm {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        if self.shape.len() == 3 {
            "batch_norm2d"
        } else {
            "batch_norm1d"
        }
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    /// Training statistics span the whole batch, so this layer runs on whole batches.
    fn per_chunk(&self) -> bool {
        false
    }
    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.unused_scratch
    }

    fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool) {
        let n = x.batch();
        y.resize_batch(n, &self.shape);
        let m = (n * self.plane) as f64;
        self.trained = train;
        if train {
            let (channels, plane) = (self.channels, self.plane);
            self.sums.par_iter_mut().enumerate().for_each(|(c, s)| {
                let values = || channel(&x.data, channels, plane, c);
                let mean = values().map(|v| lanes_sum(v, |v| v as f64)).sum::<f64>() / m;
                let var = values()
                    .map(|v| lanes_sum(v, |v| (v as f64 - mean).powi(2)))
                    .sum::<f64>()
                    / m;
                *s = (mean, var);
            });
            let mo = self.momentum;
            for (c, &(mean, var)) in self.sums.iter().enumerate() {
                self.mean[c] = mean as f32;
                self.inv_std[c] = (1.0 / (var + self.eps as f64).sqrt()) as f32;
                let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
                self.running_mean[c] = (1.0 - mo) * self.running_mean[c] + mo * mean as f32;
                self.running_var[c] = (1.0 - mo) * self.running_var[c] + mo * unbiased as f32;
            }
            self.num_batches_tracked += 1;
        } else {
            for c in 0..self.channels {
                self.mean[c] = self.running_mean[c];
                self.inv_std[c] = 1.0 / (self.running_var[c] + self.eps).sqrt();
            }
        }
        let (plane, channels) = (self.plane, self.channels);
        let (mean, inv, w, b) = (
            &self.mean,
            &self.inv_std,
            &self.weight.value,
            &self.bias.value,
        );
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

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        let n = x.batch();
        let m = (n * self.plane) as f64;
        // Per channel: sum(dy) and sum(dy * xhat).
        let (channels, plane) = (self.channels, self.plane);
        let (mean, inv) = (&self.mean, &self.inv_std);
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
            self.bias.grad[c] = db as f32;
            self.weight.grad[c] = dw as f32;
        }
        let Some(dx) = dx else { return };
        dx.resize_batch(n, &self.shape);
        let (plane, channels, trained) = (self.plane, self.channels, self.trained);
        let (mean, inv, w) = (&self.mean, &self.inv_std, &self.weight.value);
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

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
    fn buffers(&self) -> Vec<Buffer<'_>> {
        vec![
            Buffer::F32("running_mean", &self.running_mean),
            Buffer::F32("running_var", &self.running_var),
            Buffer::I64("num_batches_tracked", self.num_batches_tracked),
        ]
    }
    fn set_buffer(&mut self, name: &str, values: &[f32], count: i64) {
        match name {
            "running_mean" => self.running_mean.copy_from_slice(values),
            "running_var" => self.running_var.copy_from_slice(values),
            "num_batches_tracked" => self.num_batches_tracked = count,
            _ => {}
        }
    }
}

use super::Buffer;
