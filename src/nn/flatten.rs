//! Flatten: `(N, C, H, W) -> (N, C*H*W)` in C, H, W order, as `torch.nn.Flatten`.
//!
//! The values are already in that order, so forward and backward only change the shape.

use super::{Layer, LayerKind, Mode};
use crate::tensor::Tensor;

/// A flatten layer.
pub struct Flatten {
    name: String,
    input: Vec<usize>,
    output: Vec<usize>,
}

impl Flatten {
    /// Flattens samples of shape `input`.
    pub fn new(name: &str, input: &[usize]) -> Flatten {
        Flatten {
            name: name.to_string(),
            input: input.to_vec(),
            output: vec![input.iter().product()],
        }
    }
}

impl Layer for Flatten {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Flatten
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Tensor {
        Tensor::from_vec(&[x.batch(), self.output[0]], x.data.clone())
    }
    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Tensor {
        Tensor::from_vec(&x.shape, dy.data.clone())
    }
}
