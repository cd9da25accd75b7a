//! The speed: the same math as `nn/`, rearranged for the CPU. Each file opens with the
//! readable function it replaces and is tested against it (forward, input gradient,
//! weight gradient), bit for bit where the order of the sums is the same and to a stated
//! tolerance where it is not.
//!
//! | file | replaces | how |
//! |---|---|---|
//! | `conv.rs` | `nn::Conv2d` (+ the ReLU and 2x2 max pool after it) | direct vector kernels or im2col + GEMM, per chunk of images, with the ReLU and pool applied on the output rows |
//! | `conv_direct.rs` | the conv's inner sums | AVX-512 / AVX2 kernels reading the padded input in place |
//! | `winograd.rs` | a wide 3x3 conv's forward pass and input gradient | Winograd F(2x2, 3x3): transformed tiles, 16 products on the direct kernels, the ReLU and pool on the way out |
//! | `winograd4.rs` | the same, for planes where it takes fewer products | Winograd F(4x4, 3x3)'s transforms (one, two or four tile rows a vector, by the plane's width): 36 products per 16 outputs instead of 64, through `winograd.rs`'s `convolve` |
//! | `winograd_dw.rs` | a wide 3x3 conv's weight gradient | Winograd F(2x2, 3x3), or F(4x4, 3x3) where it takes at most 2/3 of the products: the tiles as the contraction, the output channels in the lanes |
//! | `im2col.rs` | the conv's loops over the window | unfolding into columns for one GEMM |
//! | `pool.rs` | `nn::Pool2d` | a vector 2x2 max pool; the plain loops per chunk otherwise |
//! | `linear.rs` | `nn::Linear` | GEMM calls on a transposed copy of the weights |
//! | `batchnorm.rs` | `nn::BatchNorm` (+ the ReLU after it) | per chunk inside the pipeline: statistics and gradient sums per chunk in f64, combined in chunk order at the batch's barrier |
//! | `gemm.rs` | — | the one place that calls a GEMM crate |
//! | `simd.rs` | — | run-time choice of AVX-512 / AVX2 and the vector operations used |
//!
//! Kernels work on chunks of a batch handed out by the engine (`engine/pipeline.rs`), and
//! keep what a chunk needs between its forward and backward pass in a [`Scratch`].

pub mod batchnorm;
pub mod conv;
pub mod conv_direct;
pub mod gemm;
pub mod im2col;
pub mod linear;
pub mod pool;
pub mod simd;
pub mod winograd;
pub mod winograd4;
pub mod winograd_dw;

use rayon::prelude::*;

/// One chunk's working memory in one layer: what the forward pass leaves for the backward
/// pass (padded images, argmax positions, dropout masks) and the chunk's share of the
/// parameter gradients. The engine keeps one per chunk of the batch and layer, reused
/// between batches.
#[derive(Default)]
pub struct Scratch {
    /// Kept from forward to backward.
    pub saved: Vec<f32>,
    /// Temporary within one call (and, for the direct conv, the padded input kept for the
    /// backward pass).
    pub work: Vec<f32>,
    /// Kept positions (max pooling's winners).
    pub indices: Vec<u32>,
    /// This chunk's part of the parameter gradients (weight, then bias), summed over the
    /// chunks in order once every chunk is done.
    pub grad: Vec<f32>,
    /// Sums in f64 (batch norm: the chunk's statistics in the forward pass, its gradient
    /// sums in the backward pass).
    pub sums: Vec<f64>,
    /// A training-mode forward filled `saved` and no backward has consumed it yet.
    pub ready: bool,
}

/// The sum of `values`, in 16 interleaved partial sums added at the end. A plain `.sum()`
/// adds one value at a time, each waiting for the previous (float addition is not
/// reassociated by the compiler), which made a bias gradient cost more than the GEMM
/// beside it. The order is fixed, so the result is reproducible.
/// Compiled for the best vector unit (`on_best_isa`): the baseline copy has only 128-bit
/// vectors, and summing the conv bias gradients took 1.5% of a cnn-plus training profile.
pub fn sum(values: &[f32]) -> f32 {
    let mut total = 0.0;
    sum_kernel(simd::detect(), values, &mut total);
    total
}

simd::on_best_isa! {
    fn sum_kernel(values: &[f32], total: &mut f32) {
        const LANES: usize = 16;
        let mut acc = [0.0f32; LANES];
        let mut blocks = values.chunks_exact(LANES);
        for block in &mut blocks {
            for (a, &v) in acc.iter_mut().zip(block) {
                *a += v;
            }
        }
        let tail: f32 = blocks.remainder().iter().sum();
        *total = acc.iter().sum::<f32>() + tail;
    }
}

/// `out = parts[0] + parts[1] + ...` over the first `chunks` scratches' `grad`, in order, so
/// the sum is the same for any thread count.
pub fn sum_chunk_grads(scratch: &[Scratch], chunks: usize, out: &mut [&mut [f32]]) {
    let mut offset = 0;
    for o in out.iter_mut() {
        let len = o.len();
        o.copy_from_slice(&scratch[0].grad[offset..offset + len]);
        for s in &scratch[1..chunks] {
            for (o, p) in o.iter_mut().zip(&s.grad[offset..offset + len]) {
                *o += p;
            }
        }
        offset += len;
    }
}

/// The weights (and a `key` for anything else they depend on) from which a layer last
/// made the copies its forward pass reads (transposed, Winograd-transformed), so an
/// evaluation pass on unchanged weights reuses them. Making them is serial, before the
/// chunks start: 0.57 ms of each 6.4 ms cnn-plus evaluation batch of 128 on an AMD EPYC
/// (Zen 4), with the other thread idle. Compared bit for bit, so a changed weight, a NaN or
/// a zero's sign is never missed; training passes, which change the weights every step,
/// `forget` instead of keeping a copy.
#[derive(Default)]
pub(crate) struct PreparedFrom {
    weights: Vec<f32>,
    key: Option<usize>,
}

impl PreparedFrom {
    /// Whether the copies were made from exactly `weights` with `key`.
    /// Large layers compare in parallel: fc1's 1.6 MB took 0.14 ms on one thread.
    pub fn matches(&self, weights: &[f32], key: usize) -> bool {
        const PIECE: usize = 1 << 15;
        self.key == Some(key)
            && self.weights.len() == weights.len()
            && (self.weights.par_chunks(PIECE))
                .zip(weights.par_chunks(PIECE))
                .all(|(a, b)| as_bytes(a) == as_bytes(b))
    }

    /// Records that the copies are now made from `weights` with `key`.
    pub fn remember(&mut self, weights: &[f32], key: usize) {
        self.weights.clear();
        self.weights.extend_from_slice(weights);
        self.key = Some(key);
    }

    /// The copies are made from weights not recorded: the next `matches` is false.
    pub fn forget(&mut self) {
        self.key = None;
    }
}

/// The bytes of `v`: compared as bytes (a `memcmp`), floats equal only if their bits are.
fn as_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Makes `v` at least `len` long; never shrinks it, so what it holds survives.
pub(crate) fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}
