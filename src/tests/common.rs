//! Shared by the tests: random tensors, the finite-difference check, the data sets.
//!
//! Each layer is checked on the scalar L = sum(r * y) for a fixed random r, so dL/dy = r.
//! Central differences in f32 with step 1e-2 (conv, linear and pooling are piecewise
//! linear, so the step adds no truncation error); the check is on the relative error of
//! the whole gradient, ||num - ana|| / (||num|| + ||ana||) < 2e-3.

use crate::nn::{Layer, Mode};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::path::PathBuf;

pub fn rng(seed: u64) -> Pcg64Mcg {
    Pcg64Mcg::seed_from_u64(seed)
}

pub fn random(shape: &[usize], r: &mut Pcg64Mcg) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect())
}

/// Values spread apart (and away from zero) so no step of size `EPS` crosses a kink
/// of ReLU or changes the winner of a max-pool window.
pub fn spread(shape: &[usize], r: &mut Pcg64Mcg) -> Tensor {
    let n: usize = shape.iter().product();
    let mut vals: Vec<f32> = (0..n)
        .map(|i| (i as f32 + 0.5) * 0.05 - n as f32 * 0.025)
        .collect();
    for i in (1..n).rev() {
        vals.swap(i, r.gen_range(0..=i));
    }
    Tensor::from_vec(shape, vals)
}

pub const EPS: f32 = 1e-2;

pub fn rel_err(num: &[f64], ana: &[f32]) -> f64 {
    let diff: f64 = num
        .iter()
        .zip(ana)
        .map(|(n, a)| (n - *a as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = num.iter().map(|n| n * n).sum::<f64>().sqrt()
        + ana.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        0.0
    } else {
        diff / norm
    }
}

fn objective(layer: &mut dyn Layer, x: &Tensor, r: &Tensor, mode: Mode) -> f64 {
    let y = layer.forward(x, mode);
    y.data
        .iter()
        .zip(&r.data)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

/// Checks dx and every parameter gradient of `layer` at input `x` in `mode`.
pub fn check_layer(layer: &mut dyn Layer, x: &Tensor, seed: u64, what: &str, mode: Mode) {
    let mut r = rng(seed);
    let y = layer.forward(x, mode);
    let dy = random(&y.shape, &mut r);
    let dx = layer.backward(x, &y, &dy);
    assert_eq!(dx.shape, x.shape, "{what}: dx shape");

    let mut num = vec![0.0f64; x.data.len()];
    let mut xp = x.clone();
    for i in 0..x.data.len() {
        let orig = xp.data[i];
        xp.data[i] = orig + EPS;
        let up = objective(layer, &xp, &dy, mode);
        xp.data[i] = orig - EPS;
        let down = objective(layer, &xp, &dy, mode);
        xp.data[i] = orig;
        num[i] = (up - down) / (2.0 * EPS as f64);
    }
    let e = rel_err(&num, &dx.data);
    assert!(e < 2e-3, "{what}: dx relative error {e}");

    let grads: Vec<Vec<f32>> = layer.params().iter().map(|p| p.grad.clone()).collect();
    for (pi, ana) in grads.iter().enumerate() {
        let mut num = vec![0.0f64; ana.len()];
        for i in 0..ana.len() {
            let nudge = |layer: &mut dyn Layer, delta: f32| {
                layer.params_mut()[pi].value[i] += delta;
            };
            nudge(layer, EPS);
            let up = objective(layer, x, &dy, mode);
            nudge(layer, -2.0 * EPS);
            let down = objective(layer, x, &dy, mode);
            nudge(layer, EPS);
            num[i] = (up - down) / (2.0 * EPS as f64);
        }
        let e = rel_err(&num, ana);
        assert!(e < 2e-3, "{what}: parameter {pi} relative error {e}");
    }
}

pub fn randomize_params(layer: &mut dyn Layer, r: &mut Pcg64Mcg) {
    for p in layer.params_mut() {
        for v in &mut p.value {
            *v = r.gen_range(-0.5..0.5);
        }
    }
}

/// Where the data sets are: `$CONVNET_DATA`, which tests needing them require.
#[allow(dead_code)]
pub fn data_root() -> PathBuf {
    let root: PathBuf = std::env::var("CONVNET_DATA")
        .expect("CONVNET_DATA must point at the data sets (see .ci/run)")
        .into();
    assert!(
        root.join("mnist").is_dir(),
        "CONVNET_DATA={} holds no mnist/ folder: the data-set tests need it",
        root.display()
    );
    root
}

/// The largest |a - b| / (1 + |b|) over two slices of the same length.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f32::max)
}
