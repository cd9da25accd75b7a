//! Everything that defines a run, saved as `config.toml` in its folder.

use crate::data::DatasetKind;
use crate::engine::memory;
use crate::nn::init::Init;
use crate::nn::optim::{Decay, Optimizer, OptimizerKind, Schedule};
use crate::nn::Mode;
use crate::run::trainer::EVAL_BATCH;
use crate::spec::ModelSpec;
use crate::Error;
use serde::{Deserialize, Serialize};

/// Everything that defines a run; saved as `config.toml` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The built-in model's name, when the model is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The data set trained on.
    pub dataset: DatasetKind,
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per training step.
    pub batch_size: usize,
    /// The base learning rate (the schedule scales it).
    pub lr: f32,
    /// SGD's momentum.
    pub momentum: f32,
    /// L2 (SGD, Adam) or decoupled (AdamW) weight decay.
    pub weight_decay: f32,
    /// Apply weight decay to biases (and batch norm's scale and shift) too.
    pub decay_bias: bool,
    /// Overrides every layer's initialisation when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Init>,
    /// The std of gaussian initialisation; alone, it implies gaussian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_std: Option<f32>,
    /// The one seed of every random choice.
    pub seed: u64,
    /// Worker threads (0 = one per core). Results do not depend on it.
    pub threads: usize,
    /// Training images held out for validation (the tail of the training file).
    pub val_size: usize,
    /// Use only the first N training images (quick experiments and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// sgd (with `momentum`), adam or adamw (with `beta1`, `beta2`, `eps`).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Adam's beta1.
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    /// Adam's beta2.
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    /// Adam's epsilon.
    #[serde(default = "default_eps")]
    pub eps: f32,
    /// Linear learning-rate warm-up over this many epochs (fractions allowed).
    #[serde(default)]
    pub warmup_epochs: f32,
    /// Softmax cross-entropy against (1 - s) * onehot + s / classes.
    #[serde(default)]
    pub label_smoothing: f32,
    /// Training images are shifted by up to this many pixels (uniform, each axis).
    #[serde(default)]
    pub augment_shift: f32,
    /// Training images are rotated by up to this many degrees (uniform, either way).
    #[serde(default)]
    pub augment_rotate: f32,
    /// Training images are mirrored left-right with probability 1/2.
    #[serde(default)]
    pub augment_flip: bool,
    /// How the learning rate changes over the run.
    pub schedule: Schedule,
    /// The architecture.
    pub model: ModelSpec,
}

fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.999
}
fn default_eps() -> f32 {
    1e-8
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
            optimizer: OptimizerKind::Sgd,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            augment_shift: 0.0,
            augment_rotate: 0.0,
            augment_flip: false,
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
        if self.epochs == 0 || self.epochs > 1_000_000 {
            return bad(format!(
                "--epochs must be from 1 to 1000000, got {}",
                self.epochs
            ));
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
        if !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
            || self.eps.is_nan()
            || self.eps <= 0.0
        {
            return bad(format!(
                "Adam needs 0 <= beta1, beta2 < 1 and eps > 0, got {}, {}, {}",
                self.beta1, self.beta2, self.eps
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        for (name, v) in [
            ("--warmup-epochs", self.warmup_epochs),
            ("--augment-shift", self.augment_shift),
            ("--augment-rotate", self.augment_rotate),
        ] {
            if v.is_nan() || v < 0.0 {
                return bad(format!("{name} must be >= 0, got {v}"));
            }
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
        if self.train_limit == Some(0) {
            return bad("--limit must be at least 1".into());
        }
        if self.threads > 1024 {
            return bad(format!("--threads {} is more than 1024", self.threads));
        }
        let layers = self.model.resolve()?;
        let threads = crate::threads::expected(self.threads);
        let (input, name) = (&self.model.input, &self.model.name);
        let train = memory::estimate(input, &layers, self.batch_size, Mode::Train, threads);
        let what = format!(
            "one training step of {} images (--batch-size)",
            self.batch_size
        );
        memory::check(name, train, &what)?;
        let eval = memory::estimate(input, &layers, EVAL_BATCH, Mode::Eval, threads);
        memory::check(
            name,
            eval,
            &format!("evaluation batches of {EVAL_BATCH} images"),
        )?;
        Ok(())
    }

    /// A fresh optimiser for this config.
    pub fn new_optimizer(&self) -> Optimizer {
        let opt = match self.optimizer {
            OptimizerKind::Sgd => Optimizer::sgd(self.momentum, self.weight_decay),
            k => Optimizer::adam(k, (self.beta1, self.beta2), self.eps, self.weight_decay),
        };
        opt.with_decay(if self.decay_bias {
            Decay::All
        } else {
            Decay::WeightsOnly
        })
    }

    /// The initialisation override given on the command line, if any.
    pub fn init_override(&self) -> Option<(Init, f32)> {
        match (self.init, self.init_std) {
            (None, None) => None,
            (Some(i), s) => Some((i, s.unwrap_or(self.model.init_std))),
            (None, Some(s)) => Some((Init::Gaussian, s)),
        }
    }

    /// The config as TOML (`config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }
}
