//! Layers. Each file holds one layer with its forward and backward passes side by side.
//!
//! A layer owns its parameters and gradients and, per chunk of the batch, the scratch it
//! needs between forward and backward (argmax positions, dropout masks, its share of the
//! weight gradient). The network owns the activations. Most layers work on one chunk of
//! `CHUNK` samples at a time (`forward_chunk` reads `x` and writes `y`; `backward_chunk`
//! reads `x`, `y` and `dy` and writes `dx` when asked); `forward` and `backward` run them
//! over a whole batch, which is how the tests and gradient checks call every layer.
//! Buffers are resized, never reallocated, once the largest batch has been seen.

pub mod activation;
pub mod batchnorm;
pub mod conv;
pub mod conv_direct;
pub mod dropout;
pub mod flatten;
pub mod linear;
pub mod pool;

pub use activation::{Activation, ActivationKind};
pub use batchnorm::BatchNorm;
pub use conv::{conv2d_backward_reference, conv2d_forward_reference, Conv2d};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use linear::Linear;
pub use pool::{Pool2d, PoolKind};

use crate::tensor::Tensor;
use rayon::prelude::*;

/// Images per chunk when a layer splits a batch across threads. Fixed, so the order in
/// which partial gradients are summed, and hence every bit of the result, does not
/// depend on the number of threads.
pub const CHUNK: usize = 8;

/// A learnable tensor with its gradient, named as in PyTorch (`weight`, `bias`).
#[derive(Clone, Debug)]
pub struct Param {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
    /// Biases are excluded from weight decay when the optimiser is told to.
    pub is_bias: bool,
}

impl Param {
    pub fn new(name: &'static str, shape: &[usize], is_bias: bool) -> Param {
        let n = shape.iter().product();
        Param {
            name,
            shape: shape.to_vec(),
            value: vec![0.0; n],
            grad: vec![0.0; n],
            is_bias,
        }
    }
}

/// A saved tensor that is not learned: batch-norm running statistics.
pub enum Buffer<'a> {
    F32(&'static str, &'a [f32]),
    /// An integer scalar (PyTorch's `num_batches_tracked`).
    I64(&'static str, i64),
}

impl Buffer<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Buffer::F32(n, _) | Buffer::I64(n, _) => n,
        }
    }
}

/// One chunk's working memory in one layer: what the forward pass leaves for the backward
/// pass (im2col columns, argmax positions, dropout masks) and the chunk's share of the
/// parameter gradients. A layer keeps one per chunk of the batch, reused between batches.
#[derive(Default)]
pub struct Scratch {
    /// Kept from forward to backward.
    pub saved: Vec<f32>,
    /// Temporary within one call.
    pub work: Vec<f32>,
    /// Kept positions (max pooling's winners).
    pub indices: Vec<u32>,
    /// This chunk's part of the parameter gradients (weight, then bias), summed over the
    /// chunks in order by `finish_backward`.
    pub grad: Vec<f32>,
    /// A training-mode forward filled `saved` and no backward has consumed it yet.
    pub ready: bool,
}

/// The slice of `data` that holds chunk `c` when every sample is `sample_len` values long.
pub fn chunk_of(data: &[f32], sample_len: usize, c: usize) -> &[f32] {
    let start = (c * CHUNK * sample_len).min(data.len());
    &data[start..(start + CHUNK * sample_len).min(data.len())]
}

pub trait Layer: Send + Sync {
    /// The name in the model spec (`conv1`), used in parameter names (`conv1.weight`).
    fn name(&self) -> &str;
    /// The layer type as written in a spec (`conv2d`).
    fn kind(&self) -> &'static str;
    /// Per-sample input shape, e.g. `[1, 28, 28]`.
    fn input_shape(&self) -> &[usize];
    /// Per-sample output shape, e.g. `[8, 28, 28]`.
    fn output_shape(&self) -> &[usize];
    /// Kernel / stride / pad summary for the layer table, empty when not applicable.
    fn geometry(&self) -> String {
        String::new()
    }
    /// Multiply-adds per sample in the forward pass.
    fn macs(&self) -> usize {
        0
    }

    // ---- The chunk interface: how the network runs a layer. ----
    //
    // A batch is cut into chunks of `CHUNK` samples. The network runs each chunk through
    // a whole run of layers on one thread (its activations stay in that core's cache),
    // chunks in parallel. Layers that need the whole batch at once (batch norm) say so
    // with `per_chunk() == false` and override `forward` and `backward` instead.

    /// Called once before a batch's chunks run forward, with the parameters as they are now
    /// (a linear layer refreshes its transposed copy of the weights here).
    fn prepare_forward(&mut self) {}
    /// Asks the layer to apply a ReLU to its own output while `on` (and to mask its output
    /// gradient with it in the backward pass), so the network can skip a ReLU layer that
    /// follows it. Returns whether the layer can; the default cannot.
    fn fuse_relu(&mut self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// Asks the layer to apply a 2x2, stride-2 max pool to its output (after the fused
    /// ReLU, if any) while `on`: `forward_chunk` then writes the pooled values, and
    /// `backward_chunk` takes their gradient, so the network can skip the pooling layer.
    /// Returns whether the layer can; the default cannot.
    fn fuse_max_pool(&mut self, on: bool) -> bool {
        let _ = on;
        false
    }
    /// Whether this is a 2x2, stride-2 max pool, the one `fuse_max_pool` applies.
    fn is_max_pool_2x2(&self) -> bool {
        false
    }
    /// Whether `forward_chunk` / `backward_chunk` are implemented.
    fn per_chunk(&self) -> bool {
        true
    }
    /// The layer's per-chunk working memory, one `Scratch` per chunk.
    fn scratch_mut(&mut self) -> &mut Vec<Scratch>;
    /// Forward pass of chunk `c`: `x` and `y` hold its samples only.
    fn forward_chunk(&self, c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, train: bool) {
        let _ = (c, x, y, s, train);
        unreachable!("{} runs on whole batches", self.name())
    }
    /// Backward pass of one chunk: writes `dx` (when wanted) and the chunk's share of the
    /// parameter gradients into `s.grad`.
    fn backward_chunk(
        &self,
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let _ = (x, y, dy, dx, s);
        unreachable!("{} runs on whole batches", self.name())
    }
    /// After every chunk's backward pass: the parameter gradients of the whole batch,
    /// from the chunks' parts or, where one product over the batch is faster (a linear
    /// layer's weight gradient), from `x` and `dy` directly.
    fn finish_backward(&mut self, x: &Tensor, dy: &Tensor) {
        let _ = (x, dy);
    }

    // ---- The whole-batch interface: tests, gradient checks, batch norm. ----

    /// Forward pass of a whole batch: `y = f(x)`.
    fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool) {
        let n = x.batch();
        y.resize_batch(n, self.output_shape());
        self.prepare_forward();
        let (xl, yl) = (x.sample_len(), y.sample_len());
        let mut scratch = std::mem::take(self.scratch_mut());
        grow_scratch(&mut scratch, n);
        let this = &*self;
        y.data
            .par_chunks_mut(CHUNK * yl)
            .zip(x.data.par_chunks(CHUNK * xl))
            .zip(scratch.par_iter_mut())
            .enumerate()
            .for_each(|(c, ((y, x), s))| this.forward_chunk(c, x, y, s, train));
        *self.scratch_mut() = scratch;
    }
    /// Backward pass of a whole batch: writes the parameter gradients (overwriting them)
    /// and, when `dx` is `Some`, the gradient with respect to the input.
    fn backward(&mut self, x: &Tensor, y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        let n = x.batch();
        let (xl, yl) = (x.sample_len(), y.sample_len());
        let mut scratch = std::mem::take(self.scratch_mut());
        grow_scratch(&mut scratch, n);
        let this = &*self;
        let run = |c: usize, dx: Option<&mut [f32]>, s: &mut Scratch| {
            let (x, y, dy) = (
                chunk_of(&x.data, xl, c),
                chunk_of(&y.data, yl, c),
                chunk_of(&dy.data, yl, c),
            );
            this.backward_chunk(x, y, dy, dx, s)
        };
        match dx {
            Some(dx) => {
                dx.resize_batch(n, self.input_shape());
                dx.data
                    .par_chunks_mut(CHUNK * xl)
                    .zip(scratch.par_iter_mut())
                    .enumerate()
                    .for_each(|(c, (dx, s))| run(c, Some(dx), s));
            }
            None => scratch
                .par_iter_mut()
                .take(n.div_ceil(CHUNK))
                .enumerate()
                .for_each(|(c, s)| run(c, None, s)),
        }
        *self.scratch_mut() = scratch;
        self.finish_backward(x, dy);
    }

    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }
    /// Visits the parameters mutably, in a fixed order (weight, then bias).
    fn visit_params_mut(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
    /// Saved state that is not learned (running statistics), named as in PyTorch.
    fn buffers(&self) -> Vec<Buffer<'_>> {
        Vec::new()
    }
    /// Restores a buffer by name: `values` for float buffers, `count` for integer ones.
    fn set_buffer(&mut self, _name: &str, _values: &[f32], _count: i64) {}
    /// Seeds the layer's randomness for the next forward pass (dropout).
    fn reseed(&mut self, _seed: u64) {}
}

/// The sum of `values`, in 16 interleaved partial sums added at the end. A plain `.sum()`
/// adds one value at a time, each waiting for the previous (float addition is not
/// reassociated by the compiler), which made a bias gradient cost more than the GEMM
/// beside it. The order is fixed, so the result is reproducible.
pub fn sum(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let mut blocks = values.chunks_exact(LANES);
    for block in &mut blocks {
        for (a, &v) in acc.iter_mut().zip(block) {
            *a += v;
        }
    }
    let tail: f32 = blocks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// Makes sure there is a `Scratch` for every chunk of an `n`-sample batch. Never shrinks,
/// so alternating batch sizes (training, then a larger evaluation batch) do not reallocate.
pub fn grow_scratch(scratch: &mut Vec<Scratch>, n: usize) {
    let chunks = n.div_ceil(CHUNK);
    if scratch.len() < chunks {
        scratch.resize_with(chunks, Scratch::default);
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
