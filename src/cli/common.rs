//! Pieces several subcommands share: the choice of an architecture or a trained model,
//! the data set, the training flags, and Ctrl-C.
//!
//! One meaning per flag name: `--spec` is an architecture (a TOML model spec), `--preset`
//! a built-in one, `--model` a trained model (a `.safetensors` file or the run folder
//! holding `model.safetensors`).

use crate::data::DatasetKind;
use crate::nn::init::Init;
use crate::nn::optim::{OptimizerKind, Schedule};
use crate::run::config::TrainConfig;
use crate::spec::ModelSpec;
use crate::Error;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The built-in models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// The seed report's network: two 3x3 conv blocks, two fully connected layers.
    SeedCnn,
    /// Three conv blocks 16-32-64 with batch norm and dropout.
    CnnPlus,
    /// A multi-layer perceptron: 784 -> 128 -> 10.
    Mlp,
}

impl Preset {
    /// The preset's name (`seed-cnn`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::SeedCnn => "seed-cnn",
            Preset::CnnPlus => "cnn-plus",
            Preset::Mlp => "mlp",
        }
    }

    /// Its spec.
    pub fn spec(self) -> Result<ModelSpec, Error> {
        ModelSpec::preset(self.name())
    }
}

/// `--preset NAME` or `--spec FILE`: an architecture.
#[derive(Args, Clone, Debug)]
pub struct SpecChoice {
    /// A built-in model [default: seed-cnn].
    #[arg(long, value_enum, conflicts_with_all = ["spec", "model"])]
    pub preset: Option<Preset>,
    /// A model spec in TOML (see presets/ for examples).
    #[arg(long, value_name = "FILE.toml", conflicts_with = "model")]
    pub spec: Option<PathBuf>,
    /// The old spelling of --spec (a TOML spec); --model now means a trained model.
    #[arg(long, value_name = "FILE.toml", hide = true)]
    pub model: Option<PathBuf>,
}

impl SpecChoice {
    /// The spec and the preset name (when it is one). Defaults to seed-cnn.
    pub fn resolve(&self) -> Result<(ModelSpec, Option<String>), Error> {
        if let Some(path) = &self.model {
            eprintln!(
                "note: --model {} is read as --spec (a TOML architecture); --model now names a trained model",
                path.display()
            );
        }
        Ok(
            match (&self.preset, self.spec.as_ref().or(self.model.as_ref())) {
                (_, Some(path)) => (ModelSpec::load(path)?, None),
                (Some(p), None) => (p.spec()?, Some(p.name().to_string())),
                (None, None) => (Preset::SeedCnn.spec()?, Some("seed-cnn".into())),
            },
        )
    }
}

/// The data sets, as flags name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// Handwritten digits.
    Mnist,
    /// Zalando's clothing images.
    #[value(alias = "fashion")]
    FashionMnist,
}

impl From<DatasetArg> for DatasetKind {
    fn from(d: DatasetArg) -> DatasetKind {
        match d {
            DatasetArg::Mnist => DatasetKind::Mnist,
            DatasetArg::FashionMnist => DatasetKind::FashionMnist,
        }
    }
}

/// Where the data set comes from.
#[derive(Args, Clone, Debug)]
pub struct DataChoice {
    /// The data set [default: mnist, or the one a saved model was trained on].
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetArg>,
    /// Folder holding the data set (DIR/<dataset>/ or DIR/); default: $CONVNET_DATA, then
    /// the cache folder, downloading when missing.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

impl DataChoice {
    /// The data set asked for, else `fallback`.
    pub fn kind_or(&self, fallback: DatasetKind) -> DatasetKind {
        self.dataset.map(DatasetKind::from).unwrap_or(fallback)
    }
}

/// Learning-rate schedules, as `--schedule` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// The base rate throughout.
    Constant,
    /// Multiplied by --gamma every --step-every epochs.
    Step,
    /// Half a cosine from the base rate down to 0, per iteration.
    Cosine,
    /// Up from lr/25 to lr over 30% of the run, then down to lr/25e4 (PyTorch's OneCycleLR).
    #[value(alias = "one-cycle")]
    Onecycle,
}

/// Optimisers, as `--optimizer` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// SGD with --momentum.
    Sgd,
    /// Adam, betas 0.9 and 0.999.
    Adam,
    /// AdamW: decoupled weight decay.
    Adamw,
}

/// Initialisations, as `--init` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitArg {
    /// N(0, --init-std^2).
    Gaussian,
    /// N(0, 2 / fan_in), for ReLU networks.
    He,
    /// N(0, 2 / (fan_in + fan_out)).
    Xavier,
}

/// The training hyper-parameters, shared by train, sweep and compare.
#[derive(Args, Clone, Debug)]
pub struct TrainFlags {
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Base learning rate (the schedule scales it).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub lr: f32,
    /// SGD's momentum.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f32,
    /// L2 weight decay, applied to weights and biases.
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// Exclude biases (and batch norm's scale and shift) from weight decay.
    #[arg(long)]
    pub no_bias_decay: bool,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// For --schedule step: epochs between decays.
    #[arg(long, default_value_t = 3)]
    pub step_every: usize,
    /// For --schedule step: factor applied at each decay.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Initialise every layer this way [default: the model's own].
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Standard deviation of gaussian initialisation; alone, it implies --init gaussian.
    #[arg(long, allow_negative_numbers = true)]
    pub init_std: Option<f32>,
    /// Seed for every random choice (initialisation, shuffling, dropout, augmentation).
    /// Printed and saved.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads; 0 = one per core. Results are identical for any value.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Training images held out for validation (the tail of the training file).
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Train on only the first N training images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Optimiser.
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerArg,
    /// Linear learning-rate warm-up over this many epochs (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f32,
    /// Label smoothing of the cross-entropy target, e.g. 0.1.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Augmentation: shift training images by up to this many pixels.
    #[arg(long, default_value_t = 0.0)]
    pub augment_shift: f32,
    /// Augmentation: rotate training images by up to this many degrees.
    #[arg(long, default_value_t = 0.0)]
    pub augment_rotate: f32,
    /// Augmentation: mirror training images left-right at random (for clothing, not digits).
    #[arg(long)]
    pub augment_flip: bool,
}

impl TrainFlags {
    fn schedule(&self) -> Schedule {
        match self.schedule {
            ScheduleArg::Constant => Schedule::Constant,
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Onecycle => Schedule::OneCycle,
            ScheduleArg::Step => Schedule::Step {
                every: self.step_every,
                gamma: self.gamma,
            },
        }
    }

    /// The run's config, validated.
    pub fn config(&self, model: &SpecChoice, data: &DataChoice) -> Result<TrainConfig, Error> {
        let (spec, preset) = model.resolve()?;
        let mut cfg = TrainConfig::default_for(spec);
        cfg.preset = preset;
        cfg.dataset = data.kind_or(DatasetKind::Mnist);
        cfg.epochs = self.epochs;
        cfg.batch_size = self.batch_size;
        cfg.lr = self.lr;
        cfg.momentum = self.momentum;
        cfg.weight_decay = self.weight_decay;
        cfg.decay_bias = !self.no_bias_decay;
        cfg.schedule = self.schedule();
        cfg.init = self.init.map(|i| match i {
            InitArg::Gaussian => Init::Gaussian,
            InitArg::He => Init::He,
            InitArg::Xavier => Init::Xavier,
        });
        cfg.init_std = self.init_std;
        cfg.seed = self.seed;
        cfg.threads = self.threads;
        cfg.val_size = self.val_size;
        cfg.train_limit = self.limit;
        cfg.optimizer = match self.optimizer {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Adamw => OptimizerKind::Adamw,
        };
        cfg.warmup_epochs = self.warmup_epochs;
        cfg.label_smoothing = self.label_smoothing;
        cfg.augment_shift = self.augment_shift;
        cfg.augment_rotate = self.augment_rotate;
        cfg.augment_flip = self.augment_flip;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Stop requests so far (Ctrl-C, SIGTERM, SIGHUP): the first asks for a checkpoint after
/// the current batch, the second exits at once (a checkpoint being written is a temporary
/// file until renamed, so the previous one stays intact).
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);
/// The signal that asked to stop (2 = SIGINT).
static SIGNAL: AtomicI32 = AtomicI32::new(2);

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "Ctrl-C",
    }
}

/// Sends this process's output to /dev/null: after SIGHUP the terminal is gone, and a
/// write to it would fail (and a failed print panic) before the checkpoint is written.
fn detach_from_terminal() {
    #[cfg(unix)]
    // SAFETY: opening /dev/null and duplicating it onto stdout and stderr; no memory is
    // shared with Rust code.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
}

/// Makes Ctrl-C, SIGTERM (what `timeout` and Slurm send) and SIGHUP (a closed terminal or
/// ssh session) ask the command to stop after the current batch, with a checkpoint.
pub fn install_ctrl_c() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGHUP {
                detach_from_terminal();
            }
            let name = signal_name(sig);
            let mut err = std::io::stderr();
            if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
                SIGNAL.store(sig, Ordering::SeqCst);
                let _ = writeln!(
                    err,
                    "\n{name}: finishing this batch and saving a checkpoint (again to quit at once)"
                );
            } else {
                let _ = writeln!(err, "\n{name} again: quitting without a checkpoint");
                std::process::exit(128 + sig);
            }
        }
    });
}

/// Has a stop been asked for?
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}

/// The error a command ends with when it was asked to stop: its exit code is 128 plus
/// the signal's number.
pub fn stopped(msg: String) -> Error {
    Error::Interrupted {
        signal: SIGNAL.load(Ordering::SeqCst),
        msg,
    }
}

/// The message of the last panic on any thread, kept by the panic hook (`cli::run`) so a
/// command or sweep trial that caught it can report it in one line.
pub static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Runs `f`, turning a panic (a bug) into `Error::Internal` with the panic's message.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            let msg = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
            Err(Error::Internal(msg))
        }
    }
}
