//! End to end on real MNIST (read through CONVNET_DATA; a missing data set fails).

use convnet::data::dataset::load_splits;
use convnet::data::DatasetKind;
use convnet::train::{train, TrainConfig};
use convnet::ModelSpec;
use std::path::PathBuf;

fn data_root() -> PathBuf {
    let root = std::env::var("CONVNET_DATA")
        .expect("set CONVNET_DATA to the folder holding mnist/ (see .ci/run)");
    let root = PathBuf::from(root);
    assert!(
        convnet::data::fetch::find_in(&root, DatasetKind::Mnist).is_some(),
        "MNIST not found under {}",
        root.display()
    );
    root
}

#[test]
fn seed_cnn_reaches_97_percent_after_one_epoch() {
    let splits = load_splits(DatasetKind::Mnist, Some(&data_root()), 5000).unwrap();
    assert_eq!(
        (splits.train.len(), splits.val.len(), splits.test.len()),
        (55_000, 5_000, 10_000)
    );
    assert_eq!(&splits.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let mut cfg = TrainConfig::default_for(ModelSpec::preset("seed-cnn").unwrap());
    cfg.epochs = 1;
    let dir = tempfile::tempdir().unwrap();
    let out = train(&cfg, &splits, dir.path(), &mut |_| {}).unwrap();
    let acc = out.test.accuracy();
    assert!(
        acc >= 0.97,
        "test accuracy {} after one epoch",
        out.test.correct
    );
    assert_eq!(out.test.count, 10_000);
    // The metric log has its header and one row per epoch.
    let log = convnet::metrics::MetricsLog::read(&dir.path().join("metrics.csv")).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].val.count, 5000);
    assert_eq!(log[0].train.count, 55_000);
}

#[test]
fn the_seed_reports_hyper_parameters_train() {
    // batch 100, gaussian init std 0.1, weight decay 0.005, lr 0.001, momentum 0.9.
    let splits = load_splits(DatasetKind::Mnist, Some(&data_root()), 5000).unwrap();
    let mut cfg = TrainConfig::default_for(ModelSpec::preset("seed-cnn").unwrap());
    cfg.epochs = 1;
    cfg.batch_size = 100;
    cfg.init_std = Some(0.1);
    cfg.weight_decay = 0.005;
    cfg.lr = 0.001;
    cfg.momentum = 0.9;
    cfg.schedule = convnet::optim::Schedule::Constant;
    let dir = tempfile::tempdir().unwrap();
    let out = train(&cfg, &splits, dir.path(), &mut |_| {}).unwrap();
    // A small learning rate on a batch-mean loss: slow but steady (≈ 87% after one epoch).
    assert!(
        out.test.accuracy() > 0.80,
        "test accuracy {}/10000",
        out.test.correct
    );
}
