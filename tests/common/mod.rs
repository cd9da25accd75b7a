//! Shared by the gradient-check tests: random tensors and the finite-difference check.
//!
//! Each layer is checked on the scalar L = sum(r * y) for a fixed random r, so dL/dy = r.
//! Central differences in f32 with step 1e-2; the check is on the relative error of the
//! whole gradient, ||num - ana|| / (||num|| + ||ana||) < 2e-3.

#![allow(dead_code, clippy::needless_range_loop)]

use convnet::layers::Layer;
use convnet::Tensor;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

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

fn objective(layer: &mut dyn Layer, x: &Tensor, r: &Tensor, train: bool) -> f64 {
    let mut y = Tensor::default();
    layer.forward(x, &mut y, train);
    y.data
        .iter()
        .zip(&r.data)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

/// Checks dx and every parameter gradient of `layer` at input `x`, in training mode.
pub fn check_layer(layer: &mut dyn Layer, x: &Tensor, seed: u64, what: &str) {
    check_layer_in_mode(layer, x, seed, what, true)
}

/// Checks dx and every parameter gradient of `layer` at input `x`, in training or
/// evaluation mode.
pub fn check_layer_in_mode(layer: &mut dyn Layer, x: &Tensor, seed: u64, what: &str, train: bool) {
    let mut r = rng(seed);
    let mut y = Tensor::default();
    layer.forward(x, &mut y, train);
    let dy = random(&y.shape, &mut r);
    let mut dx = Tensor::default();
    layer.backward(x, &y, &dy, Some(&mut dx));
    assert_eq!(dx.shape, x.shape, "{what}: dx shape");

    let mut num = vec![0.0f64; x.data.len()];
    let mut xp = x.clone();
    for i in 0..x.data.len() {
        let orig = xp.data[i];
        xp.data[i] = orig + EPS;
        let up = objective(layer, &xp, &dy, train);
        xp.data[i] = orig - EPS;
        let down = objective(layer, &xp, &dy, train);
        xp.data[i] = orig;
        num[i] = (up - down) / (2.0 * EPS as f64);
    }
    let e = rel_err(&num, &dx.data);
    assert!(e < 2e-3, "{what}: dx relative error {e}");

    let mut grads: Vec<Vec<f32>> = Vec::new();
    layer.visit_params_mut(&mut |p| grads.push(p.grad.clone()));
    for (pi, ana) in grads.iter().enumerate() {
        let mut num = vec![0.0f64; ana.len()];
        for i in 0..ana.len() {
            let nudge = |layer: &mut dyn Layer, delta: f32| {
                let mut k = 0;
                layer.visit_params_mut(&mut |p| {
                    if k == pi {
                        p.value[i] += delta;
                    }
                    k += 1;
                });
            };
            nudge(layer, EPS);
            let up = objective(layer, x, &dy, train);
            nudge(layer, -2.0 * EPS);
            let down = objective(layer, x, &dy, train);
            nudge(layer, EPS);
            num[i] = (up - down) / (2.0 * EPS as f64);
        }
        let e = rel_err(&num, ana);
        assert!(e < 2e-3, "{what}: parameter {pi} relative error {e}");
    }
}

pub fn randomize_params(layer: &mut dyn Layer, r: &mut Pcg64Mcg) {
    layer.visit_params_mut(&mut |p| {
        for v in &mut p.value {
            *v = r.gen_range(-0.5..0.5);
        }
    });
}
