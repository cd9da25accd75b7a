//! The training loop: seeded shuffling, batches, forward, backward, SGD step, per-epoch
//! validation, and the metric log.

use crate::checkpoint::save_model;
use crate::data::dataset::{Dataset, DatasetKind, PixelLut, Splits};
use crate::init::Init;
use crate::loss::{argmax, BatchStats};
use crate::metrics::{EpochMetrics, MetricsLog};
use crate::network::Network;
use crate::optim::{Schedule, Sgd};
use crate::spec::ModelSpec;
use crate::Error;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Everything that defines a run; saved as `config.toml` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub dataset: DatasetKind,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Apply weight decay to biases too.
    pub decay_bias: bool,
    /// Overrides every layer's initialisation when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_std: Option<f32>,
    pub seed: u64,
    /// Worker threads (0 = one per core). Results do not depend on it.
    pub threads: usize,
    pub val_size: usize,
    /// Use only the first N training images (quick experiments and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    pub schedule: Schedule,
    pub model: ModelSpec,
}

impl TrainConfig {
    /// The defaults of `convnet train`: seed-cnn, 10 epochs, >= 99% on MNIST.
    pub fn default_for(model: ModelSpec) -> TrainConfig {
        TrainConfig {
            preset: None,
            dataset: DatasetKind::Mnist,
            epochs: 10,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            decay_bias: true,
            init: None,
            init_std: None,
            seed: 1,
            threads: 0,
            val_size: 5000,
            train_limit: None,
            schedule: Schedule::Cosine,
            model,
        }
    }

    /// Rejects settings that make no sense, before any work is done.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "--weight-decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if let Some(s) = self.init_std {
            if !(s >= 0.0 && s.is_finite()) {
                return bad(format!("--init-std must be >= 0, got {s}"));
            }
        }
        if let Schedule::Step { every, gamma } = self.schedule {
            if every == 0 || gamma.is_nan() || gamma <= 0.0 {
                return bad("a step schedule needs --step-every >= 1 and --gamma > 0".into());
            }
        }
        Network::build(&self.model)?;
        Ok(())
    }

    /// The initialisation override given on the command line, if any.
    pub fn init_override(&self) -> Option<(Init, f32)> {
        match (self.init, self.init_std) {
            (None, None) => None,
            (Some(i), s) => Some((i, s.unwrap_or(self.model.init_std))),
            (None, Some(s)) => Some((Init::Gaussian, s)),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }
}

/// A seed for each purpose and epoch, derived from the run's one seed (SplitMix64).
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const STREAM_INIT: u64 = 1;
const STREAM_SHUFFLE: u64 = 2;

/// The order in which epoch `epoch` (0-based) visits the training images.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut Pcg64Mcg::seed_from_u64(derive_seed(
        seed,
        STREAM_SHUFFLE,
        epoch as u64,
    )));
    order
}

/// What the training loop tells its caller as it goes.
pub enum Event<'a> {
    EpochStart {
        epoch: usize,
        iters: usize,
    },
    Batch {
        epoch: usize,
        iter: usize,
        iters: usize,
        loss: f64,
        images_per_sec: f64,
    },
    Epoch(&'a EpochMetrics),
}

pub struct Outcome {
    pub net: Network,
    pub metrics: Vec<EpochMetrics>,
    pub test: BatchStats,
}

/// Builds and initialises the network of a config.
pub fn build_network(cfg: &TrainConfig) -> Result<Network, Error> {
    let mut net = Network::build(&cfg.model)?;
    net.initialize(
        &mut Pcg64Mcg::seed_from_u64(derive_seed(cfg.seed, STREAM_INIT, 0)),
        cfg.init_override(),
    );
    Ok(net)
}

/// Trains from scratch into `run_dir` (which must exist): writes `config.toml`,
/// `metrics.csv` row by row and `model.safetensors` at the end.
pub fn train(
    cfg: &TrainConfig,
    splits: &Splits,
    run_dir: &Path,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, Error> {
    cfg.validate()?;
    crate::checkpoint::write_atomic(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    let log = MetricsLog::create(&run_dir.join("metrics.csv"))?;
    let mut net = build_network(cfg)?;
    let mut sgd = Sgd::new(cfg.momentum, cfg.weight_decay, cfg.decay_bias);
    let lut = PixelLut::new(cfg.model.normalize);
    let train_set = &splits.train;
    let n_train = cfg
        .train_limit
        .unwrap_or(train_set.len())
        .min(train_set.len());
    let iters = n_train.div_ceil(cfg.batch_size);
    let total_iters = iters * cfg.epochs;
    let mut labels = Vec::with_capacity(cfg.batch_size);
    let mut metrics = Vec::new();
    let mut iteration = 0;
    for epoch in 0..cfg.epochs {
        on_event(Event::EpochStart {
            epoch: epoch + 1,
            iters,
        });
        let order = epoch_order(cfg.seed, epoch, n_train);
        let start = Instant::now();
        let mut stats = BatchStats::default();
        let mut lr = cfg.lr;
        for (i, batch) in order.chunks(cfg.batch_size).enumerate() {
            train_set.fill_batch(batch, &lut, net.input_mut(batch.len()), &mut labels);
            net.forward(true);
            let s = net.backward(&labels);
            if !s.loss_sum.is_finite() {
                return Err(Error::Diverged(format!(
                    "the loss became {} at epoch {}, iteration {} (lr {lr}): try a smaller --lr",
                    s.loss_sum,
                    epoch + 1,
                    i + 1
                )));
            }
            lr = cfg.schedule.lr(cfg.lr, iteration, iters, total_iters);
            net.visit_params_mut(|k, _, p| sgd.update(k, p, lr));
            stats.add(s);
            iteration += 1;
            on_event(Event::Batch {
                epoch: epoch + 1,
                iter: i + 1,
                iters,
                loss: stats.mean_loss(),
                images_per_sec: stats.count as f64 / start.elapsed().as_secs_f64(),
            });
        }
        let seconds = start.elapsed().as_secs_f64();
        let val = evaluate(&mut net, &splits.val, 1000, |_, _| {});
        let m = EpochMetrics {
            epoch: epoch + 1,
            iteration,
            lr,
            train: stats,
            val,
            seconds,
            images_per_sec: stats.count as f64 / seconds,
        };
        log.append(&m)?;
        on_event(Event::Epoch(&m));
        metrics.push(m);
    }
    let test = evaluate(&mut net, &splits.test, 1000, |_, _| {});
    let meta = [
        ("convnet.dataset", cfg.dataset.to_string()),
        ("convnet.seed", cfg.seed.to_string()),
        (
            "convnet.test_accuracy",
            format!("{}/{}", test.correct, test.count),
        ),
    ];
    save_model(&run_dir.join("model.safetensors"), &net, &meta)?;
    Ok(Outcome { net, metrics, test })
}

/// Runs the network in evaluation mode over a whole data set; `per_sample(index, logits)`
/// sees every sample's logits.
pub fn evaluate(
    net: &mut Network,
    ds: &Dataset,
    batch: usize,
    mut per_sample: impl FnMut(usize, &[f32]),
) -> BatchStats {
    let lut = PixelLut::new(net.spec.normalize);
    let loss = net.spec.loss;
    let mut labels = Vec::with_capacity(batch);
    let mut stats = BatchStats::default();
    let all: Vec<u32> = (0..ds.len() as u32).collect();
    for (b, idx) in all.chunks(batch.max(1)).enumerate() {
        ds.fill_batch(idx, &lut, net.input_mut(idx.len()), &mut labels);
        let out = net.forward(false);
        for (j, &t) in labels.iter().enumerate() {
            let z = out.sample(j);
            stats.loss_sum += loss.sample_loss(z, t as usize);
            stats.correct += usize::from(argmax(z) == t as usize);
            stats.count += 1;
            per_sample(b * batch + j, z);
        }
    }
    stats
}
