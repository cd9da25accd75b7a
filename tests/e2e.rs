//! End to end on real MNIST and Fashion-MNIST through the public library API (read through
//! `CONVNET_DATA`; without it these tests are listed as ignored, with it a missing data
//! set fails).

use convnet::nn::optim::{OptimizerKind, Schedule};
use convnet::{DatasetKind, Engine, Model, Splits, Trainer};
use std::path::PathBuf;

#[allow(dead_code)]
fn data_root() -> PathBuf {
    let root = PathBuf::from(
        std::env::var("CONVNET_DATA").expect("set CONVNET_DATA to the folder holding mnist/"),
    );
    assert!(
        root.join("mnist").is_dir(),
        "MNIST not found under {}",
        root.display()
    );
    root
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn seed_cnn_reaches_97_percent_after_one_epoch_and_classifies_its_test_images() {
    let splits = Splits::load_from(DatasetKind::Mnist, Some(&data_root()), 5000).unwrap();
    assert_eq!(
        (splits.train.len(), splits.val.len(), splits.test.len()),
        (55_000, 5_000, 10_000)
    );
    assert_eq!(&splits.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let dir = tempfile::tempdir().unwrap();
    let run = Trainer::preset("seed-cnn")
        .unwrap()
        .epochs(1)
        .threads(2)
        .run_dir(dir.path().join("run"))
        .train(&splits)
        .unwrap();
    assert!(
        run.test.accuracy() >= 0.97,
        "test accuracy {} after one epoch",
        run.test
    );
    assert_eq!(run.test.count, 10_000);
    assert_eq!(run.epochs.len(), 1);
    assert_eq!(run.epochs[0].val.count, 5000);
    assert_eq!(run.epochs[0].train.count, 55_000);
    // The run folder holds what `convnet train` writes, and the model reloads from it.
    for f in [
        "config.toml",
        "metrics.csv",
        "model.safetensors",
        "best.safetensors",
    ] {
        assert!(run.run_dir.join(f).is_file(), "{f} missing");
    }
    let mut model = run.model;
    let first: Vec<&[u8]> = (0..100).map(|i| splits.test.image(i)).collect();
    let batch = model.predict(&first).unwrap();
    let right = batch
        .iter()
        .zip(&splits.test.labels)
        .filter(|(p, &l)| p.label == l as usize)
        .count();
    assert!(right >= 95, "{right} of the first 100 test images");
    let mut loaded = Model::load(&run.run_dir).unwrap();
    assert_eq!(loaded.class_names()[7], "7");
    let p = loaded.classify_pixels(splits.test.image(0)).unwrap();
    // One image alone takes the GEMM crate's matrix-vector path: the same answer, the
    // probabilities equal to rounding.
    assert_eq!(
        p.label, batch[0].label,
        "the saved model says what the trained one said"
    );
    for (a, b) in p.probabilities.iter().zip(&batch[0].probabilities) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let top = p.top(3);
    assert_eq!(top[0].index, p.label);
    assert!(top[0].probability >= top[1].probability && top[1].probability >= top[2].probability);
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn the_seed_reports_hyper_parameters_train() {
    // batch 100, gaussian init std 0.1, weight decay 0.005, lr 0.001, momentum 0.9.
    let splits = Splits::load_from(DatasetKind::Mnist, Some(&data_root()), 5000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::preset("seed-cnn")
        .unwrap()
        .epochs(1)
        .batch_size(100)
        .lr(0.001)
        .schedule(Schedule::Constant)
        .run_dir(dir.path().join("run"));
    let cfg = t.config_mut();
    cfg.init_std = Some(0.1);
    cfg.weight_decay = 0.005;
    cfg.momentum = 0.9;
    let run = t.train(&splits).unwrap();
    // A small learning rate on a batch-mean loss: slow but steady (≈ 87% after one epoch).
    assert!(run.test.accuracy() > 0.80, "test accuracy {}", run.test);
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn seed_cnn_learns_fashion_mnist_and_reports_its_class_names() {
    let splits = Splits::load_from(DatasetKind::FashionMnist, Some(&data_root()), 5000).unwrap();
    assert_eq!(splits.test.class_names[9], "Ankle boot");
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::preset("seed-cnn")
        .unwrap()
        .epochs(1)
        .optimizer(OptimizerKind::Adamw)
        .lr(0.003)
        .run_dir(dir.path().join("run"));
    t.config_mut().weight_decay = 0.01;
    t.config_mut().warmup_epochs = 0.2;
    let run = t.train(&splits).unwrap();
    assert!(
        run.test.accuracy() > 0.80,
        "Fashion-MNIST after one epoch: {}",
        run.test
    );
    let model = Model::load(run.run_dir.join("model.safetensors")).unwrap();
    assert_eq!(model.class_names()[0], "T-shirt/top");
    assert_eq!(model.dataset(), Some(DatasetKind::FashionMnist));
}

/// The readable layers of `nn/` train a network on their own: slowly, but to the same
/// kind of accuracy.
#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn the_reference_engine_trains_the_seed_network() {
    let mut splits = Splits::load_from(DatasetKind::Mnist, Some(&data_root()), 500).unwrap();
    splits.test.truncate(1000);
    let dir = tempfile::tempdir().unwrap();
    let run = Trainer::preset("seed-cnn")
        .unwrap()
        .epochs(1)
        .limit(3000)
        .engine(Engine::Reference)
        .run_dir(dir.path().join("run"))
        .train(&splits)
        .unwrap();
    assert_eq!(run.model.network().engine(), Engine::Reference);
    assert!(run.test.accuracy() > 0.85, "test accuracy {}", run.test);
}
