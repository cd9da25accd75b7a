//! Flatten: (N, C, H, W) -> (N, C*H*W) in C, H, W order, as `torch.nn.Flatten`.
//! The data is already in that order, so forward and backward are copies.

use super::{Layer, Scratch};

pub struct Flatten {
    name: String,
    input: Vec<usize>,
    output: Vec<usize>,
    scratch: Vec<Scratch>,
}

impl Flatten {
    pub fn new(name: &str, input: &[usize]) -> Flatten {
        Flatten {
            name: name.to_string(),
            input: input.to_vec(),
            output: vec![input.iter().product()],
            scratch: Vec::new(),
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
    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.scratch
    }
    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], _s: &mut Scratch, _train: bool) {
        y.copy_from_slice(x);
    }
    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        _s: &mut Scratch,
    ) {
        if let Some(dx) = dx {
            dx.copy_from_slice(dy);
        }
    }
}
