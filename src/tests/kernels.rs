//! Every fast kernel against the readable layer it replaces: forward, input gradient,
//! weight gradient, batch-norm statistics; bit for bit where the order of the sums is the
//! same, to a stated tolerance where it is not.

use super::common::{max_rel_diff, random, randomize_params, rng, spread};
use super::gradcheck::{CONV_CASES, POOL_CASES};
use crate::engine::pipeline::{Alone, CHUNK};
use crate::kernels::conv::{FastConv, WeightGrad};
use crate::kernels::simd::{self, Isa};
use crate::kernels::winograd::Tile;
use crate::kernels::{sum_chunk_grads, Scratch};
use crate::nn::{
    ActivationKind, Conv2d, ConvShape, Layer, LayerKind, Mode, Pool2d, PoolKind, PoolShape,
};
use crate::spec::{LayerSpec, ModelSpec};
use crate::tensor::Tensor;

/// The ways a convolution can run here: im2col + GEMM (`None`), and the direct path on
/// every vector unit this CPU has (stride 1 only), with its exact shifted sums, and for
/// 3x3 kernels with the forward pass (and for pad <= 2 the input gradient) as Winograd
/// F(2x2, 3x3) (`winograd`) or, where it takes fewer products, F(4x4, 3x3)
/// (`four`), and with the weight gradient's output channels in the lanes, as dots or as
/// Winograd (`dw`), where they fill whole vectors.
#[derive(Clone, Copy, Debug)]
struct ConvPath {
    isa: Option<Isa>,
    winograd: bool,
    four: bool,
    dw: WeightGrad,
}

fn conv_paths(g: &ConvShape) -> Vec<ConvPath> {
    let path = |isa, winograd, four, dw| ConvPath {
        isa,
        winograd,
        four,
        dw,
    };
    let mut paths = vec![path(None, false, false, WeightGrad::ShiftedDots)];
    // F(4x4) where the forward pass's or input gradient's planes take fewer products so.
    let fours: &[bool] = if Tile::four_pays(g.out_h, g.out_w) || Tile::four_pays(g.in_h, g.in_w) {
        &[false, true]
    } else {
        &[false]
    };
    if g.stride == 1 {
        for isa in simd::supported() {
            paths.push(path(Some(isa), false, false, WeightGrad::ShiftedDots));
            if g.kernel == 3 {
                for &four in fours {
                    paths.push(path(Some(isa), true, four, WeightGrad::ShiftedDots));
                }
                if g.out_c.is_multiple_of(isa.lanes()) {
                    for dw in [WeightGrad::LaneDots, WeightGrad::Winograd] {
                        paths.push(path(Some(isa), false, false, dw));
                        for &four in fours {
                            paths.push(path(Some(isa), true, four, dw));
                        }
                    }
                }
            }
        }
    }
    paths
}

/// `FastConv` for `g` on `path`.
fn fast_conv_on(g: ConvShape, p: ConvPath) -> FastConv {
    let mut fast = FastConv::new(g);
    fast.set_direct(p.isa).unwrap();
    fast.set_winograd(p.winograd).unwrap();
    fast.set_weight_grad(p.dw).unwrap();
    fast.set_winograd_four(p.four);
    fast.set_winograd_four_pooled(p.four);
    assert_eq!(
        (fast.direct(), fast.winograd(), fast.weight_grad()),
        (p.isa, p.winograd, p.dw)
    );
    fast
}

/// Shapes beyond the gradient checks' small ones: channels enough for Winograd by
/// default, odd sizes (a half-outside last tile), pads 0 to 3 (3: a Winograd forward pass
/// with a direct input gradient), chunks of several images in one Winograd group, and
/// output channels in whole vectors (8, 16, 32, 48, 64: the lane weight gradient, 48 being
/// a pair of AVX-512 vectors and one more, 64 four) with odd sizes and pads 0 to 2; 13x11 planes
/// (42 tiles) make a chunk of 8 two groups of images for the Winograd weight gradient, and
/// a 1x1 plane is one tile, mostly outside.
const WIDE_CONV_CASES: &[(usize, usize, usize, usize, usize, usize, usize, usize)] = &[
    (3, 16, 14, 14, 32, 3, 1, 1),
    (2, 9, 7, 5, 10, 3, 1, 0),
    (2, 8, 5, 6, 8, 3, 1, 2),
    (2, 8, 4, 5, 9, 3, 1, 3),
    (21, 8, 7, 7, 12, 3, 1, 1),
    (2, 5, 7, 5, 16, 3, 1, 0),
    (9, 3, 6, 7, 16, 3, 1, 2),
    (2, 8, 6, 5, 48, 3, 1, 1),
    (9, 8, 13, 11, 16, 3, 1, 1),
    (3, 8, 1, 1, 16, 3, 1, 1),
    // 64 outputs: the Winograd weight gradient's blocks of four vectors (13 = 6 + 6 + 1
    // input channels).
    (2, 13, 6, 7, 64, 3, 1, 1),
    // Whole 4x4 tiles for F(4x4, 3x3): cnn-plus's conv2 (7 tiles a row: two rows a vector
    // on AVX-512, one on AVX2); 9 tiles a row (a vector and part of one on AVX-512); pad 0
    // (F(4x4) forward, F(2x2) input gradient) and pad 2 (the other way round); 21 images
    // of 4 tiles each, so a group holds many images.
    (2, 16, 28, 28, 32, 3, 1, 1),
    (2, 8, 8, 36, 16, 3, 1, 1),
    (3, 9, 10, 10, 8, 3, 1, 0),
    (2, 8, 8, 12, 12, 3, 1, 2),
    (21, 8, 8, 8, 12, 3, 1, 1),
];

/// The fast conv over a whole batch, chunk by chunk as the engine runs it; returns y and
/// the scratches (for the backward pass).
fn fast_conv_forward(
    fast: &mut FastConv,
    conv: &Conv2d,
    x: &Tensor,
    out_len: usize,
    mode: Mode,
) -> (Vec<f32>, Vec<Scratch>) {
    // As the engine does: an evaluation pass prepares only what a forward pass reads.
    match mode {
        Mode::Train => fast.prepare(&conv.weight.value),
        Mode::Eval => fast.prepare_forward(&conv.weight.value),
    }
    let n = x.batch();
    let in_len = x.sample_len();
    let mut y = vec![f32::NAN; n * out_len];
    let mut scratch: Vec<Scratch> = (0..n.div_ceil(CHUNK)).map(|_| Scratch::default()).collect();
    let params = (&conv.weight.value[..], &conv.bias.value[..]);
    for (c, s) in scratch.iter_mut().enumerate() {
        let (a, b) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
        let (xs, ys) = (
            &x.data[a * in_len..b * in_len],
            &mut y[a * out_len..b * out_len],
        );
        fast.forward_chunk(params, xs, ys, s, mode);
    }
    (y, scratch)
}

/// The fast conv's backward pass over a whole batch: (dx, dw, db).
fn fast_conv_backward(
    fast: &FastConv,
    conv: &Conv2d,
    x: &Tensor,
    y: &[f32],
    dy: &[f32],
    scratch: &mut [Scratch],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = x.batch();
    let in_len = x.sample_len();
    let out_len = y.len() / n;
    let mut dx = vec![f32::NAN; x.data.len()];
    let params = (&conv.weight.value[..], &conv.bias.value[..]);
    for (c, s) in scratch.iter_mut().enumerate() {
        let (a, b) = (c * CHUNK, ((c + 1) * CHUNK).min(n));
        let (ys, dys) = (&y[a * out_len..b * out_len], &dy[a * out_len..b * out_len]);
        let dxs = &mut dx[a * in_len..b * in_len];
        fast.backward_chunk(
            params,
            &x.data[a * in_len..b * in_len],
            ys,
            dys,
            Some(dxs),
            s,
        );
    }
    let (mut dw, mut db) = (
        vec![0.0; conv.weight.value.len()],
        vec![0.0; conv.bias.value.len()],
    );
    sum_chunk_grads(scratch, scratch.len(), &mut [&mut dw[..], &mut db[..]]);
    (dx, dw, db)
}

/// im2col + GEMM and the direct AVX-512 and AVX2 kernels, with and without the fused ReLU,
/// against `nn::Conv2d` (f64 sums): forward, dx, dw and db within 1e-4 relative.
#[test]
fn every_conv_path_matches_the_readable_conv() {
    for (ci, &(n, c, h, w, o, k, s, p)) in CONV_CASES.iter().chain(WIDE_CONV_CASES).enumerate() {
        let g = ConvShape::new([c, h, w], o, k, s, p).unwrap();
        let mut r = rng(50 + ci as u64);
        let mut conv = Conv2d::new("conv", g);
        randomize_params(&mut conv, &mut r);
        let x = random(&[n, c, h, w], &mut r);
        let want_y = conv.forward(&x, Mode::Train);
        let dy = random(&want_y.shape, &mut r);
        for path in conv_paths(&g) {
            for relu in [false, true] {
                let case = format!("case {ci} on {path:?}, fused ReLU {relu}");
                let mut fast = fast_conv_on(g, path);
                fast.set_relu(relu);
                let (y, mut scratch) =
                    fast_conv_forward(&mut fast, &conv, &x, g.out_len(), Mode::Train);
                let f = ActivationKind::Relu;
                let want: Vec<f32> = if relu {
                    want_y.data.iter().map(|&v| f.apply(v)).collect()
                } else {
                    want_y.data.clone()
                };
                let e = max_rel_diff(&y, &want);
                // F(4x4)'s float error is about 20 times F(2x2)'s (`winograd4.rs`).
                let tol = if fast.forward_tile() == Some(Tile::F4) {
                    5e-5
                } else {
                    1e-5
                };
                assert!(e < tol, "{case}: forward differs by {e}");
                let (y_eval, _) = fast_conv_forward(&mut fast, &conv, &x, g.out_len(), Mode::Eval);
                assert_eq!(y_eval, y, "{case}: evaluation forward differs");
                // The evaluation-only prepare left the input gradient's copies stale.
                fast.prepare(&conv.weight.value);
                // The fused ReLU's backward: the gradient passes where the output is positive.
                let dy_in: Vec<f32> = if relu {
                    dy.data
                        .iter()
                        .zip(&y)
                        .map(|(&d, &y)| f.gradient(y, d))
                        .collect()
                } else {
                    dy.data.clone()
                };
                let (dx, dw, db) = fast_conv_backward(&fast, &conv, &x, &y, &dy.data, &mut scratch);
                let want_dx = conv.backward(&x, &want_y, &Tensor::from_vec(&dy.shape, dy_in));
                for (name, got, want) in [
                    ("dx", &dx, &want_dx.data),
                    ("dw", &dw, &conv.weight.grad),
                    ("db", &db, &conv.bias.grad),
                ] {
                    let e = max_rel_diff(got, want);
                    // F(4x4)'s weight gradient sums its larger error over every tile.
                    let tol = if name == "dw" && fast.dw_tile() == Some(Tile::F4) {
                        4e-4
                    } else {
                        1e-4
                    };
                    assert!(e < tol, "{case}: {name} differs by {e}");
                }
            }
        }
    }
}

/// F(4x4, 3x3) tiles hanging over a plane's end (7x6 and 13x14 outputs: 2 and 1 rows or
/// columns past it) read zeros there, whatever the memory past the padded plane holds: the
/// outputs, plain and pooled, have the same bits with NaN or with zeros past each plane,
/// and no NaN. (The conv-path test checks them against the readable conv.)
#[test]
fn overhanging_four_by_four_tiles_read_nothing_past_the_plane() {
    use crate::kernels::winograd::{self, Finish, Source};
    use rand::Rng;
    for (c, o, out) in [(3, 5, (7, 6)), (4, 16, (13, 14))] {
        let (rows, cols) = (out.0 + 2, out.1 + 2);
        let plane = rows * cols + 7;
        let images = 3;
        let room = winograd::convolve_room(Tile::F4, out, cols, plane);
        let mut r = rng(7);
        let w = random(&[o, c, 3, 3], &mut r).data;
        let mut u = Vec::new();
        Tile::F4.transform_weights(&w, o, c, false, &mut u);
        let run = |past: f32, isa: Isa, pool: bool| -> Vec<f32> {
            let mut r = rng(8);
            let mut x = vec![past; images * c * plane + room];
            for k in 0..images * c {
                for v in &mut x[k * plane..][..rows * cols] {
                    *v = r.gen_range(-1.0f32..1.0);
                }
            }
            let src = Source {
                start: 0,
                plane,
                row: cols,
            };
            let per = if pool {
                (out.0 / 2) * (out.1 / 2)
            } else {
                out.0 * out.1
            };
            let mut y = vec![0.0f32; images * o * per];
            winograd::convolve(
                isa,
                Tile::F4,
                &x,
                src,
                c * plane,
                images,
                c,
                &u,
                o,
                out,
                |i, p| {
                    for k in 0..o {
                        let finish = Finish {
                            relu: false,
                            pool: pool.then_some(cols),
                        };
                        let y = &mut y[(i * o + k) * per..][..per];
                        p.plane(k, 0.25, finish, y, &mut []);
                    }
                },
            );
            y
        };
        for isa in simd::supported() {
            for pool in [false, true] {
                let (zeros, nans) = (run(0.0, isa, pool), run(f32::NAN, isa, pool));
                assert!(zeros.iter().all(|v| v.is_finite()), "{out:?} {isa}");
                assert_eq!(
                    zeros.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    nans.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{out:?} on {isa}, pooled {pool}: a value past the plane reached an output"
                );
            }
        }
    }
}

/// The weight gradient's choice: the shifted dots always; lane dots and Winograd only for
/// a 3x3, stride-1 conv on the direct path whose outputs fill whole vectors, refused
/// otherwise without changing what runs.
#[test]
fn a_weight_gradient_path_the_shape_cannot_run_is_refused() {
    let fits = ConvShape::new([8, 6, 6], 16, 3, 1, 1).unwrap();
    let refused = [
        (ConvShape::new([8, 6, 6], 12, 3, 1, 1).unwrap(), None),
        (ConvShape::new([8, 6, 6], 16, 5, 1, 2).unwrap(), None),
        (ConvShape::new([8, 6, 6], 16, 3, 2, 1).unwrap(), None),
        (fits, Some(None)),
    ];
    for (g, direct) in refused {
        let mut fast = FastConv::new(g);
        if let Some(isa) = direct {
            fast.set_direct(isa).unwrap();
        }
        let before = fast.weight_grad();
        for dw in [WeightGrad::LaneDots, WeightGrad::Winograd] {
            let e = fast.set_weight_grad(dw).unwrap_err();
            assert!(e.contains("whole vectors"), "{e}");
            assert_eq!(
                fast.weight_grad(),
                before,
                "{g:?}: a refusal changed the path"
            );
        }
        fast.set_weight_grad(WeightGrad::ShiftedDots).unwrap();
    }
    for isa in simd::supported() {
        let mut fast = FastConv::new(fits);
        fast.set_direct(Some(isa)).unwrap();
        for dw in [WeightGrad::LaneDots, WeightGrad::Winograd] {
            fast.set_weight_grad(dw).unwrap();
            assert_eq!(fast.weight_grad(), dw);
        }
    }
}

/// A conv with the ReLU and max pool after it fused gives the same bits as the conv
/// unfused, then `nn::Activation` and `nn::Pool2d`, ties included: inputs and weights are
/// small integers, so many windows hold equal values, and each window's first position must
/// win. Stride 2 runs im2col + GEMM with the plain column layout. F(4x4, 3x3)'s pool (four
/// windows a tile) runs on all three: 7x6 planes hang over the tiles' end, 8x12 and 8x40
/// are whole tiles (10 tiles a row take one AVX-512 vector and part of another).
#[test]
fn a_conv_with_its_relu_and_max_pool_fused_matches_the_separate_layers() {
    for (n, c, h, w) in [(11, 2, 7, 6), (5, 2, 8, 12), (3, 2, 8, 40)] {
        fused_pool_matches_separate_layers(n, c, h, w);
    }
}

fn fused_pool_matches_separate_layers(n: usize, c: usize, h: usize, w: usize) {
    let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 7) % 3) as f32).collect();
    let x = Tensor::from_vec(&[n, c, h, w], x);
    for (k, pad, stride) in [(1, 0, 1), (3, 1, 1), (2, 0, 1), (3, 1, 2), (1, 0, 2)] {
        let g = ConvShape::new([c, h, w], 3, k, stride, pad).unwrap();
        let mut conv = Conv2d::new("conv", g);
        for (i, v) in conv.weight.value.iter_mut().enumerate() {
            *v = ((i % 3) as f32) - 1.0;
        }
        conv.bias.value.copy_from_slice(&[0.0, 0.5, -1.0]);
        let pool_shape = PoolShape::new([3, g.out_h, g.out_w], 2, 2).unwrap();
        let mut pool = Pool2d::new("pool", PoolKind::Max, pool_shape);
        let pooled_len = 3 * pool_shape.out_h * pool_shape.out_w;
        let dy: Vec<f32> = (0..n * pooled_len).map(|i| 1.0 + i as f32).collect();
        for path in conv_paths(&g) {
            for relu in [false, true] {
                let case = format!(
                    "{h}x{w}, kernel {k} pad {pad} stride {stride} on {path:?}, ReLU {relu}"
                );
                // The separate layers: the fast conv alone, then the readable ReLU and pool.
                let mut plain = fast_conv_on(g, path);
                let (y1, mut s1) =
                    fast_conv_forward(&mut plain, &conv, &x, g.out_len(), Mode::Train);
                let f = ActivationKind::Relu;
                let y2: Vec<f32> = if relu {
                    y1.iter().map(|&v| f.apply(v)).collect()
                } else {
                    y1.clone()
                };
                let y2 = Tensor::from_vec(&[n, 3, g.out_h, g.out_w], y2);
                let y3 = pool.forward(&y2, Mode::Train);
                let d2 = pool.backward(&y2, &y3, &Tensor::from_vec(&y3.shape, dy.clone()));
                let d1: Vec<f32> = if relu {
                    d2.data
                        .iter()
                        .zip(&y2.data)
                        .map(|(&d, &y)| f.gradient(y, d))
                        .collect()
                } else {
                    d2.data
                };
                let (dx, dw, db) = fast_conv_backward(&plain, &conv, &x, &y1, &d1, &mut s1);
                // Fused.
                let mut fused = fast_conv_on(g, path);
                fused.set_relu(relu);
                fused.set_max_pool(true);
                let (y, mut s) = fast_conv_forward(&mut fused, &conv, &x, pooled_len, Mode::Train);
                assert_eq!(y, y3.data, "{case}: pooled output");
                // Evaluation passes keep no winners: a path of its own in the Winograd
                // output transform (two tile rows to a vector when they fit).
                let mut fused_eval = fast_conv_on(g, path);
                fused_eval.set_relu(relu);
                fused_eval.set_max_pool(true);
                let (ye, _) = fast_conv_forward(&mut fused_eval, &conv, &x, pooled_len, Mode::Eval);
                assert_eq!(ye, y3.data, "{case}: pooled output, evaluation pass");
                let (fdx, fdw, fdb) = fast_conv_backward(&fused, &conv, &x, &y, &dy, &mut s);
                assert_eq!(fdx, dx, "{case}: dx");
                assert_eq!(fdw, dw, "{case}: dw");
                assert_eq!(fdb, db, "{case}: db");
            }
        }
    }
}

/// A spec of `layers` for inputs of `input`.
fn spec_of(input: [usize; 3], layers: Vec<LayerSpec>) -> ModelSpec {
    ModelSpec {
        name: "test".into(),
        input: input.to_vec(),
        normalize: Default::default(),
        loss: Default::default(),
        init: crate::nn::init::Init::He,
        init_std: 0.01,
        layers,
    }
}

/// The engine's op for `layer` on inputs of `input`, run alone (a flatten after it makes
/// the spec whole).
fn alone(input: [usize; 3], layer: LayerSpec) -> Alone {
    let spec = spec_of(input, vec![layer, layer_spec("flatten")]);
    Alone::new(&spec.resolve().unwrap()[0])
}

fn layer_spec(kind: &str) -> LayerSpec {
    LayerSpec {
        name: kind.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

/// Pooling: the fast path (the 2x2 vector kernel, the plain loops otherwise) against
/// `nn::Pool2d`. Max pooling does no arithmetic: the same bits, winners included. Average
/// pooling adds in another order: within 1e-6.
#[test]
fn fast_pooling_matches_the_readable_pool() {
    for (i, &(n, c, h, w, k, s)) in POOL_CASES.iter().enumerate() {
        for kind in [PoolKind::Max, PoolKind::Avg] {
            let mut spec = layer_spec(if kind == PoolKind::Max {
                "max_pool2d"
            } else {
                "avg_pool2d"
            });
            spec.kernel = Some(k);
            spec.stride = Some(s);
            let mut fast = alone([c, h, w], spec);
            let mut plain = Pool2d::new("l", kind, PoolShape::new([c, h, w], k, s).unwrap());
            // Few distinct values: many ties.
            let x: Vec<f32> = (0..n * c * h * w)
                .map(|j| ((j * 7919) % 5) as f32 - 2.0)
                .collect();
            let x = Tensor::from_vec(&[n, c, h, w], x);
            let (y, want) = (
                fast.forward(&x, Mode::Train),
                plain.forward(&x, Mode::Train),
            );
            let dy = spread(&y.shape, &mut rng(i as u64));
            let (dx, want_dx) = (fast.backward(&x, &y, &dy), plain.backward(&x, &want, &dy));
            let case = format!("{kind:?} case {i}");
            if kind == PoolKind::Max {
                assert_eq!(y, want, "{case}: forward");
                assert_eq!(dx, want_dx, "{case}: dx");
            } else {
                assert!(max_rel_diff(&y.data, &want.data) < 1e-6, "{case}: forward");
                assert!(max_rel_diff(&dx.data, &want_dx.data) < 1e-6, "{case}: dx");
            }
        }
    }
}

/// The fast linear layer (GEMM on transposed weights, the weight gradient over the whole
/// batch) against `nn::Linear` (f64 sums): within 1e-5 relative.
#[test]
fn fast_linear_matches_the_readable_linear() {
    for (i, &(n, fi, fo)) in [(1, 3, 2), (9, 7, 5), (21, 100, 33), (64, 784, 128)]
        .iter()
        .enumerate()
    {
        let mut spec = layer_spec("linear");
        spec.out_features = Some(fo);
        // A linear layer needs a flat input: resolve it after a flatten.
        let resolved = spec_of([fi, 1, 1], vec![layer_spec("flatten"), spec])
            .resolve()
            .unwrap();
        let mut fast = Alone::new(&resolved[1]);
        let mut r = rng(900 + i as u64);
        randomize_params(fast.op.layer_mut(), &mut r);
        let mut plain = crate::nn::Linear::new("l", fi, fo);
        for (p, q) in plain.params_mut().into_iter().zip(fast.op.layer().params()) {
            p.value.clone_from(&q.value);
        }
        let x = random(&[n, fi], &mut r);
        let (y, want) = (
            fast.forward(&x, Mode::Train),
            plain.forward(&x, Mode::Train),
        );
        let dy = random(&y.shape, &mut r);
        let (dx, want_dx) = (fast.backward(&x, &y, &dy), plain.backward(&x, &want, &dy));
        let case = format!("linear {n}x{fi}->{fo}");
        assert!(max_rel_diff(&y.data, &want.data) < 1e-5, "{case}: forward");
        assert!(max_rel_diff(&dx.data, &want_dx.data) < 1e-5, "{case}: dx");
        for (p, q) in fast.op.layer().params().into_iter().zip(plain.params()) {
            let e = max_rel_diff(&p.grad, &q.grad);
            assert!(e < 1e-5, "{case}: {} gradient differs by {e}", p.name);
        }
    }
}

/// The fast batch norm (per-chunk statistics and gradient sums combined in chunk order) against
/// `nn::BatchNorm`: outputs, running statistics and gradients within 1e-5, in training and
/// evaluation mode, 2-d and 1-d.
#[test]
fn fast_batch_norm_matches_the_readable_batch_norm() {
    for (input, kind) in [([3, 5, 4], "batch_norm2d"), ([16, 1, 1], "batch_norm1d")] {
        let layers = if kind == "batch_norm1d" {
            vec![layer_spec("flatten"), layer_spec(kind)]
        } else {
            vec![layer_spec(kind), layer_spec("flatten")]
        };
        let resolved = spec_of(input, layers).resolve().unwrap();
        let at = resolved
            .iter()
            .position(|l| l.kind != LayerKind::Flatten)
            .unwrap();
        let mut fast = Alone::new(&resolved[at]);
        let shape = resolved[at].input.clone();
        let mut plain = crate::nn::BatchNorm::new("l", &shape, 1e-5, 0.1);
        let mut r = rng(31);
        randomize_params(fast.op.layer_mut(), &mut r);
        for (p, q) in plain.params_mut().into_iter().zip(fast.op.layer().params()) {
            p.value.clone_from(&q.value);
        }
        let mut dims = vec![13];
        dims.extend(&shape);
        for mode in [Mode::Train, Mode::Train, Mode::Eval] {
            let x = random(&dims, &mut r);
            let (y, want) = (fast.forward(&x, mode), plain.forward(&x, mode));
            let case = format!("{kind} {mode:?}");
            assert!(max_rel_diff(&y.data, &want.data) < 1e-5, "{case}: forward");
            let bufs = |l: &dyn Layer| -> Vec<Vec<f32>> {
                l.buffers()
                    .iter()
                    .filter_map(|b| match b {
                        crate::nn::Buffer::F32(_, v) => Some(v.to_vec()),
                        crate::nn::Buffer::I64(..) => None,
                    })
                    .collect()
            };
            for (a, b) in bufs(fast.op.layer()).iter().zip(bufs(&plain)) {
                assert!(max_rel_diff(a, &b) < 1e-6, "{case}: running statistics");
            }
            let dy = random(&y.shape, &mut r);
            let (dx, want_dx) = (fast.backward(&x, &y, &dy), plain.backward(&x, &want, &dy));
            assert!(max_rel_diff(&dx.data, &want_dx.data) < 1e-5, "{case}: dx");
            for (p, q) in fast.op.layer().params().into_iter().zip(plain.params()) {
                assert!(
                    max_rel_diff(&p.grad, &q.grad) < 1e-5,
                    "{case}: {} gradient",
                    p.name
                );
            }
        }
    }
}

/// Dropout and the activations on the fast engine: the same bits as the readable layers
/// (the same masks, drawn per chunk of 8 samples; the same per-value functions).
#[test]
fn fast_dropout_and_activations_match_the_readable_layers_bit_for_bit() {
    let x = random(&[21, 3, 4, 5], &mut rng(40));
    for kind in ["dropout", "relu", "sigmoid", "tanh"] {
        let mut spec = layer_spec(kind);
        if kind == "dropout" {
            spec.p = Some(0.3);
        }
        let mut fast = alone([3, 4, 5], spec);
        let shape = [3, 4, 5];
        let mut plain: Box<dyn Layer> = match kind {
            "dropout" => Box::new(crate::nn::Dropout::new("l", 0.3, &shape)),
            "relu" => Box::new(crate::nn::Activation::new(
                "l",
                ActivationKind::Relu,
                &shape,
            )),
            "sigmoid" => Box::new(crate::nn::Activation::new(
                "l",
                ActivationKind::Sigmoid,
                &shape,
            )),
            _ => Box::new(crate::nn::Activation::new(
                "l",
                ActivationKind::Tanh,
                &shape,
            )),
        };
        fast.op.layer_mut().reseed(77);
        plain.reseed(77);
        for mode in [Mode::Train, Mode::Eval] {
            let (y, want) = (fast.forward(&x, mode), plain.forward(&x, mode));
            assert_eq!(y, want, "{kind} {mode:?}: forward");
            let dy = random(&y.shape, &mut rng(41));
            let (dx, want_dx) = (fast.backward(&x, &y, &dy), plain.backward(&x, &want, &dy));
            assert_eq!(dx, want_dx, "{kind} {mode:?}: dx");
        }
    }
}

/// The vector transpose (8 x 8 blocks in registers) against the plain loop, on every
/// vector unit this CPU has, for shapes with and without ragged edges.
#[test]
fn vector_transpose_matches_the_plain_loop() {
    for (rows, cols) in [
        (1, 1),
        (8, 8),
        (7, 9),
        (16, 24),
        (13, 21),
        (128, 784),
        (10, 784),
    ] {
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut want = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                want[c * rows + r] = src[r * cols + c];
            }
        }
        let mut paths = vec![None];
        paths.extend(simd::supported().into_iter().map(Some));
        for isa in paths {
            let mut got = vec![f32::NAN; rows * cols];
            simd::transpose(isa, &src, rows, cols, &mut got);
            assert_eq!(got, want, "{rows}x{cols} on {isa:?}");
            // The same matrix inside wider rows on both sides: what lies between is left.
            let (sr, dr) = (cols + 5, rows + 3);
            let mut wide = vec![-1.0; rows * sr];
            for r in 0..rows {
                wide[r * sr..][..cols].copy_from_slice(&src[r * cols..][..cols]);
            }
            let mut got = vec![f32::NAN; cols * dr];
            simd::transpose_strided(isa, (&wide, sr), rows, cols, (&mut got, dr));
            for c in 0..cols {
                assert_eq!(
                    &got[c * dr..][..rows],
                    &want[c * rows..][..rows],
                    "{rows}x{cols}"
                );
                assert!(
                    got[c * dr + rows..][..3].iter().all(|v| v.is_nan()),
                    "{rows}x{cols}"
                );
            }
        }
    }
}

/// The batch norm's four kernels give the same bits on every vector unit this CPU has as
/// the baseline copy (the compiler vectorises the loops but never reorders float
/// operations, and the sums' explicit vectors add in the baseline's order); the statistics
/// and gradient sums give the bits of plain loops summing one plane and one sum at a time
/// (however many planes the kernels take at once); with a fused 2x2 max pool, the gradient
/// kernels give the same bits from the pooled gradient as from the full-size one the
/// pool's own backward writes.
#[test]
fn batch_norm_kernels_give_the_same_bits_on_every_vector_unit() {
    use crate::kernels::batchnorm::{
        apply_kernel, dx_kernel, grad_kernel, stats_kernel, DxTerms, OutGrad, Unpool,
    };
    use crate::kernels::pool::{max_pool_2x2, unpool_2x2};
    let mut r = rng(77);
    // 6 samples of 5 channels of 7x5: planes that are not whole vectors, and samples that
    // are not whole groups of the statistics' four.
    let shape = (5, 35);
    let n = 6 * 5 * 35;
    let x = random(&[n], &mut r).data;
    let dy = random(&[n], &mut r).data;
    let mut per_channel = |k: usize| {
        random(&[5], &mut r)
            .data
            .iter()
            .map(|v| v * k as f32)
            .collect::<Vec<f32>>()
    };
    let (scale, shift, mean) = (per_channel(2), per_channel(1), per_channel(1));
    let inv_std: Vec<f32> = per_channel(1).iter().map(|v| v.abs() + 0.5).collect();
    let (mdb, mdw) = (per_channel(1), per_channel(1));
    // The 3x2 windows' winners of each 7x5 plane of x, a pooled gradient for them, and
    // the full-size gradient the pool's backward makes of it.
    let (planes, pooled) = (6 * 5, 3 * 2);
    let mut arg = vec![0u32; planes * pooled];
    let mut pooled_max = vec![0.0f32; planes * pooled];
    for k in 0..planes {
        let (y, a) = (&mut pooled_max[k * pooled..], &mut arg[k * pooled..]);
        max_pool_2x2(None, &x[k * 35..][..35], 5, None, false, (3, 2), y, Some(a));
    }
    let pooled_dy = random(&[planes * pooled], &mut r).data;
    let mut unpooled = vec![f32::NAN; n];
    for k in 0..planes {
        let (dy, a) = (
            &pooled_dy[k * pooled..][..pooled],
            &arg[k * pooled..][..pooled],
        );
        unpool_2x2(
            None,
            dy,
            None,
            a,
            (3, 2),
            5,
            7,
            &mut unpooled[k * 35..][..35],
        );
    }
    // The gradient kernels' outputs: with and without the ReLU, the sums and both dx.
    let gradients = |isa: Option<Isa>, dy: OutGrad| {
        let mut out: Vec<Vec<u64>> = Vec::new();
        let mut stats = Vec::new();
        for relu in [false, true] {
            let mask = relu.then_some((&scale[..], &shift[..]));
            grad_kernel(isa, &x, mask, dy, shape, &mean, &mut stats);
            out.push(stats.iter().map(|v| v.to_bits()).collect());
            for trained in [None, Some((&mdb[..], &mdw[..]))] {
                let terms = DxTerms {
                    mean: &mean,
                    inv_std: &inv_std,
                    weight: &scale,
                    trained,
                };
                let mut dx = vec![0.0f32; n];
                dx_kernel(isa, &x, mask, dy, &mut dx, shape, &terms);
                out.push(dx.iter().map(|v| v.to_bits() as u64).collect());
            }
        }
        out
    };
    let run = |isa: Option<Isa>| {
        let mut out: Vec<Vec<u64>> = Vec::new();
        let mut stats = Vec::new();
        stats_kernel(isa, &x, shape, &mut stats);
        out.push(stats.iter().map(|v| v.to_bits()).collect());
        for relu in [false, true] {
            let mut y = vec![0.0f32; n];
            apply_kernel(isa, &x, &mut y, shape, &scale, &shift, relu);
            out.push(y.iter().map(|v| v.to_bits() as u64).collect());
        }
        let dy = OutGrad {
            dy: &dy,
            pooled: None,
        };
        out.extend(gradients(isa, dy));
        out
    };
    let baseline = run(None);
    assert!(
        baseline[1].iter().any(|&b| b != 0),
        "the outputs are not all zero"
    );
    // The sums one plane and one sum at a time: 8 interleaved f64 partial sums added in
    // order, then the values past the last 8; each channel's planes in sample order. On
    // values of magnitudes 2^-30 to 2^30, whose f64 sums round, so that another order of
    // adding gives other bits.
    let wide = |v: &[f32]| -> Vec<f32> {
        let scale = |i: usize| 2f32.powi((i * 7 % 61) as i32 - 30);
        v.iter().enumerate().map(|(i, &v)| v * scale(i)).collect()
    };
    let (xw, dyw) = (wide(&x), wide(&dy));
    let lanes_sum = |len: usize, f: &dyn Fn(usize) -> f64| {
        let mut acc = [0.0f64; 8];
        let whole = len / 8 * 8;
        for i in 0..whole {
            acc[i % 8] += f(i);
        }
        acc.iter().sum::<f64>() + (whole..len).map(f).sum::<f64>()
    };
    let at = |v: &[f32], s: usize, c: usize| v[(s * 5 + c) * 35..][..35].to_vec();
    let mut stats = Vec::new();
    for c in 0..5 {
        let count = (6 * 35) as f64;
        let sum = |f: &dyn Fn(f32) -> f64| {
            (0..6).fold(0.0, |t, s| t + lanes_sum(35, &|i| f(at(&xw, s, c)[i])))
        };
        let mean = sum(&|v| v as f64) / count;
        stats.extend([count, mean, sum(&|v| (v as f64 - mean).powi(2))]);
    }
    let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<u64>>();
    let mut grads = Vec::new();
    for relu in [false, true] {
        let mut sums = vec![0.0f64; 10];
        for s in 0..6 {
            for c in 0..5 {
                let (xs, gs) = (at(&xw, s, c), at(&dyw, s, c));
                let g = |i: usize| match relu {
                    true => ActivationKind::Relu.gradient(xs[i] * scale[c] + shift[c], gs[i]),
                    false => gs[i],
                };
                let m = mean[c] as f64;
                sums[2 * c] += lanes_sum(35, &|i| g(i) as f64);
                sums[2 * c + 1] += lanes_sum(35, &|i| g(i) as f64 * (xs[i] as f64 - m));
            }
        }
        grads.push(bits(&sums));
    }
    for isa in [None]
        .into_iter()
        .chain(simd::supported().into_iter().map(Some))
    {
        let mut out = Vec::new();
        stats_kernel(isa, &xw, shape, &mut out);
        assert_eq!(
            bits(&out),
            bits(&stats),
            "statistics, one plane at a time, {isa:?}"
        );
        for (relu, want) in [false, true].into_iter().zip(&grads) {
            let mask = relu.then_some((&scale[..], &shift[..]));
            let dy = OutGrad {
                dy: &dyw,
                pooled: None,
            };
            grad_kernel(isa, &xw, mask, dy, shape, &mean, &mut out);
            assert_eq!(&bits(&out), want, "gradient sums (ReLU {relu}), {isa:?}");
        }
    }
    for isa in simd::supported() {
        assert_eq!(run(Some(isa)), baseline, "{isa:?}");
    }
    // Fused: the gradient kernels from the pooled gradient, as from `unpooled`.
    let unfused = gradients(
        None,
        OutGrad {
            dy: &unpooled,
            pooled: None,
        },
    );
    assert!(
        unpooled.iter().all(|v| v.is_finite()),
        "every value written"
    );
    assert!(unfused[1].iter().any(|&b| b != 0), "a gradient, not zeros");
    for isa in [None]
        .into_iter()
        .chain(simd::supported().into_iter().map(Some))
    {
        let pooled = Some(Unpool::new(isa, &arg, (7, 5)));
        let dy = OutGrad {
            dy: &pooled_dy,
            pooled,
        };
        assert_eq!(gradients(isa, dy), unfused, "fused pool on {isa:?}");
    }
}

/// The direct kernels' shifted sums (the direct conv's forward and input gradient with
/// several taps, the Winograd products with one) against a plain loop that adds in the same
/// order, bit for bit on every vector unit: every block shape the kernel picks (8, 4 and
/// single rows with one tap, 4 and single rows with several; 1 to 6 vectors a block).
#[test]
fn the_shifted_sums_match_a_plain_loop_bit_for_bit() {
    use crate::kernels::conv_direct::{shifted_sum, Planes};
    use crate::kernels::simd::round_up;
    let mut r = rng(91);
    let tap_sets: [&[isize]; 4] = [&[0], &[3], &[-1, 0, 2], &[-5, -4, -3, -1, 0, 1, 3, 4, 5]];
    for offsets in tap_sets {
        let (lo, hi) = (
            offsets.iter().copied().min().unwrap().min(0).unsigned_abs(),
            offsets.iter().copied().max().unwrap().max(0) as usize,
        );
        for &(rows, planes, n) in &[
            (1, 1, 1),
            (3, 5, 31),
            (4, 16, 16),
            (7, 3, 49),
            (8, 16, 196),
            (9, 2, 17),
            (12, 5, 100),
            (17, 1, 33),
            (33, 4, 208),
        ] {
            let ld = round_up(n);
            let plane = lo + ld + hi;
            let x = random(&[planes * plane + 1], &mut r).data;
            let w = random(&[rows * planes * offsets.len()], &mut r).data;
            let mut want = vec![0.0f32; rows * ld];
            for (row, want) in want.chunks_mut(ld).enumerate() {
                for (p, want) in want.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for c in 0..planes {
                        for (t, &off) in offsets.iter().enumerate() {
                            let at = (c * plane + lo + p) as isize + off;
                            let wv = w[(row * planes + c) * offsets.len() + t];
                            acc = wv.mul_add(x[at as usize], acc);
                        }
                    }
                    *want = acc;
                }
            }
            for isa in simd::supported() {
                let mut got = vec![f32::NAN; rows * ld];
                let planes_in = Planes {
                    data: &x,
                    start: lo,
                    plane,
                    image: 0,
                };
                shifted_sum(isa, offsets, n, &w, rows, planes, planes_in, &mut got, ld);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{isa:?}, taps {offsets:?}, {rows} rows x {planes} planes x {n}"
                );
            }
        }
    }
}

/// A conv's backward pass on the direct path after an evaluation-only prepare (which
/// leaves the input gradient's copies as they were) refuses to run on stale copies; after
/// a training-mode prepare it runs.
#[test]
fn a_conv_backward_after_an_evaluation_only_prepare_is_refused() {
    let g = ConvShape::new([16, 14, 14], 32, 3, 1, 1).unwrap();
    let mut r = rng(77);
    let mut conv = Conv2d::new("conv", g);
    randomize_params(&mut conv, &mut r);
    let x = random(&[3, 16, 14, 14], &mut r);
    let dy = random(&[3, 32, 14, 14], &mut r);
    for isa in simd::supported() {
        let path = ConvPath {
            isa: Some(isa),
            winograd: true,
            four: true,
            dw: WeightGrad::ShiftedDots,
        };
        let mut fast = fast_conv_on(g, path);
        let (y, mut scratch) = fast_conv_forward(&mut fast, &conv, &x, g.out_len(), Mode::Train);
        let mut changed = conv.weight.value.clone();
        changed[0] += 1.0;
        fast.prepare_forward(&changed);
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fast_conv_backward(&fast, &conv, &x, &y, &dy.data, &mut scratch)
        }));
        assert!(refused.is_err(), "{isa}: backward ran on stale copies");
        let (y, mut scratch) = fast_conv_forward(&mut fast, &conv, &x, g.out_len(), Mode::Train);
        let (dx, _, _) = fast_conv_backward(&fast, &conv, &x, &y, &dy.data, &mut scratch);
        assert!(
            dx.iter().all(|v| v.is_finite()),
            "{isa}: backward after prepare"
        );
    }
}
