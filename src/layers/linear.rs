//! Fully connected layer, as `torch.nn.Linear`.
//!
//! x: (N, IN)   w: (OUT, IN)   b: (OUT)   y: (N, OUT)
//! forward:  y  = x . w^T + b
//! backward: dw = dy^T . x      db = sum over N of dy      dx = dy . w
//!
//! Work is split into fixed blocks (rows of the batch for y and dx, rows of w for dw and
//! db), so each output value is computed the same way whatever the thread count.

use super::{Layer, Param, CHUNK};
use crate::gemm::{sgemm, sgemm_ld, Backend};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Rows of `w` per parallel task in the weight-gradient GEMM.
const OUT_BLOCK: usize = 16;

pub struct Linear {
    name: String,
    in_features: usize,
    out_features: usize,
    input: Vec<usize>,
    output: Vec<usize>,
    pub weight: Param,
    pub bias: Param,
}

impl Linear {
    pub fn new(name: &str, in_features: usize, out_features: usize) -> Linear {
        Linear {
            name: name.to_string(),
            in_features,
            out_features,
            input: vec![in_features],
            output: vec![out_features],
            weight: Param::new("weight", &[out_features, in_features], false),
            bias: Param::new("bias", &[out_features], true),
        }
    }
}

impl Layer for Linear {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "linear"
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }
    fn macs(&self) -> usize {
        self.in_features * self.out_features
    }

    fn forward(&mut self, x: &Tensor, y: &mut Tensor, _train: bool) {
        let (n, fi, fo) = (x.batch(), self.in_features, self.out_features);
        y.resize_batch(n, &self.output);
        let (w, b) = (&self.weight.value, &self.bias.value);
        y.data
            .par_chunks_mut(CHUNK * fo)
            .zip(x.data.par_chunks(CHUNK * fi))
            .for_each(|(y, x)| {
                let rows = x.len() / fi;
                for row in y.chunks_mut(fo) {
                    row.copy_from_slice(b);
                }
                sgemm(rows, fi, fo, 1.0, x, false, w, true, 1.0, y);
            });
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        let (n, fi, fo) = (x.batch(), self.in_features, self.out_features);
        let (dyd, xd) = (&dy.data, &x.data);
        self.weight
            .grad
            .par_chunks_mut(OUT_BLOCK * fi)
            .zip(self.bias.grad.par_chunks_mut(OUT_BLOCK))
            .enumerate()
            .for_each(|(blk, (dw, db))| {
                let o0 = blk * OUT_BLOCK;
                let rows = db.len();
                // dw[o0..o0+rows] = dy[:, o0..o0+rows]^T . x
                sgemm_ld(
                    Backend::DEFAULT,
                    rows,
                    n,
                    fi,
                    1.0,
                    (&dyd[o0..], fo, true),
                    (xd, fi, false),
                    0.0,
                    (dw, fi),
                );
                for (j, d) in db.iter_mut().enumerate() {
                    *d = (0..n).map(|i| dyd[i * fo + o0 + j]).sum();
                }
            });
        if let Some(dx) = dx {
            dx.resize_batch(n, &self.input);
            let w = &self.weight.value;
            dx.data
                .par_chunks_mut(CHUNK * fi)
                .zip(dyd.par_chunks(CHUNK * fo))
                .for_each(|(dx, dy)| {
                    let rows = dy.len() / fo;
                    sgemm(rows, fo, fi, 1.0, dy, false, w, false, 0.0, dx);
                });
        }
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}
