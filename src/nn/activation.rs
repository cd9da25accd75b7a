//! Element-wise activations: ReLU, Sigmoid, Tanh.
//!
//! ```text
//! x: (N, ...)   y: (N, ...) the same shape. The backward pass needs only y:
//!   ReLU     y = max(x, 0)         dx = dy * [y > 0]
//!   Sigmoid  y = 1 / (1 + e^-x)    dx = dy * y * (1 - y)
//!   Tanh     y = tanh(x)           dx = dy * (1 - y^2)
//! ```
//! The fast engine applies a ReLU inside the layer before it (`kernels/conv.rs`), with the
//! same comparison, so both give the same bits.

use super::{Layer, LayerKind, Mode};
use crate::tensor::Tensor;

/// Which function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationKind {
    /// max(x, 0)
    Relu,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh(x)
    Tanh,
}

impl ActivationKind {
    /// y for one x. The ReLU compares (`x > 0`) rather than calling `f32::max`, so NaN and
    /// -0 become +0 as in the vector kernels. Inlined into the fast kernels that apply a
    /// fused ReLU (`kernels/batchnorm.rs`), which vectorise it.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            ActivationKind::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            ActivationKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            ActivationKind::Tanh => x.tanh(),
        }
    }

    /// dx for one value, from its output y and gradient dy.
    #[inline]
    pub fn gradient(self, y: f32, dy: f32) -> f32 {
        match self {
            ActivationKind::Relu => {
                if y > 0.0 {
                    dy
                } else {
                    0.0
                }
            }
            ActivationKind::Sigmoid => dy * y * (1.0 - y),
            ActivationKind::Tanh => dy * (1.0 - y * y),
        }
    }
}

/// An activation layer.
pub struct Activation {
    name: String,
    /// Which function.
    pub kind: ActivationKind,
    shape: Vec<usize>,
}

impl Activation {
    /// An activation over samples of `shape`.
    pub fn new(name: &str, kind: ActivationKind, shape: &[usize]) -> Activation {
        Activation {
            name: name.to_string(),
            kind,
            shape: shape.to_vec(),
        }
    }
}

impl Layer for Activation {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        match self.kind {
            ActivationKind::Relu => LayerKind::Relu,
            ActivationKind::Sigmoid => LayerKind::Sigmoid,
            ActivationKind::Tanh => LayerKind::Tanh,
        }
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Tensor {
        let f = self.kind;
        Tensor::from_vec(&x.shape, x.data.iter().map(|&v| f.apply(v)).collect())
    }

    fn backward(&mut self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Tensor {
        let f = self.kind;
        let dx = y.data.iter().zip(&dy.data).map(|(&y, &d)| f.gradient(y, d));
        Tensor::from_vec(&y.shape, dx.collect())
    }
}
