//! The math, one screen per layer: each file holds a layer's forward and backward pass side
//! by side, in plain loops, with the shapes in its header. Every layer is checked against
//! finite differences, and a whole network trains on these layers alone
//! (`CONVNET_SIMD=reference`, or [`Engine::Reference`](crate::Engine)) — slowly, but
//! correctly. The fast kernels (`kernels/`) compute the same things and are tested against
//! these files; nothing here imports them.
//!
//! A layer sees whole batches: `forward(x, mode)` returns `y`; `backward(x, y, dy)` sets the
//! gradient of every parameter and returns `dx`. The loss (`loss.rs`) gives the first `dy`,
//! the optimiser (`optim.rs`) uses the gradients, `init.rs` draws the first weights.

// Index loops on purpose: each one mirrors a sum of the formula in its file's header.
#![allow(clippy::needless_range_loop)]

pub mod activation;
pub mod batchnorm;
pub mod conv2d;
pub mod dropout;
pub mod flatten;
pub mod init;
pub mod linear;
pub mod loss;
pub mod optim;
pub mod pool2d;

pub use activation::{Activation, ActivationKind};
pub use batchnorm::BatchNorm;
pub use conv2d::{Conv2d, ConvShape};
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use linear::Linear;
pub use pool2d::{Pool2d, PoolKind, PoolShape};

use crate::tensor::Tensor;

/// Whether a pass trains or evaluates. Training uses batch statistics and dropout and keeps
/// what the backward pass needs; evaluation uses running statistics and passes dropout by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A training pass, followed by a backward pass.
    Train,
    /// An evaluation pass: no backward pass follows.
    Eval,
}

/// The layer types a model spec can name, with the names a spec uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// `conv2d`
    Conv2d,
    /// `max_pool2d`
    MaxPool2d,
    /// `avg_pool2d`
    AvgPool2d,
    /// `relu`
    Relu,
    /// `sigmoid`
    Sigmoid,
    /// `tanh`
    Tanh,
    /// `flatten`
    Flatten,
    /// `linear`
    Linear,
    /// `dropout`
    Dropout,
    /// `batch_norm2d`
    BatchNorm2d,
    /// `batch_norm1d`
    BatchNorm1d,
}

impl LayerKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [LayerKind; 11] = [
        LayerKind::Conv2d,
        LayerKind::MaxPool2d,
        LayerKind::AvgPool2d,
        LayerKind::Relu,
        LayerKind::Sigmoid,
        LayerKind::Tanh,
        LayerKind::Flatten,
        LayerKind::Linear,
        LayerKind::Dropout,
        LayerKind::BatchNorm2d,
        LayerKind::BatchNorm1d,
    ];

    /// The name a model spec uses (`type = "conv2d"`).
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Conv2d => "conv2d",
            LayerKind::MaxPool2d => "max_pool2d",
            LayerKind::AvgPool2d => "avg_pool2d",
            LayerKind::Relu => "relu",
            LayerKind::Sigmoid => "sigmoid",
            LayerKind::Tanh => "tanh",
            LayerKind::Flatten => "flatten",
            LayerKind::Linear => "linear",
            LayerKind::Dropout => "dropout",
            LayerKind::BatchNorm2d => "batch_norm2d",
            LayerKind::BatchNorm1d => "batch_norm1d",
        }
    }

    /// The kind a spec's `type` names, if any.
    pub fn parse(name: &str) -> Option<LayerKind> {
        LayerKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a parameter is for: it decides how it starts and whether weight decay may skip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// A weight matrix or kernel: drawn from the initialisation, always decayed.
    Weight,
    /// A bias: starts at 0.
    Bias,
    /// Batch norm's per-channel scale (PyTorch's `weight`): starts at 1.
    NormScale,
    /// Batch norm's per-channel shift (PyTorch's `bias`): starts at 0.
    NormShift,
}

impl ParamRole {
    /// Whether `--no-bias-decay` exempts it from weight decay: everything but weights.
    pub fn decay_is_optional(self) -> bool {
        self != ParamRole::Weight
    }
}

/// A learnable tensor with its gradient, named as in PyTorch (`weight`, `bias`).
#[derive(Clone, Debug)]
pub struct Param {
    /// The name after the layer's: `conv1.weight` has `weight`.
    pub name: &'static str,
    /// What it is for.
    pub role: ParamRole,
    /// PyTorch's layout: `(O, C, K, K)` for a conv weight, `(OUT, IN)` for a linear one.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub value: Vec<f32>,
    /// dLoss/dvalue after a backward pass.
    pub grad: Vec<f32>,
}

impl Param {
    /// A parameter of zeros.
    pub fn new(name: &'static str, role: ParamRole, shape: &[usize]) -> Param {
        let n = shape.iter().product();
        Param {
            name,
            role,
            shape: shape.to_vec(),
            value: vec![0.0; n],
            grad: vec![0.0; n],
        }
    }
}

/// A saved tensor that is not learned: batch norm's running statistics.
pub enum Buffer<'a> {
    /// Float values under a name (`running_mean`).
    F32(&'static str, &'a [f32]),
    /// An integer scalar (PyTorch's `num_batches_tracked`).
    I64(&'static str, i64),
}

impl Buffer<'_> {
    /// The buffer's name after the layer's.
    pub fn name(&self) -> &'static str {
        match self {
            Buffer::F32(n, _) | Buffer::I64(n, _) => n,
        }
    }
}

/// A layer: shapes, a forward pass and its backward pass, and its parameters.
pub trait Layer: Send + Sync {
    /// The name in the model spec (`conv1`), used in parameter names (`conv1.weight`).
    fn name(&self) -> &str;
    /// The layer type.
    fn kind(&self) -> LayerKind;
    /// Per-sample input shape, e.g. `[1, 28, 28]`.
    fn input_shape(&self) -> &[usize];
    /// Per-sample output shape, e.g. `[8, 28, 28]`.
    fn output_shape(&self) -> &[usize];

    /// `y = f(x)` for a batch `x` of shape `(N, input_shape...)`.
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor;
    /// Given the batch `x`, its output `y` and `dy` = dLoss/dy: sets every parameter's
    /// gradient (overwriting it) and returns dLoss/dx.
    fn backward(&mut self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Tensor;

    /// The learnable parameters, weight first.
    fn params(&self) -> Vec<&Param> {
        Vec::new()
    }
    /// The same, to change.
    fn params_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }
    /// Saved state that is not learned (running statistics), named as in PyTorch.
    fn buffers(&self) -> Vec<Buffer<'_>> {
        Vec::new()
    }
    /// Restores a buffer by name: `values` for float buffers, `count` for integer ones.
    fn set_buffer(&mut self, _name: &str, _values: &[f32], _count: i64) {}
    /// Seeds the layer's randomness (dropout) for the next training pass.
    fn reseed(&mut self, _seed: u64) {}
}

/// The output tensor of a layer for a batch of `n`: `(n, shape...)`, zero-filled.
pub(crate) fn batch_of(n: usize, shape: &[usize]) -> Tensor {
    let mut dims = vec![n];
    dims.extend_from_slice(shape);
    Tensor::zeros(&dims)
}
