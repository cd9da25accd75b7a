//! Batch normalisation over channels, as `torch.nn.BatchNorm2d` (x: (N, C, H, W)) and
//! `torch.nn.BatchNorm1d` (x: (N, C)); one struct, with H = W = 1 for the 1-D case.
//!
//! ```text
//! Training, per channel c, over its M = N*H*W values in the batch:
//!   mean = sum(x) / M        var = sum((x - mean)^2) / M              (biased)
//!   xhat = (x - mean) / sqrt(var + eps)
//!   y    = weight * xhat + bias
//!   running_mean <- (1 - m) * running_mean + m * mean
//!   running_var  <- (1 - m) * running_var  + m * var * M / (M - 1)     (unbiased)
//!   num_batches_tracked += 1
//! Evaluation: running_mean and running_var replace mean and var.
//!
//! Backward (training):
//!   dweight = sum(dy * xhat)      dbias = sum(dy)
//!   dx = weight / sqrt(var + eps) * (dy - dbias / M - xhat * dweight / M)
//! Backward (evaluation): dx = dy * weight / sqrt(running_var + eps)
//! ```
//! Sums run in f64.

use super::{Buffer, Layer, LayerKind, Mode, Param, ParamRole};
use crate::tensor::Tensor;

/// A batch-norm layer.
pub struct BatchNorm {
    name: String,
    shape: Vec<usize>,
    /// Channels C.
    pub channels: usize,
    /// H * W (1 for BatchNorm1d).
    pub plane: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Weight of the new batch in the running statistics.
    pub momentum: f32,
    /// Per-channel scale.
    pub weight: Param,
    /// Per-channel shift.
    pub bias: Param,
    /// Running mean per channel.
    pub running_mean: Vec<f32>,
    /// Running (unbiased) variance per channel.
    pub running_var: Vec<f32>,
    /// Training batches seen.
    pub num_batches_tracked: i64,
    /// Per channel: the mean and 1 / sqrt(var + eps) the last forward pass used.
    pub mean: Vec<f32>,
    /// See `mean`.
    pub inv_std: Vec<f32>,
    /// The last forward pass was a training pass (it used batch statistics).
    pub trained: bool,
}

impl BatchNorm {
    /// Batch norm over samples of `shape`, (C, H, W) or (C).
    pub fn new(name: &str, shape: &[usize], eps: f32, momentum: f32) -> BatchNorm {
        let (channels, plane) = match *shape {
            [c, h, w] => (c, h * w),
            _ => (shape.first().copied().unwrap_or(0), 1),
        };
        let mut weight = Param::new("weight", ParamRole::NormScale, &[channels]);
        weight.value.fill(1.0);
        BatchNorm {
            name: name.to_string(),
            shape: shape.to_vec(),
            channels,
            plane,
            eps,
            momentum,
            weight,
            bias: Param::new("bias", ParamRole::NormShift, &[channels]),
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            num_batches_tracked: 0,
            mean: vec![0.0; channels],
            inv_std: vec![1.0; channels],
            trained: false,
        }
    }

    /// Moves the running statistics toward a batch's mean and biased variance over `m`
    /// values, and keeps mean and 1/sqrt(var + eps) for the backward pass.
    pub fn record_batch(&mut self, c: usize, mean: f64, var: f64, m: f64) {
        let mo = self.momentum;
        self.mean[c] = mean as f32;
        self.inv_std[c] = (1.0 / (var + self.eps as f64).sqrt()) as f32;
        let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
        self.running_mean[c] = (1.0 - mo) * self.running_mean[c] + mo * mean as f32;
        self.running_var[c] = (1.0 - mo) * self.running_var[c] + mo * unbiased as f32;
    }

    /// Uses the running statistics (evaluation).
    pub fn use_running(&mut self) {
        for c in 0..self.channels {
            self.mean[c] = self.running_mean[c];
            self.inv_std[c] = 1.0 / (self.running_var[c] + self.eps).sqrt();
        }
    }

    /// The values of channel `c` of every sample of `data`: one H*W slice per sample.
    fn channel<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        let (channels, plane) = (self.channels, self.plane);
        data.chunks(channels * plane)
            .map(move |s| &s[c * plane..(c + 1) * plane])
    }
}

impl Layer for BatchNorm {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        if self.shape.len() == 3 {
            LayerKind::BatchNorm2d
        } else {
            LayerKind::BatchNorm1d
        }
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        self.trained = mode == Mode::Train;
        if self.trained {
            let m = (x.batch() * self.plane) as f64;
            for c in 0..self.channels {
                let values = || self.channel(&x.data, c).flatten();
                let mean = values().map(|&v| v as f64).sum::<f64>() / m;
                let var = values().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m;
                self.record_batch(c, mean, var, m);
            }
            self.num_batches_tracked += 1;
        } else {
            self.use_running();
        }
        let mut y = x.clone();
        let (channels, plane) = (self.channels, self.plane);
        for sample in y.data.chunks_mut(channels * plane) {
            for (c, values) in sample.chunks_mut(plane).enumerate() {
                let (w, b) = (self.weight.value[c], self.bias.value[c]);
                for v in values {
                    let xhat = (*v - self.mean[c]) * self.inv_std[c];
                    *v = w * xhat + b;
                }
            }
        }
        y
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Tensor {
        let m = (x.batch() * self.plane) as f64;
        let mut dx = Tensor::zeros(&x.shape);
        for c in 0..self.channels {
            let (mean, inv) = (self.mean[c] as f64, self.inv_std[c] as f64);
            let (mut dbias, mut dweight) = (0.0f64, 0.0f64);
            for (xs, ds) in self.channel(&x.data, c).zip(self.channel(&dy.data, c)) {
                for (&xv, &d) in xs.iter().zip(ds) {
                    dbias += d as f64;
                    dweight += d as f64 * (xv as f64 - mean) * inv;
                }
            }
            self.bias.grad[c] = dbias as f32;
            self.weight.grad[c] = dweight as f32;
            let k = self.weight.value[c] as f64 * inv;
            for (n, (xs, ds)) in self
                .channel(&x.data, c)
                .zip(self.channel(&dy.data, c))
                .enumerate()
            {
                let out = &mut dx.data[(n * self.channels + c) * self.plane..][..self.plane];
                for ((o, &xv), &d) in out.iter_mut().zip(xs).zip(ds) {
                    let d = d as f64;
                    *o = if self.trained {
                        let xhat = (xv as f64 - mean) * inv;
                        k * (d - dbias / m - xhat * dweight / m)
                    } else {
                        k * d
                    } as f32;
                }
            }
        }
        dx
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
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
