//! Pieces several subcommands share: choosing a model, finding data.

use anyhow::Result;
use clap::Args;
use convnet::data::DatasetKind;
use convnet::init::Init;
use convnet::optim::Schedule;
use convnet::train::TrainConfig;
use convnet::ModelSpec;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `--preset NAME` or `--model FILE`.
#[derive(Args, Clone, Debug)]
pub struct ModelChoice {
    /// Built-in model: seed-cnn, cnn-plus or mlp.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// A model spec in TOML (see presets/ for examples).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

impl ModelChoice {
    /// The spec and the preset name (when it is one). Defaults to seed-cnn.
    pub fn resolve(&self) -> Result<(ModelSpec, Option<String>)> {
        Ok(match (&self.preset, &self.model) {
            (_, Some(path)) => (ModelSpec::load(path)?, None),
            (Some(p), None) => (ModelSpec::preset(p)?, Some(p.clone())),
            (None, None) => (ModelSpec::preset("seed-cnn")?, Some("seed-cnn".into())),
        })
    }
}

/// Where the data set comes from.
#[derive(Args, Clone, Debug)]
pub struct DataChoice {
    /// mnist or fashion-mnist [default: mnist, or the one a saved model was trained on].
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Folder holding the data set (DIR/<dataset>/ or DIR/); default: $CONVNET_DATA, then
    /// the cache folder, downloading when missing.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

impl DataChoice {
    /// The data set asked for, else `fallback`.
    pub fn kind_or(&self, fallback: DatasetKind) -> DatasetKind {
        self.dataset.unwrap_or(fallback)
    }
}

/// The training hyper-parameters, shared by train, sweep and compare.
#[derive(Args, Clone, Debug)]
pub struct TrainFlags {
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Base learning rate (the schedule scales it).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub lr: f32,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub momentum: f32,
    /// L2 weight decay, applied to weights and biases.
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// Exclude biases from weight decay.
    #[arg(long)]
    pub no_bias_decay: bool,
    /// Learning-rate schedule: constant, step, cosine (per iteration, down to 0) or onecycle.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// For --schedule step: epochs between decays.
    #[arg(long, default_value_t = 3)]
    pub step_every: usize,
    /// For --schedule step: factor applied at each decay.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Initialise every layer this way: gaussian, he or xavier (default: the model's own).
    #[arg(long)]
    pub init: Option<Init>,
    /// Standard deviation of gaussian initialisation; alone, it implies --init gaussian.
    #[arg(long, allow_negative_numbers = true)]
    pub init_std: Option<f32>,
    /// Seed for every random choice (initialisation, shuffling). Printed and saved.
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
    /// sgd (with --momentum), adam or adamw (betas 0.9, 0.999).
    #[arg(long, default_value = "sgd")]
    pub optimizer: convnet::optim::OptimizerKind,
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
    fn schedule(&self) -> Result<Schedule> {
        Ok(match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            "onecycle" | "one-cycle" | "one_cycle" => Schedule::OneCycle,
            "step" => Schedule::Step {
                every: self.step_every,
                gamma: self.gamma,
            },
            other => anyhow::bail!(convnet::Error::Config(format!(
                "unknown --schedule `{other}`: expected constant, step, cosine or onecycle"
            ))),
        })
    }

    /// The run's config, validated.
    pub fn config(&self, model: &ModelChoice, data: &DataChoice) -> Result<TrainConfig> {
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
        cfg.schedule = self.schedule()?;
        cfg.init = self.init;
        cfg.init_std = self.init_std;
        cfg.seed = self.seed;
        cfg.threads = self.threads;
        cfg.val_size = self.val_size;
        cfg.train_limit = self.limit;
        cfg.optimizer = self.optimizer;
        cfg.warmup_epochs = self.warmup_epochs;
        cfg.label_smoothing = self.label_smoothing;
        cfg.augment_shift = self.augment_shift;
        cfg.augment_rotate = self.augment_rotate;
        cfg.augment_flip = self.augment_flip;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Ctrl-C presses so far: the first asks for a checkpoint after the current batch, the
/// second exits at once (a checkpoint being written is a temporary file until renamed, so
/// the previous one stays intact).
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

pub fn install_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\nCtrl-C: finishing this batch and saving a checkpoint (press again to quit at once)");
        } else {
            eprintln!("\nCtrl-C again: quitting without a checkpoint");
            std::process::exit(130);
        }
    });
}

/// Has Ctrl-C been pressed?
pub fn interrupted() -> bool {
    INTERRUPTS.load(Ordering::SeqCst) > 0
}
