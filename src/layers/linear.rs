//! Fully connected layer, as `torch.nn.Linear`.
//!
//! x: (N, IN)   w: (OUT, IN)   b: (OUT)   y: (N, OUT)
//! forward:  y  = x . w^T + b
//! backward: dw = dy^T . x      db = sum over N of dy      dx = dy . w
//!
//! y and dx are computed chunk by chunk (rows of the batch); dw and db once over the whole
//! batch, split into fixed blocks of rows of w, so each value is computed the same way
//! whatever the thread count.

use super::{Layer, Param, Scratch};
use crate::gemm::{sgemm, sgemm_ld, Backend};
use crate::simd;
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
    /// The weights transposed, (IN, OUT), refreshed before every forward pass: the GEMM
    /// crate multiplies x . w^T about three times faster from this layout than through a
    /// transposed stride (cargo bench --bench gemm, fc1 shapes).
    weight_t: Vec<f32>,
    scratch: Vec<Scratch>,
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
            weight_t: vec![0.0; in_features * out_features],
            scratch: Vec::new(),
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

    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.scratch
    }

    fn prepare_forward(&mut self) {
        // Serial, before the chunks start: 8 x 8 blocks in registers take fc1's 100k
        // weights in ≈ 11 µs against 56 µs for a scalar blocked loop.
        let (fi, fo) = (self.in_features, self.out_features);
        simd::transpose(
            simd::detect(),
            &self.weight.value,
            fo,
            fi,
            &mut self.weight_t,
        );
    }

    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], _s: &mut Scratch, _train: bool) {
        let (fi, fo) = (self.in_features, self.out_features);
        let rows = x.len() / fi;
        for row in y.chunks_mut(fo) {
            row.copy_from_slice(&self.bias.value);
        }
        // y += x (rows, IN) . w^T (IN, OUT)
        sgemm(rows, fi, fo, 1.0, x, false, &self.weight_t, false, 1.0, y);
    }

    /// Only dx here: the weight gradient is one product over the whole batch
    /// (`finish_backward`), which keeps the GEMM's inner dimension long.
    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        _s: &mut Scratch,
    ) {
        let Some(dx) = dx else { return };
        let (fi, fo) = (self.in_features, self.out_features);
        let rows = dy.len() / fo;
        sgemm(
            rows,
            fo,
            fi,
            1.0,
            dy,
            false,
            &self.weight.value,
            false,
            0.0,
            dx,
        );
    }

    fn finish_backward(&mut self, x: &Tensor, dy: &Tensor) {
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
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}
