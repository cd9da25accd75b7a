//! Fully connected layer, as `torch.nn.Linear`.
//!
//! ```text
//! x: (N, IN)   w: (OUT, IN)   b: (OUT)   y: (N, OUT)
//!
//! forward:  y[n,o]  = b[o] + sum over i of w[o,i] * x[n,i]        (y = x . w^T + b)
//! backward: dw[o,i] = sum over n of dy[n,o] * x[n,i]               (dw = dy^T . x)
//!           db[o]   = sum over n of dy[n,o]
//!           dx[n,i] = sum over o of dy[n,o] * w[o,i]                (dx = dy . w)
//! ```
//! Sums run in f64. `kernels/linear.rs` computes the same with GEMM calls.

use super::{batch_of, Layer, LayerKind, Mode, Param, ParamRole};
use crate::tensor::Tensor;

/// A fully connected layer: `in_features` inputs to `out_features` outputs.
pub struct Linear {
    name: String,
    /// IN.
    pub in_features: usize,
    /// OUT.
    pub out_features: usize,
    input: Vec<usize>,
    output: Vec<usize>,
    /// `(OUT, IN)`.
    pub weight: Param,
    /// `(OUT)`.
    pub bias: Param,
}

impl Linear {
    /// A layer with zero weights (the network draws them, see `init.rs`).
    pub fn new(name: &str, in_features: usize, out_features: usize) -> Linear {
        Linear {
            name: name.to_string(),
            in_features,
            out_features,
            input: vec![in_features],
            output: vec![out_features],
            weight: Param::new("weight", ParamRole::Weight, &[out_features, in_features]),
            bias: Param::new("bias", ParamRole::Bias, &[out_features]),
        }
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Linear
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }

    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Tensor {
        let (fi, fo) = (self.in_features, self.out_features);
        let (w, b) = (&self.weight.value, &self.bias.value);
        let mut y = batch_of(x.batch(), &self.output);
        for (x, y) in x.data.chunks(fi).zip(y.data.chunks_mut(fo)) {
            for o in 0..fo {
                let mut acc = b[o] as f64;
                for i in 0..fi {
                    acc += w[o * fi + i] as f64 * x[i] as f64;
                }
                y[o] = acc as f32;
            }
        }
        y
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Tensor {
        let (fi, fo) = (self.in_features, self.out_features);
        let w = &self.weight.value;
        let mut dw = vec![0.0f64; fo * fi];
        let mut db = vec![0.0f64; fo];
        let mut dx = Tensor::zeros(&x.shape);
        for ((x, dy), dx) in x
            .data
            .chunks(fi)
            .zip(dy.data.chunks(fo))
            .zip(dx.data.chunks_mut(fi))
        {
            for o in 0..fo {
                let d = dy[o] as f64;
                db[o] += d;
                for i in 0..fi {
                    dw[o * fi + i] += d * x[i] as f64;
                }
            }
            for (i, dx) in dx.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for o in 0..fo {
                    acc += dy[o] as f64 * w[o * fi + i] as f64;
                }
                *dx = acc as f32;
            }
        }
        self.weight.grad = dw.into_iter().map(|v| v as f32).collect();
        self.bias.grad = db.into_iter().map(|v| v as f32).collect();
        dx
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
    }
}
