//! Finite-difference gradient checks for every layer and both losses, and every way a
//! convolution can run (im2col + GEMM, the direct vector kernels) against the plain
//! reference loops.
//!
//! Each layer is checked on the scalar L = sum(r * y) for a fixed random r, so dL/dy = r.
//! Central differences in f32 with step 1e-2 (conv, linear and pooling are piecewise linear,
//! so the step adds no truncation error); the check is on the relative error of the whole
//! gradient, ||num - ana|| / (||num|| + ||ana||) < 2e-3.

#![allow(clippy::needless_range_loop, clippy::type_complexity)]

use convnet::layers::conv::ConvGeometry;
use convnet::layers::{conv2d_backward_reference, conv2d_forward_reference};
use convnet::layers::{
    Activation, ActivationKind, Conv2d, Flatten, Layer, Linear, Pool2d, PoolKind, Scratch,
};
use convnet::loss::Loss;
use convnet::simd::{self, Isa};
use convnet::Tensor;
use rand::Rng;

mod common;
use common::{check_layer, random, randomize_params, rel_err, rng, spread};

/// (batch, C, H, W, out channels, kernel, stride, pad): strides 1-3, pads 0-2, non-square
/// inputs, several channels, batches that do and do not fill the last chunk; stride 1 takes
/// the wide im2col path, including a case with more weights than padded input values (the
/// two share a scratch area) and a kernel as large as the padded input.
const CONV_CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
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

/// The ways a convolution can run here: im2col + GEMM (`None`), and the direct path on
/// every vector unit this CPU has (stride 1 only).
fn conv_paths(g: &ConvGeometry) -> Vec<Option<Isa>> {
    let mut paths = vec![None];
    if g.stride == 1 {
        paths.extend(simd::supported().into_iter().map(Some));
    }
    paths
}

#[test]
fn conv2d_gradients() {
    for (ci, &(n, c, h, w, o, k, s, p)) in CONV_CASES.iter().enumerate() {
        let mut r = rng(ci as u64);
        let g = ConvGeometry::new([c, h, w], o, k, s, p).unwrap();
        let mut layer = Conv2d::new("conv", g);
        randomize_params(&mut layer, &mut r);
        let x = random(&[n, c, h, w], &mut r);
        for path in conv_paths(&g) {
            layer.set_direct(path);
            check_layer(
                &mut layer,
                &x,
                100 + ci as u64,
                &format!("conv case {ci} {:?} on {path:?}", CONV_CASES[ci]),
            );
        }
    }
}

#[test]
fn conv2d_every_path_matches_the_reference() {
    for (ci, &(n, c, h, w, o, k, s, p)) in CONV_CASES.iter().enumerate() {
        let g = ConvGeometry::new([c, h, w], o, k, s, p).unwrap();
        for path in conv_paths(&g) {
            for relu in [false, true] {
                let case = format!("case {ci} on {path:?}, fused ReLU {relu}");
                let mut r = rng(50 + ci as u64);
                let mut layer = Conv2d::new("conv", g);
                layer.set_direct(path);
                assert_eq!(layer.direct(), path);
                layer.fuse_relu(relu);
                randomize_params(&mut layer, &mut r);
                let x = random(&[n, c, h, w], &mut r);
                let mut y = Tensor::default();
                layer.forward(&x, &mut y, true);
                let (wv, bv) = (layer.weight.value.clone(), layer.bias.value.clone());
                let mut want = conv2d_forward_reference(&g, &x.data, &wv, &bv, n);
                if relu {
                    want.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                assert_eq!(y.data.len(), want.len());
                for (a, b) in y.data.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "{case}: forward {a} vs {b}");
                }
                let dy = random(&y.shape, &mut r);
                let mut dx = Tensor::default();
                layer.backward(&x, &y, &dy, Some(&mut dx));
                // The fused ReLU's backward: the gradient passes where the output is positive.
                let mut dy_in = dy.data.clone();
                if relu {
                    for (d, &y) in dy_in.iter_mut().zip(&want) {
                        if y <= 0.0 {
                            *d = 0.0;
                        }
                    }
                }
                let (rdx, rdw, rdb) = conv2d_backward_reference(&g, &x.data, &wv, &dy_in, n);
                for (name, got, want) in [
                    ("dx", &dx.data, &rdx),
                    ("dw", &layer.weight.grad, &rdw),
                    ("db", &layer.bias.grad, &rdb),
                ] {
                    assert_eq!(got.len(), want.len(), "{case}: {name} length");
                    for (a, b) in got.iter().zip(want.iter()) {
                        assert!(
                            (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                            "{case}: {name} {a} vs {b}"
                        );
                    }
                }
                // Evaluation mode gives the same output.
                let mut y_eval = Tensor::default();
                layer.forward(&x, &mut y_eval, false);
                assert_eq!(y_eval, y, "{case}: eval-mode forward differs");
            }
        }
    }
}

#[test]
fn conv2d_is_bit_identical_across_thread_counts() {
    let g = ConvGeometry::new([3, 12, 12], 5, 3, 1, 1).unwrap();
    let mut r = rng(9);
    let x = random(&[37, 3, 12, 12], &mut r);
    let dy = random(&[37, 5, 12, 12], &mut r);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut layer = Conv2d::new("conv", g);
            randomize_params(&mut layer, &mut rng(1));
            let (mut y, mut dx) = (Tensor::default(), Tensor::default());
            layer.forward(&x, &mut y, true);
            layer.backward(&x, &y, &dy, Some(&mut dx));
            (
                y.data,
                dx.data,
                layer.weight.grad.clone(),
                layer.bias.grad.clone(),
            )
        })
    };
    assert_eq!(run(1), run(2));
    assert_eq!(run(1), run(3));
}

#[test]
fn linear_gradients() {
    for (i, &(n, fi, fo)) in [(1, 3, 2), (4, 7, 5), (11, 20, 33)].iter().enumerate() {
        let mut r = rng(200 + i as u64);
        let mut layer = Linear::new("fc", fi, fo);
        randomize_params(&mut layer, &mut r);
        let x = random(&[n, fi], &mut r);
        check_layer(
            &mut layer,
            &x,
            300 + i as u64,
            &format!("linear {n}x{fi}->{fo}"),
        );
    }
}

#[test]
fn pooling_gradients() {
    // (batch, C, H, W, kernel, stride): overlapping (stride < kernel) and ragged edges.
    for (i, &(n, c, h, w, k, s)) in [
        (2, 2, 4, 4, 2, 2),
        (1, 3, 7, 5, 3, 2),
        (3, 1, 6, 7, 2, 1),
        (9, 2, 5, 5, 3, 3),
    ]
    .iter()
    .enumerate()
    {
        for kind in [PoolKind::Max, PoolKind::Avg] {
            let mut r = rng(400 + i as u64);
            let mut layer = Pool2d::new("pool", kind, [c, h, w], k, s).unwrap();
            let x = spread(&[n, c, h, w], &mut r);
            check_layer(
                &mut layer,
                &x,
                500 + i as u64,
                &format!("{kind:?} pool case {i}"),
            );
        }
    }
}

#[test]
fn max_pool_sends_the_gradient_of_a_tie_to_exactly_one_position() {
    // Every window is all ties; the first position (row-major) of each window wins.
    let mut layer = Pool2d::new("pool", PoolKind::Max, [1, 4, 4], 2, 2).unwrap();
    let x = Tensor::from_vec(&[1, 1, 4, 4], vec![1.0; 16]);
    let mut y = Tensor::default();
    layer.forward(&x, &mut y, true);
    assert_eq!(y.data, vec![1.0; 4]);
    let dy = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let mut dx = Tensor::default();
    layer.backward(&x, &y, &dy, Some(&mut dx));
    #[rustfmt::skip]
    let want = vec![
        1.0, 0.0, 2.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
        3.0, 0.0, 4.0, 0.0,
        0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(dx.data, want);
    // A partial tie: the two maxima of the window are at positions 1 and 2; position 1 wins.
    let x = Tensor::from_vec(&[1, 1, 2, 2], vec![0.0, 5.0, 5.0, -1.0]);
    let mut layer = Pool2d::new("pool", PoolKind::Max, [1, 2, 2], 2, 2).unwrap();
    layer.forward(&x, &mut y, true);
    let dy = Tensor::from_vec(&[1, 1, 1, 1], vec![1.0]);
    layer.backward(&x, &y, &dy, Some(&mut dx));
    assert_eq!(dx.data, vec![0.0, 1.0, 0.0, 0.0]);
}

/// A conv with the ReLU and max pool after it fused (`fuse_relu`, `fuse_max_pool`) gives
/// the same bits as conv, ReLU and pooling layer one after another, ties included: inputs
/// and weights are small integers, so many windows hold equal values, and each window's
/// first position must win, as in `Pool2d`.
#[test]
fn a_conv_with_its_max_pool_fused_matches_the_separate_layers() {
    let (n, c, h, w) = (3, 2, 7, 6);
    let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7) % 3) as f32).collect();
    let x = Tensor::from_vec(&[n, c, h, w], x);
    // Stride 2 runs im2col + GEMM with the plain (not wide) column layout.
    for (k, pad, stride) in [(1, 0, 1), (3, 1, 1), (2, 0, 1), (3, 1, 2), (1, 0, 2)] {
        let g = ConvGeometry::new([c, h, w], 3, k, stride, pad).unwrap();
        let (ph, pw) = (g.out_h / 2, g.out_w / 2);
        let weights: Vec<f32> = (0..3 * c * k * k).map(|i| ((i % 3) as f32) - 1.0).collect();
        let dy: Vec<f32> = (0..n * 3 * ph * pw).map(|i| 1.0 + i as f32).collect();
        for path in conv_paths(&g) {
            for relu in [false, true] {
                let case = format!("kernel {k} pad {pad} stride {stride} on {path:?}, ReLU {relu}");
                let new_conv = || {
                    let mut conv = Conv2d::new("conv", g);
                    conv.set_direct(path);
                    conv.weight.value.copy_from_slice(&weights);
                    conv.bias.value.copy_from_slice(&[0.0, 0.5, -1.0]);
                    conv
                };
                // The separate layers.
                let mut conv = new_conv();
                let mut act = Activation::new("relu", ActivationKind::Relu, &[3, g.out_h, g.out_w]);
                let mut pool =
                    Pool2d::new("pool", PoolKind::Max, [3, g.out_h, g.out_w], 2, 2).unwrap();
                let (mut y1, mut y2, mut y3) =
                    (Tensor::default(), Tensor::default(), Tensor::default());
                conv.forward(&x, &mut y1, true);
                let pooled_input = if relu {
                    act.forward(&y1, &mut y2, true);
                    &y2
                } else {
                    &y1
                };
                pool.forward(pooled_input, &mut y3, true);
                let dy3 = Tensor::from_vec(&y3.shape, dy.clone());
                let (mut d2, mut d1, mut dx) =
                    (Tensor::default(), Tensor::default(), Tensor::default());
                pool.backward(pooled_input, &y3, &dy3, Some(&mut d2));
                if relu {
                    act.backward(&y1, &y2, &d2, Some(&mut d1));
                } else {
                    d1 = d2;
                }
                conv.backward(&x, &y1, &d1, Some(&mut dx));

                // Fused, one chunk.
                let mut fused = new_conv();
                fused.fuse_relu(relu);
                assert!(fused.fuse_max_pool(true));
                // As the network does before a batch's chunks run.
                fused.prepare_forward();
                let mut scratch = Scratch::default();
                let mut y = vec![0.0; y3.data.len()];
                fused.forward_chunk(0, &x.data, &mut y, &mut scratch, true);
                assert_eq!(y, y3.data, "{case}: pooled output");
                let mut fdx = vec![0.0; x.data.len()];
                fused.backward_chunk(&x.data, &y, &dy, Some(&mut fdx), &mut scratch);
                let wn = conv.weight.value.len();
                assert_eq!(fdx, dx.data, "{case}: dx");
                assert_eq!(&scratch.grad[..wn], &conv.weight.grad[..], "{case}: dw");
                assert_eq!(&scratch.grad[wn..], &conv.bias.grad[..], "{case}: db");
            }
        }
    }
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
        check_layer(&mut layer, &x, 601, &format!("{kind:?}"));
    }
}

#[test]
fn flatten_gradient_and_order() {
    let mut r = rng(700);
    let mut layer = Flatten::new("flat", &[2, 3, 4]);
    let x = random(&[3, 2, 3, 4], &mut r);
    check_layer(&mut layer, &x, 701, "flatten");
    let mut y = Tensor::default();
    layer.forward(&x, &mut y, false);
    assert_eq!(y.shape, vec![3, 24]);
    // (C, H, W) order: element (c=1, h=2, w=3) of sample 1 is feature 1*12 + 2*4 + 3.
    assert_eq!(y.data[24 + 23], x.data[24 + 12 + 8 + 3]);
}

#[test]
fn loss_gradients() {
    for loss in [Loss::SoftmaxCrossEntropy, Loss::Euclidean] {
        let mut r = rng(800);
        let logits = random(&[5, 7], &mut r);
        let labels: Vec<u8> = (0..5).map(|_| r.gen_range(0..7)).collect();
        let mut grad = Tensor::default();
        let stats = loss.forward_backward(&logits, &labels, &mut grad, 0.0);
        assert!((stats.mean_loss() - loss.value(&logits, &labels)).abs() < 1e-9);
        let mut num = vec![0.0; logits.data.len()];
        let mut z = logits.clone();
        let h = 1e-3f32;
        for i in 0..z.data.len() {
            let o = z.data[i];
            z.data[i] = o + h;
            let up = loss.value(&z, &labels);
            z.data[i] = o - h;
            let down = loss.value(&z, &labels);
            z.data[i] = o;
            num[i] = (up - down) / (2.0 * h as f64);
        }
        let e = rel_err(&num, &grad.data);
        assert!(e < 1e-3, "{loss:?}: relative error {e}");
    }
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

/// The whole seed-cnn shape in miniature: checks that the network wires the layers'
/// gradients together (the loss gradient of a conv weight against finite differences).
#[test]
fn network_backpropagation_matches_finite_differences() {
    let spec = convnet::ModelSpec::from_toml(
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
    let mut net = convnet::Network::build(&spec).unwrap();
    net.initialize(&mut rng(5), None);
    let mut r = rng(6);
    let x: Vec<f32> = (0..3 * 36).map(|_| r.gen_range(-1.0..1.0)).collect();
    let labels = [0u8, 2, 1];
    let loss_at = |net: &mut convnet::Network| {
        net.input_mut(3).copy_from_slice(&x);
        let out = net.forward(true).clone();
        Loss::SoftmaxCrossEntropy.value(&out, &labels)
    };
    loss_at(&mut net);
    net.backward(&labels);
    let mut analytic = Vec::new();
    net.visit_params_mut(|_, layer, p| {
        analytic.push((format!("{layer}.{}", p.name), p.grad.clone()))
    });
    for (pi, (name, ana)) in analytic.iter().enumerate() {
        let mut num = vec![0.0; ana.len()];
        for i in 0..ana.len() {
            let nudge = |net: &mut convnet::Network, d: f32| {
                net.visit_params_mut(|k, _, p| {
                    if k == pi {
                        p.value[i] += d;
                    }
                })
            };
            let h = 1e-2;
            nudge(&mut net, h);
            let up = loss_at(&mut net);
            nudge(&mut net, -2.0 * h);
            let down = loss_at(&mut net);
            nudge(&mut net, h);
            num[i] = (up - down) / (2.0 * h as f64);
        }
        let e = rel_err(&num, ana);
        assert!(e < 5e-3, "{name}: relative error {e}");
    }
}
