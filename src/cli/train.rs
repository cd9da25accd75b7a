//! `convnet train`: train a network and write a run directory.

use super::common::{DataChoice, ModelChoice};
use anyhow::{Context, Result};
use convnet::data::dataset::load_splits;
use convnet::data::DatasetKind;
use convnet::init::Init;
use convnet::metrics::format_count;
use convnet::optim::Schedule;
use convnet::train::{train, Event, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelChoice,
    #[command(flatten)]
    data: DataChoice,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Base learning rate (the schedule scales it).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    lr: f32,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    momentum: f32,
    /// L2 weight decay, applied to weights and biases.
    #[arg(long, default_value_t = 5e-4, allow_negative_numbers = true)]
    weight_decay: f32,
    /// Exclude biases from weight decay.
    #[arg(long)]
    no_bias_decay: bool,
    /// Learning-rate schedule: constant, step or cosine (per iteration, down to 0).
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// For --schedule step: epochs between decays.
    #[arg(long, default_value_t = 3)]
    step_every: usize,
    /// For --schedule step: factor applied at each decay.
    #[arg(long, default_value_t = 0.1)]
    gamma: f32,
    /// Initialise every layer this way: gaussian, he or xavier (default: the model's own).
    #[arg(long)]
    init: Option<Init>,
    /// Standard deviation of gaussian initialisation; alone, it implies --init gaussian.
    #[arg(long, allow_negative_numbers = true)]
    init_std: Option<f32>,
    /// Seed for every random choice (initialisation, shuffling). Printed and saved.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Worker threads; 0 = one per core. Results are identical for any value.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Training images held out for validation (the tail of the training file).
    #[arg(long, default_value_t = 5000)]
    val_size: usize,
    /// Train on only the first N training images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Run directory (default: runs/<timestamp>-<model>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn schedule(args: &Args) -> Result<Schedule> {
    Ok(match args.schedule.as_str() {
        "constant" => Schedule::Constant,
        "cosine" => Schedule::Cosine,
        "step" => Schedule::Step {
            every: args.step_every,
            gamma: args.gamma,
        },
        other => anyhow::bail!(convnet::Error::Config(format!(
            "unknown --schedule `{other}`: expected constant, step or cosine"
        ))),
    })
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

/// A fresh run directory: `out` when given (must not hold a run yet), else a new one under runs/.
fn make_run_dir(out: Option<&Path>, name: &str) -> Result<PathBuf> {
    let dir = match out {
        Some(d) => {
            if d.join("metrics.csv").exists() {
                anyhow::bail!(convnet::Error::Config(format!(
                    "{} already holds a run; choose another --out",
                    d.display()
                )));
            }
            d.to_path_buf()
        }
        None => {
            let base = PathBuf::from("runs").join(format!("{}-{name}", timestamp()));
            let mut dir = base.clone();
            let mut k = 2;
            while dir.exists() {
                dir = PathBuf::from(format!("{}-{k}", base.display()));
                k += 1;
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create run directory {}", dir.display()))?;
    Ok(dir)
}

pub fn run(args: Args) -> Result<()> {
    let (model, preset) = args.model.resolve()?;
    let mut cfg = TrainConfig::default_for(model);
    cfg.preset = preset;
    cfg.dataset = args.data.kind_or(DatasetKind::Mnist);
    cfg.epochs = args.epochs;
    cfg.batch_size = args.batch_size;
    cfg.lr = args.lr;
    cfg.momentum = args.momentum;
    cfg.weight_decay = args.weight_decay;
    cfg.decay_bias = !args.no_bias_decay;
    cfg.schedule = schedule(&args)?;
    cfg.init = args.init;
    cfg.init_std = args.init_std;
    cfg.seed = args.seed;
    cfg.threads = args.threads;
    cfg.val_size = args.val_size;
    cfg.train_limit = args.limit;
    cfg.validate()?;

    let threads = convnet::runtime::init_threads(cfg.threads);
    let splits = load_splits(cfg.dataset, args.data.data.as_deref(), cfg.val_size)?;
    let run_dir = make_run_dir(args.out.as_deref(), &cfg.model.name)?;
    let n_train = cfg
        .train_limit
        .unwrap_or(splits.train.len())
        .min(splits.train.len());
    println!(
        "convnet train: model {} ({} parameters), {} — {} train / {} val / {} test images",
        cfg.model.name,
        convnet::network::group_digits(convnet::train::build_network(&cfg)?.param_count()),
        cfg.dataset,
        n_train,
        splits.val.len(),
        splits.test.len()
    );
    println!(
        "seed {} · threads {threads} · batch {} · lr {} ({:?}) · momentum {} · weight decay {}",
        cfg.seed, cfg.batch_size, cfg.lr, cfg.schedule, cfg.momentum, cfg.weight_decay
    );
    println!("run directory: {}", run_dir.display());

    let started = Instant::now();
    let mut progress = Progress::new(cfg.epochs);
    let outcome = train(&cfg, &splits, &run_dir, &mut |e| progress.event(e))?;
    let t = outcome.test;
    println!(
        "test: loss {:.4}, accuracy {} — {:.1}s in all",
        t.mean_loss(),
        format_count(t.correct, t.count),
        started.elapsed().as_secs_f64()
    );
    println!("saved {}", run_dir.join("model.safetensors").display());
    Ok(())
}

/// An indicatif bar on a terminal; a few plain lines per epoch otherwise.
struct Progress {
    epochs: usize,
    bar: Option<ProgressBar>,
    tty: bool,
    next_line: usize,
}

impl Progress {
    fn new(epochs: usize) -> Progress {
        Progress {
            epochs,
            bar: None,
            tty: std::io::stdout().is_terminal(),
            next_line: 0,
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::EpochStart { epoch, iters } => {
                if self.tty {
                    let bar = ProgressBar::new(iters as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed}<{eta})",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(format!("epoch {epoch}/{}", self.epochs));
                    self.bar = Some(bar);
                }
                self.next_line = iters.div_ceil(4);
            }
            Event::Batch {
                epoch,
                iter,
                iters,
                loss,
                images_per_sec,
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(iter as u64);
                    if iter % 10 == 0 || iter == iters {
                        bar.set_message(format!("loss {loss:.4} · {images_per_sec:.0} img/s"));
                    }
                } else if iter == self.next_line && iter < iters {
                    println!("  epoch {epoch} [{iter}/{iters}] loss {loss:.4} · {images_per_sec:.0} img/s");
                    self.next_line += iters.div_ceil(4);
                }
            }
            Event::Epoch(m) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                println!(
                    "epoch {:>2}/{} train loss {:.4} acc {} | val loss {:.4} acc {} | {:.1}s {:.0} img/s",
                    m.epoch,
                    self.epochs,
                    m.train.mean_loss(),
                    format_count(m.train.correct, m.train.count),
                    m.val.mean_loss(),
                    format_count(m.val.correct, m.val.count),
                    m.seconds,
                    m.images_per_sec
                );
            }
        }
    }
}
