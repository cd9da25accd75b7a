//! Layers. Each file holds one layer with its `forward` and `backward` side by side.
//!
//! A layer owns its parameters and gradients and the scratch it needs between forward
//! and backward (im2col columns, argmax positions). The network owns the activations:
//! `forward` reads `x` and writes `y`; `backward` reads `x`, `y` and `dy` and writes `dx`
//! (when asked) and the parameter gradients. Buffers are resized, never reallocated, once
//! the largest batch has been seen.

pub mod activation;
pub mod batchnorm;
pub mod conv;
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

pub trait Layer: Send {
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
    fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool);
    /// Writes the parameter gradients (overwriting them) and, when `dx` is `Some`, the
    /// gradient with respect to the input.
    fn backward(&mut self, x: &Tensor, y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>);
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
