//! The fast fully connected layer: what `nn::Linear` computes, with GEMM calls.
//!
//! ```text
//! y  = x . w^T + b     per chunk of rows, from a transposed copy of w (IN, OUT)
//! dx = dy . w          per chunk of rows
//! dw = dy^T . x        once over the whole batch, in fixed blocks of 64 rows of w
//! db = sum over N of dy
//! ```
//! Each value is computed the same way whatever the thread count.

use super::gemm::{sgemm, sgemm_ld, Backend};
use super::simd;
use super::PreparedFrom;
use rayon::prelude::*;

/// Rows of `w` per parallel task in the weight-gradient GEMM. Each task reads all of `x`:
/// 64 rows run cnn-plus's fc1 at 76 GFLOP/s against 49 for 16 (`cargo bench --bench
/// gemm`, one thread), at the price of fewer tasks than 16 would give a many-core CPU.
const OUT_BLOCK: usize = 64;

/// The fast path of one linear layer: the transposed weights.
pub struct FastLinear {
    in_features: usize,
    out_features: usize,
    /// The weights transposed, (IN, OUT), refreshed before every forward pass: the GEMM
    /// crate multiplies x . w^T about three times faster from this layout than through a
    /// transposed stride (cargo bench --bench gemm, fc1 shapes).
    weight_t: Vec<f32>,
    /// The weights `weight_t` holds, when an evaluation pass made it (`prepare_forward`).
    made_from: PreparedFrom,
}

impl FastLinear {
    /// The fast path of an `in_features` to `out_features` layer.
    pub fn new(in_features: usize, out_features: usize) -> FastLinear {
        FastLinear {
            in_features,
            out_features,
            weight_t: vec![0.0; in_features * out_features],
            made_from: PreparedFrom::default(),
        }
    }

    /// Once before a batch's chunks run forward, with the weights as they are now.
    pub fn prepare(&mut self, weight: &[f32]) {
        // Serial, before the chunks start: 8 x 8 blocks in registers take fc1's 100k
        // weights in ≈ 11 µs against 56 µs for a scalar blocked loop.
        let (fi, fo) = (self.in_features, self.out_features);
        simd::transpose(simd::detect(), weight, fo, fi, &mut self.weight_t);
        self.made_from.forget();
    }

    /// `prepare` for an evaluation pass: nothing to do when `weight` is what the last one
    /// prepared (the passes over a validation or test set). fc1's 401k weights took 0.24 ms
    /// to transpose and take about 0.06 to compare.
    pub fn prepare_forward(&mut self, weight: &[f32]) {
        if !self.made_from.matches(weight, 0) {
            self.prepare(weight);
            self.made_from.remember(weight, 0);
        }
    }

    /// `y = x . w^T + b` for one chunk of rows.
    pub fn forward_chunk(&self, bias: &[f32], x: &[f32], y: &mut [f32]) {
        let (fi, fo) = (self.in_features, self.out_features);
        let rows = x.len() / fi;
        for row in y.chunks_mut(fo) {
            row.copy_from_slice(bias);
        }
        // y += x (rows, IN) . w^T (IN, OUT)
        sgemm(rows, fi, fo, 1.0, x, false, &self.weight_t, false, 1.0, y);
    }

    /// `dx = dy . w` for one chunk of rows. The weight gradient is one product over the
    /// whole batch (`weight_gradient`), which keeps the GEMM's inner dimension long.
    pub fn input_gradient(&self, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (fi, fo) = (self.in_features, self.out_features);
        let rows = dy.len() / fo;
        sgemm(rows, fo, fi, 1.0, dy, false, weight, false, 0.0, dx);
    }

    /// `dw = dy^T . x` and `db = sum(dy)` over a batch of `n` rows.
    pub fn weight_gradient(&self, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
        let (fi, fo) = (self.in_features, self.out_features);
        dw.par_chunks_mut(OUT_BLOCK * fi)
            .zip(db.par_chunks_mut(OUT_BLOCK))
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
                    (&dy[o0..], fo, true),
                    (x, fi, false),
                    0.0,
                    (dw, fi),
                );
                for (j, d) in db.iter_mut().enumerate() {
                    *d = (0..n).map(|i| dy[i * fo + o0 + j]).sum();
                }
            });
    }
}
