//! Inverted dropout: during training each value is kept with probability 1 - p and scaled
//! by 1 / (1 - p), so evaluation (where the layer passes values through) needs no change.
//!
//! x: (N, ...)   y = x * mask / (1 - p)   dx = dy * mask / (1 - p)
//! The mask of chunk `c` of the batch is drawn from a generator seeded by (seed, c): the
//! trainer sets the seed every iteration (`Layer::reseed`), so a run is repeatable, a resumed
//! run draws the same masks, and repeated forward passes with one seed agree (which the
//! gradient check relies on).

use super::{Layer, Scratch};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

pub struct Dropout {
    name: String,
    p: f32,
    shape: Vec<usize>,
    seed: u64,
    scratch: Vec<Scratch>,
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
            scratch: Vec::new(),
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

    fn scratch_mut(&mut self) -> &mut Vec<Scratch> {
        &mut self.scratch
    }

    fn forward_chunk(&self, c: usize, x: &[f32], y: &mut [f32], s: &mut Scratch, train: bool) {
        // `saved`: the scale each value was multiplied by (0 or 1/(1-p)).
        s.ready = train && self.p > 0.0;
        if !s.ready {
            y.copy_from_slice(x);
            return;
        }
        let keep = 1.0 - self.p;
        let kept = 1.0 / keep;
        s.saved.resize(x.len(), 0.0);
        let mut rng = Pcg64Mcg::seed_from_u64(crate::train::derive_seed(self.seed, 11, c as u64));
        for ((y, &x), m) in y.iter_mut().zip(x).zip(s.saved.iter_mut()) {
            *m = if rng.gen::<f32>() < keep { kept } else { 0.0 };
            *y = x * *m;
        }
    }

    fn backward_chunk(
        &self,
        _x: &[f32],
        _y: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        s: &mut Scratch,
    ) {
        let Some(dx) = dx else { return };
        if !s.ready {
            dx.copy_from_slice(dy);
            return;
        }
        for ((d, &g), &m) in dx.iter_mut().zip(dy).zip(&s.saved) {
            *d = g * m;
        }
    }
}
