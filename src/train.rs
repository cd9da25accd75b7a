//! The training loop: seeded shuffling, batches, forward, backward, SGD step, per-epoch
//! validation, and the metric log.

use crate::checkpoint::{
    model_tensors, save_model, to_safetensors, write_atomic, NamedTensor, TensorFile, SPEC_KEY,
};
use crate::data::dataset::{Augment, Dataset, DatasetKind, PixelLut, Splits};
use crate::init::Init;
use crate::loss::{argmax, BatchStats};
use crate::metrics::{EpochMetrics, MetricsLog, HEADER};
use crate::network::Network;
use crate::optim::{Optimizer, OptimizerKind, Schedule};
use crate::spec::ModelSpec;
use crate::Error;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
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
    /// sgd (with `momentum`), adam or adamw (with `beta1`, `beta2`, `eps`).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    #[serde(default = "default_beta2")]
    pub beta2: f32,
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
    pub schedule: Schedule,
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
        Network::build(&self.model)?;
        Ok(())
    }

    /// A fresh optimiser for this config.
    pub fn new_optimizer(&self) -> Optimizer {
        match self.optimizer {
            OptimizerKind::Sgd => Optimizer::sgd(self.momentum, self.weight_decay, self.decay_bias),
            k => Optimizer::adam(
                k,
                (self.beta1, self.beta2),
                self.eps,
                self.weight_decay,
                self.decay_bias,
            ),
        }
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

/// Batch size for validation and test passes: large enough to be fast, small enough to
/// keep the activations of a 10-epoch run well under 300 MB.
pub const EVAL_BATCH: usize = 500;

const STREAM_INIT: u64 = 1;
const STREAM_SHUFFLE: u64 = 2;
const STREAM_ITERATION: u64 = 3;

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
        first_batch: usize,
    },
    Batch {
        epoch: usize,
        iter: usize,
        iters: usize,
        loss: f64,
        images_per_sec: f64,
    },
    Epoch(&'a EpochMetrics),
    Checkpoint {
        path: &'a Path,
        state: &'a RunState,
    },
}

/// Checks that a model's input is the shape of the data set's images.
pub fn check_data_fits(spec: &ModelSpec, ds: &Dataset, dataset: DatasetKind) -> Result<(), Error> {
    let images = [1, ds.rows, ds.cols];
    if spec.input != images {
        return Err(Error::Config(format!(
            "model `{}` takes inputs of {}, but the {dataset} images are 1x{}x{}: set `input = [1, {}, {}]` in the model",
            spec.name,
            crate::tensor::ShapeDisplay(&spec.input),
            ds.rows,
            ds.cols,
            ds.rows,
            ds.cols
        )));
    }
    Ok(())
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

/// Where a run is. Saved in every checkpoint; together with the seed it also fixes the
/// random state, since every epoch's shuffle is derived from (seed, epoch).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Complete epochs.
    pub epochs_done: usize,
    /// Batches done in the epoch under way.
    pub batch_in_epoch: usize,
    /// Batches done over the whole run.
    pub iteration: usize,
    /// The running statistics of the epoch under way.
    pub epoch_loss_sum: f64,
    pub epoch_correct: usize,
    pub epoch_count: usize,
    pub epoch_seconds: f64,
    /// Best validation accuracy so far (correct count) and its epoch (0 = none yet).
    pub best_val_correct: usize,
    pub best_epoch: usize,
    /// The metrics.csv rows so far.
    pub metrics: Vec<String>,
    /// Training seconds over all finished epochs (validation not counted).
    #[serde(default)]
    pub train_seconds: f64,
}

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const BEST: &str = "best.safetensors";
pub const MODEL: &str = "model.safetensors";
pub const CONFIG: &str = "config.toml";
pub const METRICS: &str = "metrics.csv";
pub const STEPS: &str = "steps.csv";
const STATE_KEY: &str = "convnet.state";
const CONFIG_KEY: &str = "convnet.config";

/// A run in progress: the config, the network, the optimiser and where it is.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub net: Network,
    pub opt: Optimizer,
    pub state: RunState,
    pub run_dir: PathBuf,
    /// Write a checkpoint every this many iterations as well (0 = only at epoch ends).
    pub checkpoint_every: usize,
    /// Evaluate on the test set at the end (sweeps leave it for the chosen trial only).
    pub evaluate_test: bool,
    /// Stop at the first epoch end after this many training seconds.
    pub time_budget: Option<f64>,
    steps: Option<BufWriter<File>>,
}

impl Trainer {
    /// Starts a new run in `run_dir` (which must exist): writes `config.toml` and the
    /// metric log's header.
    pub fn new(cfg: &TrainConfig, run_dir: &Path) -> Result<Trainer, Error> {
        cfg.validate()?;
        write_atomic(&run_dir.join(CONFIG), cfg.to_toml().as_bytes())?;
        for f in [METRICS, STEPS, CHECKPOINT, BEST, MODEL] {
            let _ = std::fs::remove_file(run_dir.join(f));
        }
        MetricsLog::create(&run_dir.join(METRICS))?;
        Ok(Trainer {
            cfg: cfg.clone(),
            net: build_network(cfg)?,
            opt: cfg.new_optimizer(),
            state: RunState::default(),
            run_dir: run_dir.to_path_buf(),
            checkpoint_every: 0,
            evaluate_test: true,
            time_budget: None,
            steps: None,
        })
    }

    /// Continues the run in `run_dir` from its last checkpoint (or from the start, with the
    /// same config, when it stopped before its first checkpoint). The metric and step logs
    /// are cut back to what the checkpoint knows, so no row is duplicated or lost.
    pub fn resume(run_dir: &Path) -> Result<Trainer, Error> {
        let cfg_path = run_dir.join(CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: TrainConfig = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
        let ckpt = run_dir.join(CHECKPOINT);
        if !ckpt.exists() {
            return Trainer::new(&cfg, run_dir);
        }
        let file = TensorFile::read(&ckpt)?;
        let state: RunState = serde_json::from_str(
            file.metadata
                .get(STATE_KEY)
                .map(String::as_str)
                .unwrap_or(""),
        )
        .map_err(|e| Error::model(&ckpt, format!("has no valid `{STATE_KEY}` metadata ({e})")))?;
        if file.spec()? != cfg.model {
            return Err(Error::model(
                &ckpt,
                format!("its model differs from the one in {}", cfg_path.display()),
            ));
        }
        let mut net = Network::build(&cfg.model)?;
        file.load_weights(&mut net)?;
        let mut opt = cfg.new_optimizer();
        let mut result = Ok(());
        net.visit_params_mut(|_, layer, p| {
            let name = format!("{layer}.{}", p.name);
            let buffers = opt
                .kind
                .buffer_names()
                .iter()
                .map(|b| file.tensor(&format!("optimizer.{name}.{b}"), &p.shape))
                .collect::<Result<Vec<_>, _>>();
            match buffers {
                Ok(b) if result.is_ok() => opt.state.push(b),
                Ok(_) => {}
                Err(e) => result = Err(e),
            }
        });
        result?;
        // Cut the logs back to the checkpoint.
        let metrics = format!(
            "{HEADER}\n{}",
            state
                .metrics
                .iter()
                .map(|r| format!("{r}\n"))
                .collect::<String>()
        );
        write_atomic(&run_dir.join(METRICS), metrics.as_bytes())?;
        let steps_path = run_dir.join(STEPS);
        if let Ok(text) = std::fs::read_to_string(&steps_path) {
            let kept: String = text
                .lines()
                .enumerate()
                .filter(|(i, l)| {
                    *i == 0
                        || l.split(',')
                            .next()
                            .and_then(|v| v.parse::<usize>().ok())
                            .is_some_and(|it| it <= state.iteration)
                })
                .map(|(_, l)| format!("{l}\n"))
                .collect();
            write_atomic(&steps_path, kept.as_bytes())?;
        }
        Ok(Trainer {
            cfg,
            net,
            opt,
            state,
            run_dir: run_dir.to_path_buf(),
            checkpoint_every: 0,
            evaluate_test: true,
            time_budget: None,
            steps: None,
        })
    }

    /// Resumes the run in `run_dir` when it holds this very config, starts it otherwise
    /// (sweeps and comparisons re-run with the same command pick up where they stopped).
    pub fn resume_or_start(cfg: &TrainConfig, run_dir: &Path) -> Result<Trainer, Error> {
        let cfg_path = run_dir.join(CONFIG);
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let saved: Result<TrainConfig, _> = toml::from_str(&text);
            if saved.as_ref().ok() == Some(cfg) {
                return Trainer::resume(run_dir);
            }
            return Err(Error::Config(format!(
                "{} holds a run with different settings; remove it or choose another folder",
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        Trainer::new(cfg, run_dir)
    }

    /// Writes `checkpoint.safetensors`: weights, momentum buffers, the config, the state.
    pub fn save_checkpoint(&mut self) -> Result<(), Error> {
        if let Some(s) = self.steps.as_mut() {
            s.flush()
                .map_err(|e| Error::io(&self.run_dir.join(STEPS), e))?;
        }
        let mut tensors = model_tensors(&self.net);
        let names: Vec<(String, Vec<usize>)> = self
            .net
            .named_params()
            .iter()
            .map(|(n, p)| (n.clone(), p.shape.clone()))
            .collect();
        let zeros: Vec<Vec<f32>> = names
            .iter()
            .map(|(_, s)| vec![0.0; s.iter().product()])
            .collect();
        for (k, (name, shape)) in names.into_iter().enumerate() {
            for (b, buffer) in self.opt.kind.buffer_names().iter().enumerate() {
                let v = self
                    .opt
                    .state
                    .get(k)
                    .and_then(|st| st.get(b))
                    .filter(|v| !v.is_empty())
                    .unwrap_or(&zeros[k]);
                tensors.push(NamedTensor {
                    name: format!("optimizer.{name}.{buffer}"),
                    shape: shape.clone(),
                    values: v,
                    int: None,
                });
            }
        }
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert(SPEC_KEY.to_string(), self.net.spec.to_toml());
        meta.insert(CONFIG_KEY.to_string(), self.cfg.to_toml());
        meta.insert(
            STATE_KEY.to_string(),
            serde_json::to_string(&self.state).expect("state serialises"),
        );
        write_atomic(
            &self.run_dir.join(CHECKPOINT),
            &to_safetensors(&tensors, meta),
        )
    }

    fn model_metadata(&self, extra: (&'static str, String)) -> Vec<(&'static str, String)> {
        let classes =
            serde_json::to_string(&self.cfg.dataset.class_names()).expect("strings serialise");
        vec![
            ("convnet.dataset", self.cfg.dataset.to_string()),
            ("convnet.classes", classes),
            ("convnet.seed", self.cfg.seed.to_string()),
            ("convnet.val_size", self.cfg.val_size.to_string()),
            extra,
        ]
    }

    fn log_step(&mut self, epoch: usize, loss: f64, lr: f32) -> Result<(), Error> {
        if self.steps.is_none() {
            let path = self.run_dir.join(STEPS);
            let fresh = !path.exists();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let mut w = BufWriter::new(f);
            if fresh {
                writeln!(w, "iteration,epoch,loss,lr").map_err(|e| Error::io(&path, e))?;
            }
            self.steps = Some(w);
        }
        let w = self.steps.as_mut().expect("opened above");
        writeln!(w, "{},{epoch},{loss:.6},{lr}", self.state.iteration)
            .map_err(|e| Error::io(&self.run_dir.join(STEPS), e))
    }

    /// Trains until the configured number of epochs (or the time budget), then evaluates on
    /// the test set (unless `evaluate_test` is off) and writes `model.safetensors`.
    /// `stop()` is asked after every batch; when it says yes, a checkpoint is written and
    /// `Error::Interrupted` returned.
    pub fn run(
        &mut self,
        splits: &Splits,
        on_event: &mut dyn FnMut(Event),
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<BatchStats>, Error> {
        let cfg = self.cfg.clone();
        check_data_fits(&cfg.model, &splits.train, cfg.dataset)?;
        let lut = PixelLut::new(cfg.model.normalize);
        let train_set = &splits.train;
        let n_train = cfg
            .train_limit
            .unwrap_or(train_set.len())
            .min(train_set.len());
        let iters = n_train.div_ceil(cfg.batch_size);
        let total_iters = iters * cfg.epochs;
        let warmup = (cfg.warmup_epochs * iters as f32).round() as usize;
        let augment = Augment {
            shift: cfg.augment_shift,
            rotate: cfg.augment_rotate,
            flip: cfg.augment_flip,
        };
        self.net.label_smoothing = cfg.label_smoothing;
        let log = MetricsLog::create(&self.run_dir.join(METRICS))?;
        let mut labels = Vec::with_capacity(cfg.batch_size);
        for epoch in self.state.epochs_done..cfg.epochs {
            let first = self.state.batch_in_epoch;
            on_event(Event::EpochStart {
                epoch: epoch + 1,
                iters,
                first_batch: first,
            });
            let order = epoch_order(cfg.seed, epoch, n_train);
            let start = Instant::now();
            let seconds_before = self.state.epoch_seconds;
            let mut stats = BatchStats {
                loss_sum: self.state.epoch_loss_sum,
                correct: self.state.epoch_correct,
                count: self.state.epoch_count,
            };
            let count_at_start = stats.count;
            let mut lr = cfg.lr;
            for (i, batch) in order.chunks(cfg.batch_size).enumerate().skip(first) {
                // Every random choice of this iteration (augmentation, dropout) is seeded
                // by (seed, iteration), so a resumed run makes the same ones.
                let it_seed = derive_seed(cfg.seed, STREAM_ITERATION, self.state.iteration as u64);
                if augment.is_off() {
                    train_set.fill_batch(batch, &lut, self.net.input_mut(batch.len()), &mut labels);
                } else {
                    let input = self.net.input_mut(batch.len());
                    train_set.fill_batch_augmented(
                        batch,
                        cfg.model.normalize,
                        augment,
                        it_seed,
                        input,
                        &mut labels,
                    );
                }
                self.net.reseed(it_seed);
                let s = self.net.train_step(&labels);
                lr = cfg.schedule.lr_with_warmup(
                    cfg.lr,
                    self.state.iteration,
                    iters,
                    total_iters,
                    warmup,
                );
                if !s.loss_sum.is_finite() {
                    let msg = format!(
                        "training diverged: the loss became {} at epoch {}, iteration {} (lr {lr}); \
                         the last good checkpoint is kept. Try a smaller --lr.",
                        s.loss_sum,
                        epoch + 1,
                        i + 1
                    );
                    stats.add(s);
                    let row = EpochMetrics {
                        epoch: epoch + 1,
                        iteration: self.state.iteration + 1,
                        lr,
                        train: stats,
                        val: BatchStats::default(),
                        seconds: seconds_before + start.elapsed().as_secs_f64(),
                        images_per_sec: 0.0,
                    };
                    log.append(&row)?;
                    return Err(Error::Diverged(msg));
                }
                let opt = &mut self.opt;
                let step = self.state.iteration as u64 + 1;
                self.net
                    .visit_params_mut(|k, _, p| opt.update(k, p, lr, step));
                stats.add(s);
                self.state.iteration += 1;
                self.state.batch_in_epoch = i + 1;
                self.log_step(epoch + 1, s.mean_loss(), lr)?;
                let secs = start.elapsed().as_secs_f64();
                on_event(Event::Batch {
                    epoch: epoch + 1,
                    iter: i + 1,
                    iters,
                    loss: stats.mean_loss(),
                    images_per_sec: (stats.count - count_at_start) as f64 / secs,
                });
                let interrupted = i + 1 < iters && stop();
                let periodic = self.checkpoint_every > 0
                    && self.state.iteration.is_multiple_of(self.checkpoint_every);
                if (interrupted || periodic) && i + 1 < iters {
                    self.state.epoch_loss_sum = stats.loss_sum;
                    self.state.epoch_correct = stats.correct;
                    self.state.epoch_count = stats.count;
                    self.state.epoch_seconds = seconds_before + secs;
                    self.save_checkpoint()?;
                    let path = self.run_dir.join(CHECKPOINT);
                    on_event(Event::Checkpoint {
                        path: &path,
                        state: &self.state,
                    });
                }
                if interrupted {
                    return Err(self.interrupted());
                }
            }
            let seconds = seconds_before + start.elapsed().as_secs_f64();
            let val = evaluate(&mut self.net, &splits.val, EVAL_BATCH, |_, _| {});
            let m = EpochMetrics {
                epoch: epoch + 1,
                iteration: self.state.iteration,
                lr,
                train: stats,
                val,
                seconds,
                images_per_sec: stats.count as f64 / seconds,
            };
            log.append(&m)?;
            self.state.metrics.push(m.to_csv());
            self.state.epochs_done = epoch + 1;
            self.state.train_seconds += seconds;
            self.state.batch_in_epoch = 0;
            self.state.epoch_loss_sum = 0.0;
            self.state.epoch_correct = 0;
            self.state.epoch_count = 0;
            self.state.epoch_seconds = 0.0;
            if val.count > 0
                && (self.state.best_epoch == 0 || val.correct > self.state.best_val_correct)
            {
                self.state.best_val_correct = val.correct;
                self.state.best_epoch = epoch + 1;
                let meta = self.model_metadata(("convnet.best_epoch", (epoch + 1).to_string()));
                save_model(&self.run_dir.join(BEST), &self.net, &meta)?;
            }
            self.save_checkpoint()?;
            on_event(Event::Epoch(&m));
            if self
                .time_budget
                .is_some_and(|b| self.state.train_seconds >= b)
            {
                break;
            }
            if epoch + 1 < cfg.epochs && stop() {
                return Err(self.interrupted());
            }
        }
        let test = self
            .evaluate_test
            .then(|| evaluate(&mut self.net, &splits.test, EVAL_BATCH, |_, _| {}));
        let note = match test {
            Some(t) => (
                "convnet.test_accuracy",
                format!("{}/{}", t.correct, t.count),
            ),
            None => ("convnet.epochs", self.state.epochs_done.to_string()),
        };
        let meta = self.model_metadata(note);
        save_model(&self.run_dir.join(MODEL), &self.net, &meta)?;
        Ok(test)
    }

    fn interrupted(&self) -> Error {
        Error::Interrupted(format!(
            "interrupted: checkpoint saved after epoch {} batch {} (iteration {})",
            self.state.epochs_done + usize::from(self.state.batch_in_epoch > 0),
            self.state.batch_in_epoch,
            self.state.iteration
        ))
    }
}

pub struct Outcome {
    pub net: Network,
    pub metrics: Vec<EpochMetrics>,
    pub test: BatchStats,
}

/// Trains from scratch into `run_dir` (which must exist), without interruption.
pub fn train(
    cfg: &TrainConfig,
    splits: &Splits,
    run_dir: &Path,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, Error> {
    let mut t = Trainer::new(cfg, run_dir)?;
    let test = t
        .run(splits, on_event, &|| false)?
        .expect("the test set is evaluated");
    let metrics = t
        .state
        .metrics
        .iter()
        .filter_map(|r| EpochMetrics::from_csv(r))
        .collect();
    Ok(Outcome {
        net: t.net,
        metrics,
        test,
    })
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
