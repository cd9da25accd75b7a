//! The stronger recipe's building blocks: dropout, batch norm, Adam/AdamW, label smoothing,
//! augmentation, and Fashion-MNIST end to end.

use convnet::data::dataset::{load_splits, Augment, PixelLut};
use convnet::data::DatasetKind;
use convnet::layers::{BatchNorm, Dropout, Layer, Param};
use convnet::loss::Loss;
use convnet::optim::{Optimizer, OptimizerKind};
use convnet::Tensor;
use rand::Rng;

mod common;
use common::{check_layer_in_mode, random, randomize_params, rel_err, rng};

#[test]
fn batch_norm_gradients_in_both_modes() {
    for (shape, n) in [(vec![3usize, 4, 5], 4usize), (vec![6], 7)] {
        for train in [true, false] {
            let mut bn = BatchNorm::new("bn", &shape, 1e-5, 0.1).unwrap();
            randomize_params(&mut bn, &mut rng(1));
            // Give evaluation mode non-trivial running statistics.
            bn.running_mean
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = 0.1 * i as f32);
            bn.running_var
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = 0.5 + 0.2 * i as f32);
            let mut full = vec![n];
            full.extend(&shape);
            let x = random(&full, &mut rng(2));
            check_layer_in_mode(
                &mut bn,
                &x,
                3,
                &format!("batch norm {shape:?} train={train}"),
                train,
            );
        }
    }
}

/// Running statistics by hand: channel values 1, 2, 3, 4 (N = 2, H = 1, W = 2).
/// mean 2.5, biased variance 1.25, unbiased 5/3; PyTorch's momentum 0.1:
/// running_mean = 0.9 * 0 + 0.1 * 2.5 = 0.25, running_var = 0.9 * 1 + 0.1 * 5/3 = 1.0666667.
#[test]
fn batch_norm_running_statistics_by_hand() {
    let mut bn = BatchNorm::new("bn", &[1, 1, 2], 1e-5, 0.1).unwrap();
    let x = Tensor::from_vec(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let mut y = Tensor::default();
    bn.forward(&x, &mut y, true);
    assert!((bn.running_mean[0] - 0.25).abs() < 1e-7);
    assert!((bn.running_var[0] - 1.066_666_7).abs() < 1e-6);
    assert_eq!(bn.num_batches_tracked, 1);
    let s = (1.25f32 + 1e-5).sqrt();
    for (got, want) in y.data.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    // Evaluation uses the running statistics.
    bn.forward(&x, &mut y, false);
    let s = (1.066_666_7f32 + 1e-5).sqrt();
    assert!((y.data[0] - (1.0 - 0.25) / s).abs() < 1e-5);
    bn.forward(&x, &mut y, true);
    assert_eq!(bn.num_batches_tracked, 2);
}

#[test]
fn dropout_scales_kept_values_and_is_off_in_evaluation() {
    let shape = [1000usize];
    let mut d = Dropout::new("drop", 0.3, &shape).unwrap();
    let x = Tensor::from_vec(&[10, 1000], vec![1.0; 10_000]);
    let mut y = Tensor::default();
    d.reseed(42);
    d.forward(&x, &mut y, true);
    let zeros = y.data.iter().filter(|&&v| v == 0.0).count();
    assert!(
        (2700..3300).contains(&zeros),
        "{zeros} of 10000 dropped, expected about 3000"
    );
    assert!(y
        .data
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    let mean = y.data.iter().sum::<f32>() / 10_000.0;
    assert!(
        (mean - 1.0).abs() < 0.05,
        "inverted dropout keeps the mean: {mean}"
    );
    // The same seed gives the same mask; another seed another one.
    let mut y2 = Tensor::default();
    d.forward(&x, &mut y2, true);
    assert_eq!(y, y2);
    d.reseed(43);
    d.forward(&x, &mut y2, true);
    assert_ne!(y, y2);
    d.forward(&x, &mut y2, false);
    assert_eq!(y2.data, x.data);
    // Gradients: with a fixed seed, dropout is linear in x.
    let mut d = Dropout::new("drop", 0.5, &[3, 4, 4]).unwrap();
    d.reseed(7);
    let x = random(&[3, 3, 4, 4], &mut rng(8));
    check_layer_in_mode(&mut d, &x, 9, "dropout train", true);
    check_layer_in_mode(&mut d, &x, 9, "dropout eval", false);
    assert!(Dropout::new("d", 1.0, &[3]).is_err());
}

/// Reference values from PyTorch's algorithm:
/// ```python
/// import torch
/// for cls in (torch.optim.Adam, torch.optim.AdamW):
///     w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
///     opt = cls([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
///     for g in ([0.5, -1.0, 0.25], [0.4, -0.5, -0.25], [0.1, 0.2, 0.3]):
///         w.grad = torch.tensor(g); opt.step()
///     print(cls.__name__, w.tolist())
/// ```
/// PyTorch could not be installed on the build machine (no wheel small enough to fetch), so
/// the numbers below come from a float64 transcription of the update rules in PyTorch's
/// documentation (Adam: L2 added to the gradient; AdamW: decoupled decay), step by step.
#[test]
fn adam_and_adamw_match_pytorch() {
    for (kind, want) in [
        (
            OptimizerKind::Adam,
            [0.712_037_307f64, -1.732_140_972, 0.337_484_578],
        ),
        (
            OptimizerKind::Adamw,
            [0.689_133_522, -1.690_631_115, 0.354_102_157],
        ),
    ] {
        let mut p = Param::new("weight", &[3], false);
        p.value = vec![1.0, -2.0, 0.5];
        let mut opt = Optimizer::adam(kind, (0.9, 0.999), 1e-8, 0.1, true);
        for (t, g) in [[0.5, -1.0, 0.25], [0.4, -0.5, -0.25], [0.1, 0.2, 0.3]]
            .iter()
            .enumerate()
        {
            p.grad = g.to_vec();
            opt.update(0, &mut p, 0.1, t as u64 + 1);
        }
        for (got, want) in p.value.iter().zip(want) {
            assert!(
                (*got as f64 - want).abs() < 2e-6,
                "{kind:?}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn label_smoothing_gradient_matches_finite_differences() {
    let mut r = rng(5);
    let logits = random(&[4, 6], &mut r);
    let labels: Vec<u8> = (0..4).map(|_| r.gen_range(0..6)).collect();
    let s = 0.1;
    let mut grad = Tensor::default();
    let stats = Loss::SoftmaxCrossEntropy.forward_backward(&logits, &labels, &mut grad, s);
    assert!(
        (stats.mean_loss() - Loss::SoftmaxCrossEntropy.value_smoothed(&logits, &labels, s)).abs()
            < 1e-9
    );
    let mut z = logits.clone();
    let num: Vec<f64> = (0..z.data.len())
        .map(|i| {
            let o = z.data[i];
            z.data[i] = o + 1e-3;
            let up = Loss::SoftmaxCrossEntropy.value_smoothed(&z, &labels, s);
            z.data[i] = o - 1e-3;
            let down = Loss::SoftmaxCrossEntropy.value_smoothed(&z, &labels, s);
            z.data[i] = o;
            (up - down) / 2e-3
        })
        .collect();
    assert!(rel_err(&num, &grad.data) < 1e-3);
    // Smoothing raises the loss of a confident right answer.
    let sure = Tensor::from_vec(&[1, 3], vec![10.0, 0.0, 0.0]);
    let plain = Loss::SoftmaxCrossEntropy.value_smoothed(&sure, &[0], 0.0);
    assert!(Loss::SoftmaxCrossEntropy.value_smoothed(&sure, &[0], 0.1) > plain + 0.5);
}

fn data_root() -> std::path::PathBuf {
    std::env::var("CONVNET_DATA")
        .expect("CONVNET_DATA must point at the data sets (see .ci/run)")
        .into()
}

#[test]
fn augmentation_keeps_labels_and_image_statistics() {
    let splits = load_splits(DatasetKind::Mnist, Some(&data_root()), 1000).unwrap();
    let ds = &splits.test;
    let idx: Vec<u32> = (0..64).collect();
    let norm = convnet::spec::Normalize {
        mean: 0.0,
        scale: 255.0,
    };
    let lut = PixelLut::new(norm);
    let (mut plain, mut labels) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch(&idx, &lut, &mut plain, &mut labels);
    let off = Augment {
        shift: 0.0,
        rotate: 0.0,
        flip: false,
    };
    let (mut same, mut l2) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch_augmented(&idx, norm, off, 1, &mut same, &mut l2);
    assert_eq!(labels, l2);
    assert!(
        plain.iter().zip(&same).all(|(a, b)| (a - b).abs() < 1e-6),
        "no augmentation is the identity"
    );
    let aug = Augment {
        shift: 2.0,
        rotate: 10.0,
        flip: false,
    };
    let (mut a, mut la) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch_augmented(&idx, norm, aug, 1, &mut a, &mut la);
    assert_eq!(labels, la, "labels are unchanged");
    assert_ne!(a, plain, "images changed");
    for (i, (img, orig)) in a.chunks(784).zip(plain.chunks(784)).enumerate() {
        let (m1, m0) = (img.iter().sum::<f32>(), orig.iter().sum::<f32>());
        assert!((m1 / m0 - 1.0).abs() < 0.1, "image {i}: ink {m1} vs {m0}");
        assert!(img.iter().all(|v| (0.0..=1.0001).contains(v)));
    }
    let (mut b, mut lb) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch_augmented(&idx, norm, aug, 1, &mut b, &mut lb);
    assert_eq!(a, b, "the same seed gives the same batch");
    ds.fill_batch_augmented(&idx, norm, aug, 2, &mut b, &mut lb);
    assert_ne!(a, b, "another seed another batch");
    // Flips mirror whole images: every image equals the original or its mirror.
    let flip = Augment {
        shift: 0.0,
        rotate: 0.0,
        flip: true,
    };
    ds.fill_batch_augmented(&idx, norm, flip, 3, &mut b, &mut lb);
    let mut mirrored = 0;
    for (img, orig) in b.chunks(784).zip(plain.chunks(784)) {
        let mirror: Vec<f32> = orig
            .chunks(28)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        let same = img.iter().zip(orig).all(|(a, b)| (a - b).abs() < 1e-6);
        let flipped = img.iter().zip(&mirror).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(same || flipped);
        mirrored += usize::from(flipped && !same);
    }
    assert!(
        (16..=48).contains(&mirrored),
        "about half are mirrored: {mirrored} of 64"
    );
}

#[test]
fn batch_norm_buffers_are_saved_with_pytorch_names() {
    let spec = convnet::ModelSpec::preset("cnn-plus").unwrap();
    let mut net = convnet::Network::build(&spec).unwrap();
    net.initialize(&mut rng(3), None);
    net.input_mut(4)
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i % 7) as f32 * 0.1);
    net.forward(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    convnet::checkpoint::save_model(&path, &net, &[]).unwrap();
    let file = convnet::checkpoint::TensorFile::read(&path).unwrap();
    let names = file.names();
    for n in [
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "bn4.running_var",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert_eq!(file.scalar_i64("bn1.num_batches_tracked").unwrap(), 1);
    let (mut loaded, _) = convnet::checkpoint::load_model(&path).unwrap();
    net.input_mut(2).fill(0.3);
    loaded.input_mut(2).fill(0.3);
    assert_eq!(
        net.forward(false).data,
        loaded.forward(false).data,
        "evaluation uses the saved running statistics"
    );
}

#[test]
fn seed_cnn_learns_fashion_mnist_and_reports_its_class_names() {
    let splits = load_splits(DatasetKind::FashionMnist, Some(&data_root()), 5000).unwrap();
    assert_eq!(splits.test.class_names[9], "Ankle boot");
    let mut cfg =
        convnet::train::TrainConfig::default_for(convnet::ModelSpec::preset("seed-cnn").unwrap());
    cfg.dataset = DatasetKind::FashionMnist;
    cfg.epochs = 1;
    cfg.optimizer = OptimizerKind::Adamw;
    cfg.lr = 0.003;
    cfg.weight_decay = 0.01;
    cfg.warmup_epochs = 0.2;
    let dir = tempfile::tempdir().unwrap();
    let out = convnet::train::train(&cfg, &splits, dir.path(), &mut |_| {}).unwrap();
    assert!(
        out.test.accuracy() > 0.80,
        "Fashion-MNIST after one epoch: {}/10000",
        out.test.correct
    );
    let (mut net, file) = convnet::checkpoint::load_model(dir.path()).unwrap();
    assert_eq!(file.class_names(10)[0], "T-shirt/top");
    let report = convnet::report::evaluate_report(&mut net, &splits.test, 500, 5);
    assert!(report.per_class_table().contains("Ankle boot"));
    assert_eq!(report.correct, out.test.correct);
}

/// The vector transpose (8 x 8 blocks in registers) against the plain loop, on every
/// vector unit this CPU has, for shapes with and without ragged edges.
#[test]
fn vector_transpose_matches_the_plain_loop() {
    use convnet::simd;
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
        }
    }
}
