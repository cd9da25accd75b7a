//! 2-D convolution (cross-correlation, as `torch.nn.Conv2d`), any kernel, stride and zero
//! padding.
//!
//! ```text
//! x: (N, C, H, W)   w: (O, C, K, K)   b: (O)   y: (N, O, OH, OW)
//! OH = (H + 2*pad - K) / stride + 1, likewise OW
//!
//! forward:  y[n,o,i,j] = b[o] + sum over c, ki, kj of  w[o,c,ki,kj] * x[n, c, i*stride + ki - pad, j*stride + kj - pad]
//! backward: the same loops; each product sends dy[n,o,i,j] back to both of its factors
//!           dx[n,c,ih,iw] += w[o,c,ki,kj] * dy[n,o,i,j]
//!           dw[o,c,ki,kj] += x[n,c,ih,iw] * dy[n,o,i,j]
//!           db[o]         += dy[n,o,i,j]
//! ```
//!
//! Positions outside the image are the zero padding: they add nothing, so the loops skip
//! them. Sums run in f64, so this file is also the exact reference the fast convolutions
//! (`kernels/conv.rs`: im2col + GEMM, direct AVX-512 / AVX2 kernels) are tested against.

use super::{batch_of, Layer, LayerKind, Mode, Param, ParamRole};
use crate::tensor::Tensor;

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels C.
    pub in_c: usize,
    /// Input height H.
    pub in_h: usize,
    /// Input width W.
    pub in_w: usize,
    /// Output channels O.
    pub out_c: usize,
    /// Kernel side K.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// Output height OH.
    pub out_h: usize,
    /// Output width OW.
    pub out_w: usize,
}

impl ConvShape {
    /// Checks that the kernel fits the padded input; the error says why not.
    pub fn new(
        input: [usize; 3],
        out_c: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Result<ConvShape, String> {
        let [in_c, in_h, in_w] = input;
        if kernel == 0 || stride == 0 || out_c == 0 {
            return Err("kernel, stride and out_channels must be at least 1".into());
        }
        let padded = |side: usize| pad.checked_mul(2).and_then(|p| p.checked_add(side));
        let (Some(ph), Some(pw)) = (padded(in_h), padded(in_w)) else {
            return Err(format!("pad {pad} is too large"));
        };
        if ph < kernel || pw < kernel {
            return Err(format!(
                "kernel {kernel} is larger than the padded input {ph}x{pw} (input {in_h}x{in_w}, pad {pad})"
            ));
        }
        Ok(ConvShape {
            in_c,
            in_h,
            in_w,
            out_c,
            kernel,
            stride,
            pad,
            out_h: (in_h + 2 * pad - kernel) / stride + 1,
            out_w: (in_w + 2 * pad - kernel) / stride + 1,
        })
    }
    /// Values per input image, C*H*W.
    pub fn in_len(&self) -> usize {
        self.in_c * self.in_h * self.in_w
    }
    /// Values per output image, O*OH*OW.
    pub fn out_len(&self) -> usize {
        self.out_c * self.out_h * self.out_w
    }
    /// Weights per output channel, C*K*K.
    pub fn ckk(&self) -> usize {
        self.in_c * self.kernel * self.kernel
    }
    /// Positions per output plane, OH*OW.
    pub fn ohw(&self) -> usize {
        self.out_h * self.out_w
    }
    /// The input row and column that output (i, j) reads for kernel tap (ki, kj), or
    /// `None` in the zero padding.
    fn source(&self, (i, j): (usize, usize), (ki, kj): (usize, usize)) -> Option<(usize, usize)> {
        let ih = (i * self.stride + ki).checked_sub(self.pad)?;
        let iw = (j * self.stride + kj).checked_sub(self.pad)?;
        (ih < self.in_h && iw < self.in_w).then_some((ih, iw))
    }
}

/// A convolution layer: its shape, weight and bias.
pub struct Conv2d {
    name: String,
    /// The sizes.
    pub shape: ConvShape,
    input: Vec<usize>,
    output: Vec<usize>,
    /// `(O, C, K, K)`.
    pub weight: Param,
    /// `(O)`.
    pub bias: Param,
}

impl Conv2d {
    /// A convolution with zero weights (the network draws them, see `init.rs`).
    pub fn new(name: &str, shape: ConvShape) -> Conv2d {
        let s = shape;
        Conv2d {
            name: name.to_string(),
            shape: s,
            input: vec![s.in_c, s.in_h, s.in_w],
            output: vec![s.out_c, s.out_h, s.out_w],
            weight: Param::new(
                "weight",
                ParamRole::Weight,
                &[s.out_c, s.in_c, s.kernel, s.kernel],
            ),
            bias: Param::new("bias", ParamRole::Bias, &[s.out_c]),
        }
    }
}

impl Layer for Conv2d {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Conv2d
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }

    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Tensor {
        let s = self.shape;
        let (k, n) = (s.kernel, x.batch());
        let (w, b) = (&self.weight.value, &self.bias.value);
        let mut y = batch_of(n, &self.output);
        for img in 0..n {
            for o in 0..s.out_c {
                for i in 0..s.out_h {
                    for j in 0..s.out_w {
                        let mut acc = b[o] as f64;
                        for c in 0..s.in_c {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let Some((ih, iw)) = s.source((i, j), (ki, kj)) else {
                                        continue;
                                    };
                                    let xv =
                                        x.data[((img * s.in_c + c) * s.in_h + ih) * s.in_w + iw];
                                    let wv = w[((o * s.in_c + c) * k + ki) * k + kj];
                                    acc += wv as f64 * xv as f64;
                                }
                            }
                        }
                        y.data[((img * s.out_c + o) * s.out_h + i) * s.out_w + j] = acc as f32;
                    }
                }
            }
        }
        y
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Tensor {
        let s = self.shape;
        let (k, n) = (s.kernel, x.batch());
        let w = &self.weight.value;
        let mut dx = vec![0.0f64; x.data.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; s.out_c];
        for img in 0..n {
            for o in 0..s.out_c {
                for i in 0..s.out_h {
                    for j in 0..s.out_w {
                        let d = dy.data[((img * s.out_c + o) * s.out_h + i) * s.out_w + j] as f64;
                        db[o] += d;
                        for c in 0..s.in_c {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let Some((ih, iw)) = s.source((i, j), (ki, kj)) else {
                                        continue;
                                    };
                                    let xi = ((img * s.in_c + c) * s.in_h + ih) * s.in_w + iw;
                                    let wi = ((o * s.in_c + c) * k + ki) * k + kj;
                                    dx[xi] += w[wi] as f64 * d;
                                    dw[wi] += x.data[xi] as f64 * d;
                                }
                            }
                        }
                    }
                }
            }
        }
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        self.weight.grad = to_f32(dw);
        self.bias.grad = to_f32(db);
        Tensor::from_vec(&x.shape, to_f32(dx))
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
    }
}
