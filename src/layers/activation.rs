//! Element-wise activations: ReLU, Sigmoid, Tanh.
//!
//! x: (N, ...)  y: (N, ...) same shape.  The backward pass uses y, not x:
//!   ReLU     y = max(x, 0)         dx = dy * [y > 0]
//!   Sigmoid  y = 1 / (1 + e^-x)    dx = dy * y * (1 - y)
//!   Tanh     y = tanh(x)           dx = dy * (1 - y^2)

use super::{Layer, Scratch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationKind {
    Relu,
    Sigmoid,
    Tanh,
}

pub struct Activation {
    name: String,
    kind: ActivationKind,
    shape: Vec<usize>,
    scratch: Vec<Scratch>,
}

impl Activation {
    pub fn new(name: &str, kind: ActivationKind, shape: &[usize]) -> Activation {
        Activation {
            name: name.to_string(),
            kind,
            shape: shape.to_vec(),
            scratch: Vec::new(),
        }
    }
}

impl Layer for Activation {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        match self.kind {
            ActivationKind::Relu => "relu",
            ActivationKind::Sigmoid => "sigmoid",
            ActivationKind::Tanh => "tanh",
        }
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn output_shape(&self) -> &[usize] {
        &self.shape
    }

    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.scratch
    }

    fn forward_chunk(&self, _c: usize, x: &[f32], y: &mut [f32], _s: &mut Scratch, _train: bool) {
        match self.kind {
            ActivationKind::Relu => {
                // A plain comparison (not f32::max, which must order NaN) vectorises.
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = if x > 0.0 { x } else { 0.0 };
                }
            }
            ActivationKind::Sigmoid => {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = 1.0 / (1.0 + (-x).exp());
                }
            }
            ActivationKind::Tanh => {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x.tanh();
                }
            }
        }
    }

    fn backward_chunk(
        &self,
        _x: &[f32],
        y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        _s: &mut Scratch,
    ) {
        let Some(dx) = dx else { return };
        let it = dx.iter_mut().zip(y.iter().zip(dy));
        match self.kind {
            ActivationKind::Relu => {
                for (dx, (&y, &dy)) in it {
                    *dx = if y > 0.0 { dy } else { 0.0 };
                }
            }
            ActivationKind::Sigmoid => {
                for (dx, (&y, &dy)) in it {
                    *dx = dy * y * (1.0 - y);
                }
            }
            ActivationKind::Tanh => {
                for (dx, (&y, &dy)) in it {
                    *dx = dy * (1.0 - y * y);
                }
            }
        }
    }
}
