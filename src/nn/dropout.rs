//! Inverted dropout, as `torch.nn.Dropout`: in training each value is kept with
//! probability 1 - p and scaled by 1 / (1 - p), so evaluation, where the layer passes
//! values through, needs no change.
//!
//! ```text
//! x: (N, ...)   mask: 0 or 1 / (1 - p) per value
//! forward:  y  = x * mask
//! backward: dx = dy * mask
//! ```
//! The masks are drawn for groups of [`GROUP`] samples, each group from its own generator
//! seeded by (layer seed, group): the fast engine runs groups on different threads and
//! draws the same masks. The trainer reseeds the layer every iteration, so a run repeats,
//! a resumed run draws the same masks, and two passes with one seed agree (the gradient
//! check relies on it).

use super::{Layer, LayerKind, Mode};
use crate::seed::{derive_seed, STREAM_DROPOUT};
use crate::tensor::Tensor;
use rand::{RngCore, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Samples per group of masks drawn from one generator.
pub const GROUP: usize = 8;

/// A dropout layer.
pub struct Dropout {
    name: String,
    /// The probability of dropping a value, in [0, 1).
    pub p: f32,
    shape: Vec<usize>,
    seed: u64,
    /// The last training pass's mask, for the backward pass.
    mask: Vec<f32>,
}

impl Dropout {
    /// Dropout with probability `p` over samples of `shape`.
    pub fn new(name: &str, p: f32, shape: &[usize]) -> Dropout {
        Dropout {
            name: name.to_string(),
            p,
            shape: shape.to_vec(),
            seed: 0,
            mask: Vec::new(),
        }
    }

    /// The mask for the samples of group `group`, `len` values: 0 or 1 / (1 - p) each.
    /// A value is kept when 24 random bits, read as a fraction, fall below 1 - p (the
    /// precision of a random `f32`); each 64-bit draw gives two values' bits. The draws
    /// of a block are made first, then turned into mask values: the generator's chain of
    /// multiplications then runs on its own (twice as fast as drawing inside the loop), and
    /// whole pairs, with the odd last value apart, again twice as fast as testing each pair
    /// for a second value.
    pub fn group_mask(p: f32, seed: u64, group: usize, mask: &mut [f32]) {
        let kept = 1.0 / (1.0 - p);
        // bits / 2^24 < 1 - p exactly when bits < ceil((1 - p) * 2^24).
        let below = ((1.0 - p) as f64 * (1u64 << 24) as f64).ceil() as u64;
        let value = |bits: u64| if bits < below { kept } else { 0.0 };
        let mut rng = Pcg64Mcg::seed_from_u64(derive_seed(seed, STREAM_DROPOUT, group as u64));
        let mut draws = [0u64; 128];
        for block in mask.chunks_mut(2 * draws.len()) {
            let draws = &mut draws[..block.len().div_ceil(2)];
            draws.iter_mut().for_each(|d| *d = rng.next_u64());
            let mut pairs = block.chunks_exact_mut(2);
            for (pair, &r) in (&mut pairs).zip(draws.iter()) {
                pair[0] = value((r >> 8) & 0xff_ffff);
                pair[1] = value(r >> 40);
            }
            // An odd block's last value: the low half of its last draw.
            if let ([last], Some(&r)) = (pairs.into_remainder(), draws.last()) {
                *last = value((r >> 8) & 0xff_ffff);
            }
        }
    }

    /// The layer's seed for the next training pass.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Layer for Dropout {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> LayerKind {
        LayerKind::Dropout
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn output_shape(&self) -> &[usize] {
        &self.shape
    }
    fn reseed(&mut self, seed: u64) {
        self.seed = seed;
    }

    fn forward(&mut self, x: &Tensor, mode: Mode) -> Tensor {
        if mode == Mode::Eval || self.p == 0.0 {
            self.mask.clear();
            return x.clone();
        }
        let per_group = GROUP * x.sample_len();
        self.mask.resize(x.data.len(), 0.0);
        for (g, m) in self.mask.chunks_mut(per_group).enumerate() {
            Dropout::group_mask(self.p, self.seed, g, m);
        }
        let y = x.data.iter().zip(&self.mask).map(|(&x, &m)| x * m);
        Tensor::from_vec(&x.shape, y.collect())
    }

    fn backward(&mut self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Tensor {
        if self.mask.is_empty() {
            return dy.clone();
        }
        let dx = dy.data.iter().zip(&self.mask).map(|(&d, &m)| d * m);
        Tensor::from_vec(&dy.shape, dx.collect())
    }
}
