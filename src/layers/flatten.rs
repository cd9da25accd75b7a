//! Flatten: (N, C, H, W) -> (N, C*H*W) in C, H, W order, as `torch.nn.Flatten`.
//! The data is already in that order, so forward and backward are copies.

use super::Layer;
use crate::tensor::Tensor;

pub struct Flatten {
    name: String,
    input: Vec<usize>,
    output: Vec<usize>,
}

impl Flatten {
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
    fn kind(&self) -> &'static str {
        "flatten"
    }
    fn input_shape(&self) -> &[usize] {
        &self.input
    }
    fn output_shape(&self) -> &[usize] {
        &self.output
    }
    fn forward(&mut self, x: &Tensor, y: &mut Tensor, _train: bool) {
        y.resize_batch(x.batch(), &self.output);
        y.data.copy_from_slice(&x.data);
    }
    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        if let Some(dx) = dx {
            dx.resize_batch(x.batch(), &self.input);
            dx.data.copy_from_slice(&dy.data);
        }
    }
}
