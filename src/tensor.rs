//! The tensor type: a flat `Vec<f32>` with a shape, row-major (NCHW for images).
//!
//! Buffers are reused from batch to batch: `resize` keeps the allocation, so no tensor is
//! reallocated once the largest batch has been seen. (The engine still builds a few short
//! lists of per-chunk slices each pass; see `engine/pipeline.rs`.)

use std::fmt;

/// A tensor: a shape and its values, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    /// The shape, batch first.
    pub shape: Vec<usize>,
    /// The values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// A tensor of these values; panics unless their number matches the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match {} values",
            data.len()
        );
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Resizes to `[batch, sample_shape...]`, keeping the allocation when it is big enough.
    /// The contents are unspecified afterwards; layers overwrite them.
    pub fn resize_batch(&mut self, batch: usize, sample_shape: &[usize]) {
        if self.shape.len() != sample_shape.len() + 1
            || self.shape[0] != batch
            || self.shape[1..] != *sample_shape
        {
            self.shape.clear();
            self.shape.push(batch);
            self.shape.extend_from_slice(sample_shape);
        }
        let len = batch * sample_shape.iter().product::<usize>();
        self.data.resize(len, 0.0);
    }

    /// Number of samples (the first dimension).
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }

    /// Values per sample.
    pub fn sample_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// The values of sample `i`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let n = self.sample_len();
        &self.data[i * n..(i + 1) * n]
    }
}

/// A per-sample shape printed the way a layer table shows it: `16x7x7`.
pub struct ShapeDisplay<'a>(pub &'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        write!(f, "{}", parts.join("x"))
    }
}
