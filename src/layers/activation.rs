//! Element-wise activations: ReLU, Sigmoid, Tanh.
//!
//! x: (N, ...)  y: (N, ...) same shape.  The backward pass uses y, not x:
//!   ReLU     y = max(x, 0)         dx = dy * [y > 0]
//!   Sigmoid  y = 1 / (1 + e^-x)    dx = dy * y * (1 - y)
//!   Tanh     y = tanh(x)           dx = dy * (1 - y^2)

use super::Layer;
use crate::tensor::Tensor;
use rayon::prelude::*;

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
}

/// Element-wise work is split into pieces this long so small tensors stay on one thread.
const PIECE: usize = 1 << 15;

impl Activation {
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

    fn forward(&mut self, x: &Tensor, y: &mut Tensor, _train: bool) {
        y.resize_batch(x.batch(), &self.shape);
        let kind = self.kind;
        y.data
            .par_chunks_mut(PIECE)
            .zip(x.data.par_chunks(PIECE))
            .for_each(|(y, x)| match kind {
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
            });
    }

    fn backward(&mut self, x: &Tensor, y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        let Some(dx) = dx else { return };
        dx.resize_batch(x.batch(), &self.shape);
        let kind = self.kind;
        dx.data
            .par_chunks_mut(PIECE)
            .zip(y.data.par_chunks(PIECE).zip(dy.data.par_chunks(PIECE)))
            .for_each(|(dx, (y, dy))| {
                let it = dx.iter_mut().zip(y.iter().zip(dy));
                match kind {
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
            });
    }
}
