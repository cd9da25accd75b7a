//! Training from code: a builder over the run's settings that does what `convnet train`
//! does — a run folder with its config, metric log, checkpoints and model, the thread
//! count and denormal flush applied, the data set's shape checked first.

use crate::data::Splits;
use crate::engine::Engine;
use crate::model::Model;
use crate::nn::loss::BatchStats;
use crate::nn::optim::{OptimizerKind, Schedule};
use crate::run::config::TrainConfig;
use crate::run::metrics::EpochMetrics;
use crate::run::run_dir::create_run_dir;
use crate::run::trainer::{Event, Training};
use crate::spec::ModelSpec;
use crate::Error;
use std::path::PathBuf;

/// Trains a network, with `convnet train`'s defaults for every setting not given
/// (10 epochs, batch 64, SGD lr 0.05 with momentum 0.9 and weight decay 5e-4, cosine
/// schedule, seed 1, every core).
///
/// ```no_run
/// use convnet::{DatasetKind, Splits, Trainer};
/// let splits = Splits::load(DatasetKind::FashionMnist)?;
/// let run = Trainer::preset("seed-cnn")?.epochs(3).train(&splits)?;
/// println!("{}: test {}", run.run_dir.display(), run.test);
/// let mut model = run.model;
/// let p = model.classify("shoe.jpg")?;
/// println!("{} ({:.0}%)", p.class, 100.0 * p.probability);
/// # Ok::<(), convnet::Error>(())
/// ```
pub struct Trainer {
    cfg: TrainConfig,
    run_dir: Option<PathBuf>,
    engine: Engine,
    checkpoint_every: usize,
    on_epoch: Option<OnEpoch>,
}

/// What `Trainer::on_epoch` is given.
type OnEpoch = Box<dyn FnMut(&EpochMetrics) + Send>;

/// What a finished training run left.
pub struct TrainedRun {
    /// The run folder: `config.toml`, `metrics.csv`, `model.safetensors`, ...
    pub run_dir: PathBuf,
    /// Accuracy and loss on the test set.
    pub test: BatchStats,
    /// Every epoch's metrics.
    pub epochs: Vec<EpochMetrics>,
    /// The trained model.
    pub model: Model,
}

impl Trainer {
    /// Trains the network `spec` describes.
    pub fn new(spec: ModelSpec) -> Trainer {
        Trainer {
            cfg: TrainConfig::default_for(spec),
            run_dir: None,
            engine: Engine::from_env(),
            checkpoint_every: 0,
            on_epoch: None,
        }
    }

    /// Trains a built-in model: `seed-cnn`, `cnn-plus` or `mlp`.
    pub fn preset(name: &str) -> Result<Trainer, Error> {
        let mut t = Trainer::new(ModelSpec::preset(name)?);
        t.cfg.preset = Some(name.to_string());
        Ok(t)
    }

    /// Starts from a whole config (every setting of `convnet train`).
    pub fn from_config(cfg: TrainConfig) -> Trainer {
        let mut t = Trainer::new(cfg.model.clone());
        t.cfg = cfg;
        t
    }

    /// Passes over the training set.
    pub fn epochs(mut self, epochs: usize) -> Trainer {
        self.cfg.epochs = epochs;
        self
    }

    /// Images per training step.
    pub fn batch_size(mut self, batch_size: usize) -> Trainer {
        self.cfg.batch_size = batch_size;
        self
    }

    /// The base learning rate (the schedule scales it).
    pub fn lr(mut self, lr: f32) -> Trainer {
        self.cfg.lr = lr;
        self
    }

    /// SGD, Adam or AdamW.
    pub fn optimizer(mut self, kind: OptimizerKind) -> Trainer {
        self.cfg.optimizer = kind;
        self
    }

    /// How the learning rate changes over the run.
    pub fn schedule(mut self, schedule: Schedule) -> Trainer {
        self.cfg.schedule = schedule;
        self
    }

    /// The one seed of every random choice (initialisation, shuffling, dropout,
    /// augmentation).
    pub fn seed(mut self, seed: u64) -> Trainer {
        self.cfg.seed = seed;
        self
    }

    /// Worker threads (0 = one per core). Results are the same for any number.
    pub fn threads(mut self, threads: usize) -> Trainer {
        self.cfg.threads = threads;
        self
    }

    /// Trains on only the first `n` training images.
    pub fn limit(mut self, n: usize) -> Trainer {
        self.cfg.train_limit = Some(n);
        self
    }

    /// The run folder (default: `runs/<time>-<model>`); it must not hold a run yet.
    pub fn run_dir(mut self, dir: impl Into<PathBuf>) -> Trainer {
        self.run_dir = Some(dir.into());
        self
    }

    /// Which code runs the passes (default: `Engine::from_env()`).
    pub fn engine(mut self, engine: Engine) -> Trainer {
        self.engine = engine;
        self
    }

    /// Writes a checkpoint every `n` iterations as well as after every epoch.
    pub fn checkpoint_every(mut self, n: usize) -> Trainer {
        self.checkpoint_every = n;
        self
    }

    /// Called after every epoch with its metrics.
    pub fn on_epoch(mut self, f: impl FnMut(&EpochMetrics) + Send + 'static) -> Trainer {
        self.on_epoch = Some(Box::new(f));
        self
    }

    /// Every other setting.
    pub fn config_mut(&mut self) -> &mut TrainConfig {
        &mut self.cfg
    }

    /// Trains on `splits` (their data set and validation size go into the config), then
    /// measures the test accuracy and saves the model.
    pub fn train(mut self, splits: &Splits) -> Result<TrainedRun, Error> {
        self.cfg.dataset = splits.kind;
        self.cfg.val_size = splits.val.len();
        self.cfg.validate()?;
        crate::run::trainer::check_data_fits(&self.cfg.model, splits)?;
        let dir = create_run_dir(self.run_dir.as_deref(), &self.cfg.model.name)?;
        let pool = crate::threads::pool(self.cfg.threads)?;
        let mut on_epoch = self.on_epoch.take();
        let (cfg, engine, every) = (self.cfg, self.engine, self.checkpoint_every);
        pool.install(move || {
            crate::threads::flush_denormals();
            let mut training = Training::new_on(&cfg, &dir, engine)?;
            training.checkpoint_every = every;
            let mut events = |e: Event| {
                if let (Event::Epoch(m), Some(f)) = (e, on_epoch.as_mut()) {
                    f(m);
                }
            };
            let test = training
                .run(splits, &mut events, &|| false)?
                .ok_or_else(|| Error::Internal("the test set was not evaluated".into()))?;
            let epochs = training
                .state
                .metrics
                .iter()
                .filter_map(|r| EpochMetrics::from_csv(r))
                .collect();
            let file =
                crate::run::checkpoint::TensorFile::read(&dir.join(crate::run::run_dir::MODEL))?;
            Ok(TrainedRun {
                model: Model::from_parts(training.net, &file),
                run_dir: dir,
                test,
                epochs,
            })
        })
    }
}
