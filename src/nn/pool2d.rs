//! Max and average pooling over K x K windows with a stride (no padding), as
//! `torch.nn.MaxPool2d` / `AvgPool2d`.
//!
//! ```text
//! x: (N, C, H, W)   y: (N, C, OH, OW)   OH = (H - K) / stride + 1, likewise OW
//!
//! max: y[n,c,i,j] = the largest x in window (i, j)
//!      dx: each dy[n,c,i,j] goes to the one position of its window that held the maximum
//! avg: y[n,c,i,j] = the mean of window (i, j)
//!      dx: dy[n,c,i,j] / (K*K) goes to every position of the window
//! ```
//! Overlapping windows (stride < K) add their gradients.
//!
//! Max pooling's backward pass, and ties. The seed report upsampled the pooled maxima with
//! a K x K block of ones (a Kronecker product, `np.kron(y, ones)`), compared the result
//! with the input and sent the gradient wherever the two were equal. When a window holds
//! its maximum twice — common after a ReLU, where whole windows are 0 — that sends the same
//! gradient to every tied position, so the window passes back two or four times the
//! gradient its single output received, and the gradient is no longer that of the
//! function computed. convnet sends each gradient to exactly one position: the first in
//! row-major order whose value is the maximum (strictly greater values replace it), the
//! same position the forward pass took the maximum from, as PyTorch does.

use super::{batch_of, Layer, LayerKind, Mode};
use crate::tensor::Tensor;

/// Max or average.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// The largest value of the window.
    Max,
    /// The mean of the window.
    Avg,
}

/// The sizes of one pooling layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    /// Channels C (pooled one by one).
    pub channels: usize,
    /// Input height H.
    pub in_h: usize,
    /// Input width W.
    pub in_w: usize,
    /// Window side K.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Output height OH.
    pub out_h: usize,
    /// Output width OW.
    pub out_w: usize,
}

impl PoolShape {
    /// Checks that the window fits the input.
    pub fn new(input: [usize; 3], kernel: usize, stride: usize) -> Result<PoolShape, String> {
        let [channels, in_h, in_w] = input;
        if kernel == 0 || stride == 0 {
            return Err("kernel and stride must be at least 1".into());
        }
        if in_h < kernel || in_w < kernel {
            return Err(format!(
                "a {kernel}x{kernel} pool does not fit the {in_h}x{in_w} input"
            ));
        }
        Ok(PoolShape {
            channels,
            in_h,
            in_w,
            kernel,
            stride,
            out_h: (in_h - kernel) / stride + 1,
            out_w: (in_w - kernel) / stride + 1,
        })
    }

    /// Whether this is the 2x2, stride-2 window the fast kernels specialise in.
    pub fn is_2x2(&self) -> bool {
        self.kernel == 2 && self.stride == 2
    }

    /// The position within its (H, W) plane of the first maximum of window (i, j) of `plane`.
    pub fn argmax(&self, plane: &[f32], i: usize, j: usize) -> usize {
        let (k, s, w) = (self.kernel, self.stride, self.in_w);
        let mut best = i * s * w + j * s;
        for di in 0..k {
            for dj in 0..k {
                let p = (i * s + di) * w + j * s + dj;
                // Strictly greater: the first of tied values keeps the place.
                if plane[p] > plane[best] {
                    best = p;
                }
            }
        }
        best
    }
}

/// A pooling layer.
pub struct Pool2d {
    name: String,
    /// Max or average.
    pub kind: PoolKind,
    /// The sizes.
    pub shape: PoolShape,
    input: Vec<usize>,
    output: Vec<usize>,
}

impl Pool2d {
    /// A pooling layer of the given kind and sizes.
    pub fn new(name: &str, kind: PoolKind, shape: PoolShape) -> Pool2d {
        let s = shape;
        Pool2d {
            name: name.to_string(),
            kind,
            shape: s,
            input: vec![s.channels, s.in_h, s.in_w],
            output: vec![s.channels, s.out_h, s.out_w],
        }
    }
}

impl Layer for Pool2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        match self.kind {
            PoolKind::Max => LayerKind::MaxPool2d,
            PoolKind::Avg => LayerKind::AvgPool2d,
        }
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }

    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Tensor {
        let s = self.shape;
        let (k, st) = (s.kernel, s.stride);
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let mut y = batch_of(x.batch(), &self.output);
        for (x, y) in x.data.chunks(plane_in).zip(y.data.chunks_mut(plane_out)) {
            for i in 0..s.out_h {
                for j in 0..s.out_w {
                    y[i * s.out_w + j] = match self.kind {
                        PoolKind::Max => x[s.argmax(x, i, j)],
                        PoolKind::Avg => {
                            let mut sum = 0.0;
                            for di in 0..k {
                                for dj in 0..k {
                                    sum += x[(i * st + di) * s.in_w + j * st + dj];
                                }
                            }
                            sum / (k * k) as f32
                        }
                    };
                }
            }
        }
        y
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Tensor {
        let s = self.shape;
        let (k, st) = (s.kernel, s.stride);
        let (plane_in, plane_out) = (s.in_h * s.in_w, s.out_h * s.out_w);
        let mut dx = Tensor::zeros(&x.shape);
        let planes = x.data.chunks(plane_in).zip(dy.data.chunks(plane_out));
        for ((x, dy), dx) in planes.zip(dx.data.chunks_mut(plane_in)) {
            for i in 0..s.out_h {
                for j in 0..s.out_w {
                    let d = dy[i * s.out_w + j];
                    match self.kind {
                        PoolKind::Max => dx[s.argmax(x, i, j)] += d,
                        PoolKind::Avg => {
                            for di in 0..k {
                                for dj in 0..k {
                                    dx[(i * st + di) * s.in_w + j * st + dj] += d / (k * k) as f32;
                                }
                            }
                        }
                    }
                }
            }
        }
        dx
    }
}
