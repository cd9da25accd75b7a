//! Finite-difference checks: every readable layer and loss, a whole network on the
//! reference engine, and the fused fast training path end to end.

use super::common::{check_layer, random, randomize_params, rel_err, rng, spread};
use crate::engine::{Engine, Network};
use crate::nn::loss::Loss;
use crate::nn::{
    Activation, ActivationKind, BatchNorm, Conv2d, ConvShape, Dropout, Flatten, Layer, Linear,
    Mode, Pool2d, PoolKind, PoolShape,
};
use crate::spec::ModelSpec;
use crate::tensor::Tensor;
use rand::Rng;

/// (batch, C, H, W, out channels, kernel, stride, pad): strides 1-3, pads 0-2, non-square
/// inputs, several channels, batches that do and do not fill the last chunk, a kernel as
/// large as the padded input.
pub const CONV_CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (9, 1, 3, 4, 8, 3, 1, 1),
    (2, 2, 3, 3, 2, 5, 1, 1),
    (2, 1, 5, 5, 2, 3, 1, 1),
    (3, 3, 7, 6, 4, 3, 2, 0),
    (2, 2, 6, 9, 3, 5, 1, 2),
    (1, 2, 8, 8, 3, 2, 2, 1),
    (2, 3, 5, 7, 2, 1, 1, 0),
    (2, 2, 9, 7, 3, 4, 3, 2),
    (11, 1, 4, 5, 2, 3, 2, 1),
    (2, 3, 6, 37, 5, 3, 1, 2),
    (3, 2, 5, 16, 3, 1, 1, 0),
    (2, 2, 4, 17, 6, 2, 1, 0),
];

#[test]
fn conv2d_gradients() {
    for (ci, &(n, c, h, w, o, k, s, p)) in CONV_CASES.iter().enumerate() {
        let mut r = rng(ci as u64);
        let g = ConvShape::new([c, h, w], o, k, s, p).unwrap();
        let mut layer = Conv2d::new("conv", g);
        randomize_params(&mut layer, &mut r);
        let x = random(&[n, c, h, w], &mut r);
        let what = format!("conv case {ci} {:?}", CONV_CASES[ci]);
        check_layer(&mut layer, &x, 100 + ci as u64, &what, Mode::Train);
    }
}

#[test]
fn linear_gradients() {
    for (i, &(n, fi, fo)) in [(1, 3, 2), (4, 7, 5), (11, 20, 33)].iter().enumerate() {
        let mut r = rng(200 + i as u64);
        let mut layer = Linear::new("fc", fi, fo);
        randomize_params(&mut layer, &mut r);
        let x = random(&[n, fi], &mut r);
        let what = format!("linear {n}x{fi}->{fo}");
        check_layer(&mut layer, &x, 300 + i as u64, &what, Mode::Train);
    }
}

/// (batch, C, H, W, kernel, stride): overlapping windows (stride < kernel), ragged edges.
pub const POOL_CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (2, 2, 4, 4, 2, 2),
    (1, 3, 7, 5, 3, 2),
    (3, 1, 6, 7, 2, 1),
    (9, 2, 5, 5, 3, 3),
    (10, 3, 7, 9, 2, 2),
];

#[test]
fn pooling_gradients() {
    for (i, &(n, c, h, w, k, s)) in POOL_CASES.iter().enumerate() {
        for kind in [PoolKind::Max, PoolKind::Avg] {
            let mut r = rng(400 + i as u64);
            let mut layer = Pool2d::new("pool", kind, PoolShape::new([c, h, w], k, s).unwrap());
            let x = spread(&[n, c, h, w], &mut r);
            let what = format!("{kind:?} pool case {i}");
            check_layer(&mut layer, &x, 500 + i as u64, &what, Mode::Train);
        }
    }
}

#[test]
fn max_pool_sends_the_gradient_of_a_tie_to_exactly_one_position() {
    // Every window is all ties; the first position (row-major) of each window wins.
    let shape = PoolShape::new([1, 4, 4], 2, 2).unwrap();
    let mut layer = Pool2d::new("pool", PoolKind::Max, shape);
    let x = Tensor::from_vec(&[1, 1, 4, 4], vec![1.0; 16]);
    let y = layer.forward(&x, Mode::Train);
    assert_eq!(y.data, vec![1.0; 4]);
    let dy = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let dx = layer.backward(&x, &y, &dy);
    #[rustfmt::skip]
    let want = vec![
        1.0, 0.0, 2.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
        3.0, 0.0, 4.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(dx.data, want);
    // A partial tie: the two maxima of the window are at positions 1 and 2; position 1 wins.
    let shape = PoolShape::new([1, 2, 2], 2, 2).unwrap();
    let mut layer = Pool2d::new("pool", PoolKind::Max, shape);
    let x = Tensor::from_vec(&[1, 1, 2, 2], vec![0.0, 5.0, 5.0, -1.0]);
    let y = layer.forward(&x, Mode::Train);
    let dy = Tensor::from_vec(&[1, 1, 1, 1], vec![1.0]);
    assert_eq!(layer.backward(&x, &y, &dy).data, vec![0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn activation_gradients() {
    for kind in [
        ActivationKind::Relu,
        ActivationKind::Sigmoid,
        ActivationKind::Tanh,
    ] {
        let mut r = rng(600);
        let mut layer = Activation::new("act", kind, &[3, 4, 5]);
        let x = spread(&[2, 3, 4, 5], &mut r);
        check_layer(&mut layer, &x, 601, &format!("{kind:?}"), Mode::Train);
    }
}

#[test]
fn flatten_gradient_and_order() {
    let mut r = rng(700);
    let mut layer = Flatten::new("flat", &[2, 3, 4]);
    let x = random(&[3, 2, 3, 4], &mut r);
    check_layer(&mut layer, &x, 701, "flatten", Mode::Train);
    let y = layer.forward(&x, Mode::Eval);
    assert_eq!(y.shape, vec![3, 24]);
    // (C, H, W) order: element (c=1, h=2, w=3) of sample 1 is feature 1*12 + 2*4 + 3.
    assert_eq!(y.data[24 + 23], x.data[24 + 12 + 8 + 3]);
}

#[test]
fn dropout_gradients_with_a_fixed_seed() {
    // With a fixed seed dropout is linear in x.
    let mut d = Dropout::new("drop", 0.5, &[3, 4, 4]);
    d.reseed(7);
    let x = random(&[11, 3, 4, 4], &mut rng(8));
    check_layer(&mut d, &x, 9, "dropout train", Mode::Train);
    check_layer(&mut d, &x, 9, "dropout eval", Mode::Eval);
}

#[test]
fn batch_norm_gradients_in_both_modes() {
    for (shape, n) in [(vec![3usize, 4, 5], 4usize), (vec![6], 7)] {
        for mode in [Mode::Train, Mode::Eval] {
            let mut bn = BatchNorm::new("bn", &shape, 1e-5, 0.1);
            randomize_params(&mut bn, &mut rng(1));
            // Give evaluation mode non-trivial running statistics.
            for (i, v) in bn.running_mean.iter_mut().enumerate() {
                *v = 0.1 * i as f32;
            }
            for (i, v) in bn.running_var.iter_mut().enumerate() {
                *v = 0.5 + 0.2 * i as f32;
            }
            let mut full = vec![n];
            full.extend(&shape);
            let x = random(&full, &mut rng(2));
            check_layer(
                &mut bn,
                &x,
                3,
                &format!("batch norm {shape:?} {mode:?}"),
                mode,
            );
        }
    }
}

#[test]
fn loss_gradients() {
    for loss in [Loss::SoftmaxCrossEntropy, Loss::Euclidean] {
        for smoothing in [0.0, 0.1] {
            let mut r = rng(800);
            let logits = random(&[5, 7], &mut r);
            let labels: Vec<u8> = (0..5).map(|_| r.gen_range(0..7)).collect();
            let mut grad = Tensor::default();
            let stats = loss.forward_backward(&logits, &labels, &mut grad, smoothing);
            let value = |z: &Tensor| loss.value_smoothed(z, &labels, smoothing);
            assert!((stats.mean_loss() - value(&logits)).abs() < 1e-9);
            let mut num = vec![0.0; logits.data.len()];
            let mut z = logits.clone();
            let h = 1e-3f32;
            for i in 0..z.data.len() {
                let o = z.data[i];
                z.data[i] = o + h;
                let up = value(&z);
                z.data[i] = o - h;
                let down = value(&z);
                z.data[i] = o;
                num[i] = (up - down) / (2.0 * h as f64);
            }
            let e = rel_err(&num, &grad.data);
            assert!(
                e < 1e-3,
                "{loss:?} smoothing {smoothing}: relative error {e}"
            );
        }
    }
    // Smoothing raises the loss of a confident right answer.
    let sure = Tensor::from_vec(&[1, 3], vec![10.0, 0.0, 0.0]);
    let plain = Loss::SoftmaxCrossEntropy.value_smoothed(&sure, &[0], 0.0);
    assert!(Loss::SoftmaxCrossEntropy.value_smoothed(&sure, &[0], 0.1) > plain + 0.5);
}

#[test]
fn softmax_cross_entropy_is_stable_for_huge_logits() {
    let logits = Tensor::from_vec(&[1, 3], vec![1000.0, 0.0, -1000.0]);
    let mut grad = Tensor::default();
    let s = Loss::SoftmaxCrossEntropy.forward_backward(&logits, &[1], &mut grad, 0.0);
    assert!((s.loss_sum - 1000.0).abs() < 1e-6, "loss {}", s.loss_sum);
    assert!(grad.data.iter().all(|g| g.is_finite()));
    assert!((grad.data[0] - 1.0).abs() < 1e-6 && (grad.data[1] + 1.0).abs() < 1e-6);
}

/// Where a network's piecewise-linear layers are on their pieces for input `x`: every
/// ReLU's output sign and every max pool's winning positions (from a pass that keeps each
/// layer's own output). Two parameter values with the same pattern lie on one linear piece
/// of those layers, where central differences are exact up to rounding and the smooth loss.
fn kink_pattern(net: &mut Network, x: &[f32], n: usize) -> Vec<u32> {
    net.keep_every_output = true;
    net.input_mut(n).copy_from_slice(x);
    net.forward(Mode::Eval);
    let mut out = Vec::new();
    for (i, r) in net.resolved().to_vec().iter().enumerate() {
        match r.op {
            crate::spec::LayerOp::Activation(ActivationKind::Relu) => {
                out.extend(net.activation(i).data.iter().map(|&v| u32::from(v > 0.0)));
            }
            crate::spec::LayerOp::Pool2d {
                kind: PoolKind::Max,
                shape,
            } => {
                let input = if i == 0 {
                    x.to_vec()
                } else {
                    net.activation(i - 1).data.clone()
                };
                for plane in input.chunks(shape.in_h * shape.in_w) {
                    for a in 0..shape.out_h {
                        for b in 0..shape.out_w {
                            out.push(shape.argmax(plane, a, b) as u32);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    net.keep_every_output = false;
    out
}

/// The loss gradient of every parameter of `net` (as `train_step` leaves it) against
/// central differences of the training-mode loss, step `h`, over the coordinates whose
/// nudges keep every ReLU and max pool on its piece (`kink_pattern`); returns the worst
/// relative error over the parameters and the smallest share of any parameter's
/// coordinates checked.
fn network_gradient_error(net: &mut Network, x: &[f32], labels: &[u8], h: f32) -> (f64, f64) {
    let n = labels.len();
    let loss = net.spec.loss;
    let loss_at = |net: &mut Network| {
        net.input_mut(n).copy_from_slice(x);
        let out = net.forward(Mode::Train).clone();
        loss.value(&out, labels)
    };
    let base = kink_pattern(net, x, n);
    net.input_mut(n).copy_from_slice(x);
    net.train_step(labels);
    let analytic: Vec<(String, Vec<f32>)> = net
        .named_params()
        .into_iter()
        .map(|(name, p)| (name, p.grad.clone()))
        .collect();
    let (mut worst, mut share) = (0.0f64, 1.0f64);
    for (pi, (name, ana)) in analytic.iter().enumerate() {
        let (mut num, mut kept) = (Vec::new(), Vec::new());
        for (i, &a) in ana.iter().enumerate() {
            net.params_mut()[pi].value[i] += h;
            let (up, up_pattern) = (loss_at(net), kink_pattern(net, x, n));
            net.params_mut()[pi].value[i] -= 2.0 * h;
            let (down, down_pattern) = (loss_at(net), kink_pattern(net, x, n));
            net.params_mut()[pi].value[i] += h;
            if up_pattern == base && down_pattern == base {
                num.push((up - down) / (2.0 * h as f64));
                kept.push(a);
            }
        }
        share = share.min(kept.len() as f64 / ana.len() as f64);
        let e = rel_err(&num, &kept);
        assert!(e.is_finite(), "{name}: no finite gradient");
        worst = worst.max(e);
        eprintln!(
            "{name}: relative error {e:.2e} over {} of {} values",
            kept.len(),
            ana.len()
        );
    }
    (worst, share)
}

/// A whole network on the reference engine: the layers' gradients wired together.
#[test]
fn reference_network_backpropagation_matches_finite_differences() {
    let spec = ModelSpec::from_toml(
        r#"
        name = "tiny"
        input = [1, 6, 6]
        [[layers]]
        name = "conv1"
        type = "conv2d"
        out_channels = 2
        kernel = 3
        pad = 1
        [[layers]]
        name = "act"
        type = "tanh"
        [[layers]]
        name = "pool"
        type = "avg_pool2d"
        kernel = 2
        [[layers]]
        name = "flatten"
        type = "flatten"
        [[layers]]
        name = "fc"
        type = "linear"
        out_features = 3
        "#,
        "test",
    )
    .unwrap();
    let mut net = Network::build_on(&spec, Engine::Reference).unwrap();
    net.initialize(&mut rng(5), None);
    let mut r = rng(6);
    let x: Vec<f32> = (0..3 * 36).map(|_| r.gen_range(-1.0..1.0)).collect();
    let (e, share) = network_gradient_error(&mut net, &x, &[0, 2, 1], 1e-2);
    assert_eq!(share, 1.0, "tanh and average pooling have no kinks");
    assert!(e < 5e-3, "relative error {e}");
}

/// The fused fast training path end to end: `train_step` on a seed-cnn-shaped network,
/// where each conv applies its ReLU and 2x2 max pool itself and the flatten is skipped,
/// against finite differences of the loss, on the coordinates whose nudges leave every ReLU
/// and pool decision as it was (most of them). Three times: thin convs (direct kernels); a
/// 16 -> 32 second conv, wide enough that it runs as Winograd: forward pass F(4x4, 3x3) with
/// the pool fused, input gradient F(4x4, 3x3) (its 4x4 planes are one tile) and (its outputs
/// filling whole vectors) the Winograd weight gradient; and the same without the second
/// pool, so the forward pass runs F(4x4, 3x3) unpooled.
#[test]
fn fused_fast_training_step_matches_finite_differences() {
    for (widths, pool2) in [((4, 5), true), ((16, 32), true), ((16, 32), false)] {
        fused_step_gradient_check(widths, pool2);
    }
}

fn fused_step_gradient_check((c1, c2): (usize, usize), pool2: bool) {
    let text = r#"
        name = "mini-seed"
        input = [1, 8, 8]
        [[layers]]
        name = "conv1"
        type = "conv2d"
        out_channels = C1
        kernel = 3
        pad = 1
        [[layers]]
        name = "relu1"
        type = "relu"
        [[layers]]
        name = "pool1"
        type = "max_pool2d"
        kernel = 2
        [[layers]]
        name = "conv2"
        type = "conv2d"
        out_channels = C2
        kernel = 3
        pad = 1
        [[layers]]
        name = "relu2"
        type = "relu"
        [[layers]]
        name = "pool2"
        type = "max_pool2d"
        kernel = 2
        [[layers]]
        name = "flatten"
        type = "flatten"
        [[layers]]
        name = "fc1"
        type = "linear"
        out_features = 12
        [[layers]]
        name = "relu3"
        type = "relu"
        [[layers]]
        name = "fc2"
        type = "linear"
        out_features = 10
        "#;
    let mut text = text
        .replace("C1", &c1.to_string())
        .replace("C2", &c2.to_string());
    if !pool2 {
        let pool = "[[layers]]\n        name = \"pool2\"\n        type = \"max_pool2d\"\n        kernel = 2\n";
        assert!(text.contains(pool));
        text = text.replace(pool, "");
    }
    let spec = ModelSpec::from_toml(&text, "test").unwrap();
    let mut net = Network::build_on(&spec, Engine::Fast).unwrap();
    if c2 == 32 {
        let paths = net.kernel_paths();
        // Pooled or not, 16x16 planes run F(4x4).
        let want = "forward and input gradient as Winograd F(4x4, 3x3)";
        assert!(
            paths.iter().any(|(l, p)| l == "conv2" && p.contains(want)),
            "{paths:?}"
        );
    }
    net.initialize(&mut rng(11), None);
    let mut r = rng(15);
    let n = 3;
    let x: Vec<f32> = (0..n * 64).map(|_| r.gen_range(-1.0..1.0)).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
    let (e, share) = network_gradient_error(&mut net, &x, &labels, 1e-3);
    net.input_mut(n).copy_from_slice(&x);
    net.train_step(&labels);
    // Every ReLU and pool ran inside its conv, and the flatten was skipped.
    let fused: &[(usize, usize)] = if pool2 {
        &[(1, 0), (2, 0), (4, 3), (5, 3), (6, 3)]
    } else {
        &[(1, 0), (2, 0), (4, 3)]
    };
    for &(i, host) in fused {
        assert_eq!(net.applied_by(i), Some(host), "layer {i} fused into {host}");
    }
    assert!(
        share >= 0.5,
        "only {:.0}% of a parameter's coordinates stayed on their pieces",
        100.0 * share
    );
    assert!(
        e < 1e-3,
        "widths {c1}, {c2}, pool2 {pool2}: worst relative error {e}"
    );
}
