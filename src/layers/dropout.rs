//! Inverted dropout: during training each value is kept with probability 1 - p and scaled
//! by 1 / (1 - p), so evaluation (where the layer passes values through) needs no change.
//!
//! x: (N, ...)   y = x * mask / (1 - p)   dx = dy * mask / (1 - p)
//! The mask of chunk `c` of the batch is drawn from a generator seeded by (seed, c): the
//! trainer sets the seed every iteration (`Layer::reseed`), so a run is repeatable, a resumed
//! run draws the same masks, and repeated forward passes with one seed agree (which the
//! gradient check relies on).

use super::{Layer, CHUNK};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;

pub struct Dropout {
    name: String,
    p: f32,
    shape: Vec<usize>,
    seed: u64,
    /// The scale each value was multiplied by in the last training forward (0 or 1/(1-p)).
    scale: Vec<f32>,
    trained: bool,
}

impl Dropout {
    pub fn new(name: &str, p: f32, shape: &[usize]) -> Result<Dropout, String> {
        if !(0.0..1.0).contains(&p) {
            return Err(format!("dropout probability p must be in [0, 1), got {p}"));
        }
        Ok(Dropout {
            name: name.to_string(),
            p,
            shape: shape.to_vec(),
            seed: 0,
            scale: Vec::new(),
            trained: false,
        })
    }
}

impl Layer for Dropout {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "dropout"
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn output_shape(&self) -> &[usize] {
        &self.shape
    }
    fn geometry(&self) -> String {
        format!("p={}", self.p)
    }
    fn reseed(&mut self, seed: u64) {
        self.seed = seed;
    }

    fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool) {
        y.resize_batch(x.batch(), &self.shape);
        self.trained = train && self.p > 0.0;
        if !self.trained {
            y.data.copy_from_slice(&x.data);
            return;
        }
        let per = CHUNK * x.sample_len();
        let (keep, seed) = (1.0 - self.p, self.seed);
        let kept = 1.0 / keep;
        self.scale.resize(x.data.len(), 0.0);
        y.data
            .par_chunks_mut(per)
            .zip(x.data.par_chunks(per))
            .zip(self.scale.par_chunks_mut(per))
            .enumerate()
            .for_each(|(c, ((y, x), scale))| {
                let mut rng =
                    Pcg64Mcg::seed_from_u64(crate::train::derive_seed(seed, 11, c as u64));
                for ((y, &x), s) in y.iter_mut().zip(x).zip(scale.iter_mut()) {
                    *s = if rng.gen::<f32>() < keep { kept } else { 0.0 };
                    *y = x * *s;
                }
            });
    }

    fn backward(&mut self, x: &Tensor, _y: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) {
        let Some(dx) = dx else { return };
        dx.resize_batch(x.batch(), &self.shape);
        if !self.trained {
            dx.data.copy_from_slice(&dy.data);
            return;
        }
        for ((d, &g), &s) in dx.data.iter_mut().zip(&dy.data).zip(&self.scale) {
            *d = g * s;
        }
    }
}
