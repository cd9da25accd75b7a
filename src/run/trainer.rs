//! The training loop: seeded shuffling, batches, a training step, the optimiser, per-epoch
//! validation, the metric log and checkpoints.

use super::checkpoint::{
    model_tensors, save_model, to_safetensors, NamedTensor, TensorFile, SPEC_KEY,
};
use super::config::TrainConfig;
use super::metrics::{EpochMetrics, MetricsLog, HEADER};
use super::run_dir::{
    check_fresh, remove_stale_temporaries, run_files_in, RunLock, BEST, CHECKPOINT, CONFIG,
    METRICS, MODEL, STEPS, TIMES,
};
use crate::data::dataset::{Augment, Dataset, PixelLut, Splits};
use crate::engine::{Engine, Network};
use crate::fsutil::write_atomic;
use crate::nn::loss::{argmax, BatchStats};
use crate::nn::optim::Optimizer;
use crate::nn::Mode;
use crate::seed::{derive_seed, STREAM_INIT, STREAM_ITERATION, STREAM_SHUFFLE};
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

/// Batch size for validation and test passes: large enough to be fast, small enough to
/// keep the activations of a 10-epoch run well under 300 MB.
pub const EVAL_BATCH: usize = 500;

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
}

/// Checks, before any work, that a model fits a data set: its input is the shape of every
/// split's images and it outputs one score per class.
pub fn check_data_fits(spec: &ModelSpec, splits: &Splits) -> Result<(), Error> {
    let layers = spec.resolve()?;
    let kind = splits.kind;
    for (split, ds) in [
        ("training", &splits.train),
        ("validation", &splits.val),
        ("test", &splits.test),
    ] {
        let images = [1, ds.rows, ds.cols];
        if !ds.is_empty() && spec.input != images {
            return Err(Error::Config(format!(
                "model `{}` takes inputs of {}, but the {kind} {split} images are 1x{}x{}: set `input = [1, {}, {}]` in the model",
                spec.name,
                crate::tensor::ShapeDisplay(&spec.input),
                ds.rows,
                ds.cols,
                ds.rows,
                ds.cols
            )));
        }
    }
    let last = layers.last().expect("a resolved spec has layers");
    let (outputs, classes) = (last.output[0], splits.train.class_names.len());
    if outputs != classes {
        return Err(Error::Config(format!(
            "model `{}` outputs {outputs} scores (layer `{}`), but {kind} has {classes} classes: \
             give the last layer {classes} outputs",
            spec.name, last.name
        )));
    }
    Ok(())
}

/// Builds and initialises the network of a config.
pub fn build_network(cfg: &TrainConfig, engine: Engine) -> Result<Network, Error> {
    let mut net = Network::build_on(&cfg.model, engine)?;
    net.initialize(
        &mut Pcg64Mcg::seed_from_u64(derive_seed(cfg.seed, STREAM_INIT, 0)),
        cfg.init_override(),
    );
    Ok(net)
}

/// The shape of a run's epochs, from its config and the training set's size.
struct Plan {
    /// Training images used per epoch.
    n_train: usize,
    /// Batches per epoch.
    iters: usize,
    /// Batches in the whole run.
    total_iters: usize,
    /// Warm-up batches.
    warmup: usize,
}

impl Plan {
    fn new(cfg: &TrainConfig, train_len: usize) -> Plan {
        let n_train = cfg.train_limit.unwrap_or(train_len).min(train_len);
        let iters = n_train.div_ceil(cfg.batch_size);
        Plan {
            n_train,
            iters,
            total_iters: iters * cfg.epochs,
            warmup: (cfg.warmup_epochs * iters as f32).round() as usize,
        }
    }

    /// The learning rate at `iteration`.
    fn lr(&self, cfg: &TrainConfig, iteration: usize) -> f32 {
        cfg.schedule
            .lr_with_warmup(cfg.lr, iteration, self.iters, self.total_iters, self.warmup)
    }
}

/// Where a run is. Saved in every checkpoint; together with the seed it also fixes the
/// random state, since every epoch's shuffle is derived from (seed, epoch). Wall-clock
/// times are not part of it, so the same seed gives the same checkpoint bytes; they go to
/// `checkpoint.times` beside it, and the epochs' times are kept in `metrics.csv`.
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
    /// Training seconds of the epoch under way so far.
    #[serde(skip)]
    pub epoch_seconds: f64,
    /// Best validation accuracy so far (correct count) and its epoch (0 = none yet).
    pub best_val_correct: usize,
    pub best_epoch: usize,
    /// The metrics.csv rows so far (saved without their two time columns).
    pub metrics: Vec<String>,
    /// Training seconds over all finished epochs (validation not counted).
    #[serde(skip)]
    pub train_seconds: f64,
}

/// A metrics row without its time columns (seconds, images/s), which differ from run to run.
fn without_times(row: &str) -> String {
    let mut f: Vec<&str> = row.split(',').collect();
    let n = f.len();
    if n >= 2 {
        f[n - 2] = "0";
        f[n - 1] = "0";
    }
    f.join(",")
}

/// The wall-clock side of a checkpoint (`checkpoint.times`): what `RunState` leaves out.
#[derive(Serialize, Deserialize)]
struct Times {
    iteration: usize,
    epoch_seconds: f64,
}

const STATE_KEY: &str = "convnet.state";
const CONFIG_KEY: &str = "convnet.config";

/// A run in progress: the config, the network, the optimiser and where it is.
pub struct Training {
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
    /// The run folder is this process's while the training lives.
    _lock: RunLock,
}

impl Training {
    /// Starts a new run in `run_dir` (which must exist): writes `config.toml` and the
    /// metric log's header.
    pub fn new(cfg: &TrainConfig, run_dir: &Path) -> Result<Training, Error> {
        Training::new_on(cfg, run_dir, Engine::from_env())
    }

    /// `new` on a chosen engine.
    pub fn new_on(cfg: &TrainConfig, run_dir: &Path, engine: Engine) -> Result<Training, Error> {
        cfg.validate()?;
        let lock = RunLock::acquire(run_dir)?;
        // Checked under the lock: two processes starting into one folder cannot both pass.
        check_fresh(run_dir)?;
        Training::start(cfg, run_dir, engine, lock)
    }

    /// A new run in the folder `lock` holds.
    fn start(
        cfg: &TrainConfig,
        run_dir: &Path,
        engine: Engine,
        lock: RunLock,
    ) -> Result<Training, Error> {
        remove_stale_temporaries(run_dir);
        let net = build_network(cfg, engine)?;
        write_atomic(&run_dir.join(CONFIG), cfg.to_toml().as_bytes())?;
        MetricsLog::create(&run_dir.join(METRICS))?;
        Ok(Training {
            cfg: cfg.clone(),
            net,
            opt: cfg.new_optimizer(),
            state: RunState::default(),
            run_dir: run_dir.to_path_buf(),
            checkpoint_every: 0,
            evaluate_test: true,
            time_budget: None,
            steps: None,
            _lock: lock,
        })
    }

    /// Continues the run in `run_dir` from its last checkpoint (or from the start, with the
    /// same config, when it stopped before its first checkpoint). The metric and step logs
    /// are cut back to what the checkpoint knows, so no row is duplicated or lost.
    pub fn resume(run_dir: &Path) -> Result<Training, Error> {
        let cfg_path = run_dir.join(CONFIG);
        if !run_dir.is_dir() || !cfg_path.exists() {
            return Err(Error::Config(format!(
                "{} holds no convnet run (no {CONFIG}): give --resume the folder a training wrote",
                run_dir.display()
            )));
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: TrainConfig = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?;
        cfg.validate().map_err(|e| match e {
            Error::Config(m) | Error::Spec(m) => {
                Error::Config(format!("{}: {m}", cfg_path.display()))
            }
            e => e,
        })?;
        let lock = RunLock::acquire(run_dir)?;
        remove_stale_temporaries(run_dir);
        let ckpt = run_dir.join(CHECKPOINT);
        if !ckpt.exists() {
            // Stopped before its first checkpoint: start again with the same config. The
            // logs hold rows of no epoch any checkpoint knows, and the first epoch writes
            // its best model just before its checkpoint, so a kill between the two leaves
            // that too; anything else means the folder is not one a stopped run left.
            let left = [CONFIG, METRICS, STEPS, BEST];
            if let Some(f) = run_files_in(run_dir)
                .into_iter()
                .find(|f| !left.contains(f))
            {
                return Err(Error::model(
                    &run_dir.join(f),
                    format!("is there but {CHECKPOINT} is not: not a folder a stopped run left"),
                ));
            }
            for f in [METRICS, STEPS, BEST] {
                let _ = std::fs::remove_file(run_dir.join(f));
            }
            return Training::start(&cfg, run_dir, Engine::from_env(), lock);
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
        for (name, p) in net.named_params() {
            let buffers = opt
                .kind
                .buffer_names()
                .iter()
                .map(|b| file.tensor(&format!("optimizer.{name}.{b}"), &p.shape))
                .collect::<Result<Vec<_>, _>>()?;
            opt.state.push(buffers);
        }
        // Cut the logs back to the checkpoint, with each finished epoch's times from the log
        // when it holds that very row.
        let logged: Vec<String> = std::fs::read_to_string(run_dir.join(METRICS))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect();
        let mut state = state;
        for (row, old) in state.metrics.iter_mut().zip(&logged) {
            if without_times(old) == *row {
                row.clone_from(old);
            }
        }
        state.train_seconds = state
            .metrics
            .iter()
            .filter_map(|r| EpochMetrics::from_csv(r))
            .map(|m| m.seconds)
            .sum();
        let times: Option<Times> = std::fs::read_to_string(run_dir.join(TIMES))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        state.epoch_seconds = times
            .filter(|t| t.iteration == state.iteration)
            .map_or(0.0, |t| t.epoch_seconds);
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
        Ok(Training {
            cfg,
            net,
            opt,
            state,
            run_dir: run_dir.to_path_buf(),
            checkpoint_every: 0,
            evaluate_test: true,
            time_budget: None,
            steps: None,
            _lock: lock,
        })
    }

    /// Resumes the run in `run_dir` when it holds this very config, starts it otherwise
    /// (sweeps and comparisons re-run with the same command pick up where they stopped).
    pub fn resume_or_start(cfg: &TrainConfig, run_dir: &Path) -> Result<Training, Error> {
        let cfg_path = run_dir.join(CONFIG);
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let saved: Result<TrainConfig, _> = toml::from_str(&text);
            if saved.as_ref().ok() == Some(cfg) {
                return Training::resume(run_dir);
            }
            return Err(Error::Config(format!(
                "{} holds a run with different settings; remove it or choose another folder",
                run_dir.display()
            )));
        }
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        Training::new(cfg, run_dir)
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
        let mut saved = self.state.clone();
        saved.metrics = saved.metrics.iter().map(|r| without_times(r)).collect();
        meta.insert(
            STATE_KEY.to_string(),
            serde_json::to_string(&saved).expect("state serialises"),
        );
        write_atomic(
            &self.run_dir.join(CHECKPOINT),
            &to_safetensors(&tensors, meta),
        )?;
        let times = Times {
            iteration: self.state.iteration,
            epoch_seconds: self.state.epoch_seconds,
        };
        let times = serde_json::to_string(&times).expect("times serialise");
        write_atomic(&self.run_dir.join(TIMES), times.as_bytes())
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
    /// `Error::Interrupted` returned. Runs on a worker of the thread pool
    /// (`threads::on_pool`): each parallel loop of a step then starts on that worker at once.
    pub fn run(
        &mut self,
        splits: &Splits,
        on_event: &mut (dyn FnMut(Event) + Send),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<BatchStats>, Error> {
        crate::threads::on_pool(|| self.run_here(splits, on_event, stop))
    }

    /// `run`, on the calling thread.
    fn run_here(
        &mut self,
        splits: &Splits,
        on_event: &mut dyn FnMut(Event),
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<BatchStats>, Error> {
        check_data_fits(&self.cfg.model, splits)?;
        let plan = Plan::new(&self.cfg, splits.train.len());
        self.net.label_smoothing = self.cfg.label_smoothing;
        let log = MetricsLog::create(&self.run_dir.join(METRICS))?;
        for epoch in self.state.epochs_done..self.cfg.epochs {
            let (train, lr, seconds) =
                self.train_epoch(epoch, &plan, splits, &log, on_event, stop)?;
            let val = evaluate(&mut self.net, &splits.val, EVAL_BATCH, |_, _| {});
            let m = EpochMetrics {
                epoch: epoch + 1,
                iteration: self.state.iteration,
                lr,
                train,
                val,
                seconds,
                images_per_sec: train.count as f64 / seconds,
            };
            log.append(&m)?;
            if !val.loss_sum.is_finite() {
                return Err(Error::Diverged(format!(
                    "training diverged: the validation loss became {} after epoch {} (the training loss \
                     was {:.4}); the last good checkpoint is kept. Try a smaller --lr.",
                    val.loss_sum,
                    epoch + 1,
                    train.mean_loss()
                )));
            }
            self.end_epoch(&m)?;
            on_event(Event::Epoch(&m));
            if self
                .time_budget
                .is_some_and(|b| self.state.train_seconds >= b)
            {
                break;
            }
            if epoch + 1 < self.cfg.epochs && stop() {
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

    /// Trains epoch `epoch` (0-based) from where the state says it stands; returns its
    /// training statistics, the last learning rate and the training seconds.
    fn train_epoch(
        &mut self,
        epoch: usize,
        plan: &Plan,
        splits: &Splits,
        log: &MetricsLog,
        on_event: &mut dyn FnMut(Event),
        stop: &dyn Fn() -> bool,
    ) -> Result<(BatchStats, f32, f64), Error> {
        let (cfg, iters) = (self.cfg.clone(), plan.iters);
        let first = self.state.batch_in_epoch;
        on_event(Event::EpochStart {
            epoch: epoch + 1,
            iters,
            first_batch: first,
        });
        let order = epoch_order(cfg.seed, epoch, plan.n_train);
        let start = Instant::now();
        let seconds_before = self.state.epoch_seconds;
        let mut stats = BatchStats {
            loss_sum: self.state.epoch_loss_sum,
            correct: self.state.epoch_correct,
            count: self.state.epoch_count,
        };
        let count_at_start = stats.count;
        let mut lr = cfg.lr;
        let mut labels = Vec::with_capacity(cfg.batch_size);
        for (i, batch) in order.chunks(cfg.batch_size).enumerate().skip(first) {
            // Every random choice of this iteration (augmentation, dropout) is seeded by
            // (seed, iteration), so a resumed run makes the same ones.
            let it_seed = derive_seed(cfg.seed, STREAM_ITERATION, self.state.iteration as u64);
            self.fill_batch(&splits.train, batch, it_seed, &mut labels);
            self.net.reseed(it_seed);
            let s = self.net.train_step(&labels);
            lr = plan.lr(&cfg, self.state.iteration);
            stats.add(s);
            if !s.loss_sum.is_finite() {
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
                return Err(Error::Diverged(format!(
                    "training diverged: the loss became {} at epoch {}, iteration {} (lr {lr}); \
                     the last good checkpoint is kept. Try a smaller --lr.",
                    s.loss_sum,
                    epoch + 1,
                    i + 1
                )));
            }
            let step = self.state.iteration as u64 + 1;
            self.opt.step(self.net.params_mut(), lr, step);
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
            }
            if interrupted {
                return Err(self.interrupted());
            }
        }
        Ok((stats, lr, seconds_before + start.elapsed().as_secs_f64()))
    }

    /// The images `batch` of `train` into the network's input (augmented when the config
    /// says so, seeded by `seed`) and their labels into `labels`.
    fn fill_batch(&mut self, train: &Dataset, batch: &[u32], seed: u64, labels: &mut Vec<u8>) {
        let cfg = &self.cfg;
        let augment = Augment {
            shift: cfg.augment_shift,
            rotate: cfg.augment_rotate,
            flip: cfg.augment_flip,
        };
        let input = self.net.input_mut(batch.len());
        if augment.is_off() {
            train.fill_batch(batch, &PixelLut::new(cfg.model.normalize), input, labels);
        } else {
            train.fill_batch_augmented(batch, cfg.model.normalize, augment, seed, input, labels);
        }
    }

    /// Records a finished epoch: its metrics row in the state, the best model so far, a
    /// checkpoint.
    fn end_epoch(&mut self, m: &EpochMetrics) -> Result<(), Error> {
        self.state.metrics.push(m.to_csv());
        self.state.epochs_done = m.epoch;
        self.state.train_seconds += m.seconds;
        self.state.batch_in_epoch = 0;
        self.state.epoch_loss_sum = 0.0;
        self.state.epoch_correct = 0;
        self.state.epoch_count = 0;
        self.state.epoch_seconds = 0.0;
        let val = m.val;
        if val.count > 0
            && (self.state.best_epoch == 0 || val.correct > self.state.best_val_correct)
        {
            self.state.best_val_correct = val.correct;
            self.state.best_epoch = m.epoch;
            let meta = self.model_metadata(("convnet.best_epoch", m.epoch.to_string()));
            save_model(&self.run_dir.join(BEST), &self.net, &meta)?;
        }
        self.save_checkpoint()
    }

    fn interrupted(&self) -> Error {
        Error::Interrupted {
            signal: 2,
            msg: format!(
                "interrupted: checkpoint saved after epoch {} batch {} (iteration {})",
                self.state.epochs_done + usize::from(self.state.batch_in_epoch > 0),
                self.state.batch_in_epoch,
                self.state.iteration
            ),
        }
    }
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
        let out = net.forward(Mode::Eval);
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
