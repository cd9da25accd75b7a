//! `convnet train`: train a network and write a run directory.

use super::common::{DataChoice, ModelChoice};
use anyhow::{Context, Result};
use convnet::data::dataset::load_splits;
use convnet::data::DatasetKind;
use convnet::init::Init;
use convnet::metrics::format_count;
use convnet::optim::Schedule;
use convnet::train::{Event, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Continue the run in this directory from its last checkpoint, with its saved
    /// settings (only --data and --threads are taken from the command line).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Also write a checkpoint every N iterations (one is always written after each epoch).
    #[arg(long, value_name = "N", default_value_t = 0)]
    checkpoint_every: usize,
    /// Do not draw curves.png / curves.svg at the end.
    #[arg(long)]
    no_plot: bool,
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

fn config_from_args(args: &Args) -> Result<TrainConfig> {
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
    cfg.schedule = schedule(args)?;
    cfg.init = args.init;
    cfg.init_std = args.init_std;
    cfg.seed = args.seed;
    cfg.threads = args.threads;
    cfg.val_size = args.val_size;
    cfg.train_limit = args.limit;
    cfg.validate()?;
    Ok(cfg)
}

/// Ctrl-C presses so far: the first asks for a checkpoint after the current batch, the
/// second exits at once (a checkpoint being written is a temporary file until renamed, so
/// the previous one stays intact).
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn install_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            eprintln!("\nCtrl-C: finishing this batch and saving a checkpoint (press again to quit at once)");
        } else {
            eprintln!("\nCtrl-C again: quitting without a checkpoint");
            std::process::exit(130);
        }
    });
}

pub fn run(args: Args) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            let t = Trainer::resume(dir)?;
            if t.state.epochs_done >= t.cfg.epochs && dir.join(convnet::train::MODEL).exists() {
                anyhow::bail!(convnet::Error::Config(format!(
                    "{} has finished all {} epochs; nothing to resume",
                    dir.display(),
                    t.cfg.epochs
                )));
            }
            t
        }
        None => {
            let cfg = config_from_args(&args)?;
            let dir = make_run_dir(args.out.as_deref(), &cfg.model.name)?;
            Trainer::new(&cfg, &dir)?
        }
    };
    trainer.checkpoint_every = args.checkpoint_every;
    let threads_wanted = if args.resume.is_some() {
        args.threads
    } else {
        trainer.cfg.threads
    };
    let threads = convnet::runtime::init_threads(threads_wanted);
    let cfg = trainer.cfg.clone();
    let run_dir = trainer.run_dir.clone();
    let splits = load_splits(cfg.dataset, args.data.data.as_deref(), cfg.val_size)?;
    let n_train = cfg
        .train_limit
        .unwrap_or(splits.train.len())
        .min(splits.train.len());
    println!(
        "convnet train: model {} ({} parameters), {} — {} train / {} val / {} test images",
        cfg.model.name,
        convnet::network::group_digits(trainer.net.param_count()),
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
    if args.resume.is_some() {
        println!(
            "resuming after epoch {} batch {} (iteration {})",
            trainer.state.epochs_done, trainer.state.batch_in_epoch, trainer.state.iteration
        );
        for row in &trainer.state.metrics {
            if let Some(m) = convnet::metrics::EpochMetrics::from_csv(row) {
                println!("{}", epoch_line(&m, cfg.epochs));
            }
        }
    }

    install_ctrl_c();
    let started = Instant::now();
    let mut progress = Progress::new(cfg.epochs);
    let result = trainer.run(&splits, &mut |e| progress.event(e), &|| {
        INTERRUPTS.load(Ordering::SeqCst) > 0
    });
    progress.finish();
    if !args.no_plot {
        draw_run_curves(&run_dir);
    }
    let test = match result {
        Ok(t) => t,
        Err(e @ convnet::Error::Interrupted(_)) => {
            let data = args
                .data
                .data
                .as_ref()
                .map(|d| format!(" --data {}", d.display()))
                .unwrap_or_default();
            eprintln!(
                "{e}\nresume with:\n  convnet train --resume {}{data}",
                run_dir.display()
            );
            std::process::exit(e.exit_code());
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "test: loss {:.4}, accuracy {} — {:.1}s in all",
        test.mean_loss(),
        format_count(test.correct, test.count),
        started.elapsed().as_secs_f64()
    );
    println!(
        "saved {} (best validation: epoch {}, {})",
        run_dir.join(convnet::train::MODEL).display(),
        trainer.state.best_epoch,
        run_dir.join(convnet::train::BEST).display()
    );
    Ok(())
}

/// Draws the run's curves next to its logs; a failure to draw does not fail the run.
fn draw_run_curves(run_dir: &Path) {
    let drawn = convnet::plot::load_run(run_dir).and_then(|r| {
        convnet::plot::draw_curves(&[r], "Training curves", true, &run_dir.join("curves"))
    });
    match drawn {
        Ok(paths) => println!("curves: {}", paths[0].display()),
        Err(e) => eprintln!("warning: could not draw the curves: {e}"),
    }
}

fn epoch_line(m: &convnet::metrics::EpochMetrics, epochs: usize) -> String {
    format!(
        "epoch {:>2}/{} train loss {:.4} acc {} | val loss {:.4} acc {} | {:.1}s {:.0} img/s",
        m.epoch,
        epochs,
        m.train.mean_loss(),
        format_count(m.train.correct, m.train.count),
        m.val.mean_loss(),
        format_count(m.val.correct, m.val.count),
        m.seconds,
        m.images_per_sec
    )
}

/// An indicatif bar on a terminal; a few plain lines per epoch otherwise.
struct Progress {
    epochs: usize,
    bar: Option<ProgressBar>,
    tty: bool,
    next_line: usize,
}

impl Progress {
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

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
            Event::EpochStart {
                epoch,
                iters,
                first_batch,
            } => {
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
                    bar.set_position(first_batch as u64);
                    self.bar = Some(bar);
                }
                let step = iters.div_ceil(4);
                self.next_line = (first_batch / step + 1) * step;
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
                println!("{}", epoch_line(m, self.epochs));
            }
            Event::Checkpoint { .. } => {}
        }
    }
}
