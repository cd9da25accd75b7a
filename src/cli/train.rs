//! `convnet train`: train a network and write a run directory.

use super::common::{install_ctrl_c, interrupted, stopped, DataChoice, SpecChoice, TrainFlags};
use crate::data::dataset::load_splits;
use crate::report::table::group_digits;
use crate::run::metrics::{format_count, EpochMetrics};
use crate::run::run_dir::{create_run_dir, BEST, MODEL};
use crate::run::trainer::{check_data_fits, Event, Training};
use crate::Error;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: SpecChoice,
    #[command(flatten)]
    data: DataChoice,
    #[command(flatten)]
    hyper: TrainFlags,
    /// Run directory [default: runs/<timestamp>-<model>].
    #[arg(long, value_name = "DIR")]
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

pub fn run(args: Args) -> Result<(), Error> {
    // A new run checks its data before it creates anything on disk.
    let (mut training, splits) = match &args.resume {
        Some(dir) => {
            let t = Training::resume(dir)?;
            if t.state.epochs_done >= t.cfg.epochs && dir.join(MODEL).exists() {
                return Err(Error::Config(format!(
                    "{} has finished all {} epochs; nothing to resume",
                    dir.display(),
                    t.cfg.epochs
                )));
            }
            let splits = load_splits(t.cfg.dataset, args.data.data.as_deref(), t.cfg.val_size)?;
            (t, splits)
        }
        None => {
            let cfg = args.hyper.config(&args.model, &args.data)?;
            let splits = load_splits(cfg.dataset, args.data.data.as_deref(), cfg.val_size)?;
            check_data_fits(&cfg.model, &splits)?;
            let dir = create_run_dir(args.out.as_deref(), &cfg.model.name)?;
            (Training::new(&cfg, &dir)?, splits)
        }
    };
    training.checkpoint_every = args.checkpoint_every;
    let threads_wanted = if args.resume.is_some() {
        args.hyper.threads
    } else {
        training.cfg.threads
    };
    let threads = crate::threads::init_threads(threads_wanted);
    let cfg = training.cfg.clone();
    let run_dir = training.run_dir.clone();
    let n_train = cfg
        .train_limit
        .unwrap_or(splits.train.len())
        .min(splits.train.len());
    println!(
        "convnet train: model {} ({} parameters), {} — {} train / {} val / {} test images",
        cfg.model.name,
        group_digits(training.net.param_count()),
        cfg.dataset,
        n_train,
        splits.val.len(),
        splits.test.len()
    );
    println!(
        "seed {} · threads {threads} · batch {} · lr {} ({:?}) · momentum {} · weight decay {}",
        cfg.seed, cfg.batch_size, cfg.lr, cfg.schedule, cfg.momentum, cfg.weight_decay
    );
    println!("data: {}", splits.source);
    println!("run directory: {}", run_dir.display());
    if args.resume.is_some() {
        println!(
            "resuming after epoch {} batch {} (iteration {})",
            training.state.epochs_done, training.state.batch_in_epoch, training.state.iteration
        );
        for row in &training.state.metrics {
            if let Some(m) = EpochMetrics::from_csv(row) {
                println!("{}", epoch_line(&m, cfg.epochs));
            }
        }
    }

    install_ctrl_c();
    let started = Instant::now();
    let mut progress = Progress::new(cfg.epochs);
    let result = training.run(&splits, &mut |e| progress.event(e), &interrupted);
    progress.finish();
    if !args.no_plot {
        draw_run_curves(&run_dir);
    }
    let test = match result {
        Ok(t) => t.ok_or_else(|| Error::Internal("the test set was not evaluated".into()))?,
        Err(Error::Interrupted { msg, .. }) => {
            let data = args
                .data
                .data
                .as_ref()
                .map(|d| format!(" --data {}", d.display()))
                .unwrap_or_default();
            return Err(stopped(format!(
                "{msg}\nresume with:\n  convnet train --resume {}{data}",
                run_dir.display()
            )));
        }
        Err(e) => return Err(e),
    };
    println!(
        "test: loss {:.4}, accuracy {} — {:.1}s in all",
        test.mean_loss(),
        format_count(test.correct, test.count),
        started.elapsed().as_secs_f64()
    );
    // With `--val-size 0` there is no validation, so no best epoch and no best.safetensors.
    if training.state.best_epoch > 0 {
        println!(
            "saved {} (best validation: epoch {}, {})",
            run_dir.join(MODEL).display(),
            training.state.best_epoch,
            run_dir.join(BEST).display()
        );
    } else {
        println!(
            "saved {} (no validation set)",
            run_dir.join(MODEL).display()
        );
    }
    Ok(())
}

/// Draws the run's curves next to its logs; a failure to draw does not fail the run.
fn draw_run_curves(run_dir: &Path) {
    let drawn = crate::report::plot::load_run(run_dir).and_then(|r| {
        crate::report::plot::draw_curves(&[r], "Training curves", true, &run_dir.join("curves"))
    });
    match drawn {
        Ok(paths) => println!("curves: {}", paths[0].display()),
        Err(e) => eprintln!("warning: could not draw the curves: {e}"),
    }
}

fn epoch_line(m: &EpochMetrics, epochs: usize) -> String {
    let val = if m.val.count > 0 {
        format!(
            "val loss {:.4} acc {}",
            m.val.mean_loss(),
            format_count(m.val.correct, m.val.count)
        )
    } else {
        "no validation".to_string()
    };
    format!(
        "epoch {:>2}/{} train loss {:.4} acc {} | {val} | {:.1}s {:.0} img/s",
        m.epoch,
        epochs,
        m.train.mean_loss(),
        format_count(m.train.correct, m.train.count),
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
        }
    }
}
