//! `convnet sweep`: train every combination of a grid of settings, each trial a normal run
//! directory; summarise in sweep.csv, sweep.md and pictures. Re-running the same command
//! skips finished trials and resumes an interrupted one.

use super::common::{
    catch_panic, install_ctrl_c, interrupted, stopped, DataChoice, SpecChoice, TrainFlags,
};
use crate::data::dataset::{load_splits, Splits};
use crate::fsutil::write_atomic;
use crate::report::sweep::{
    apply, check_key, combinations, parse_axis, summarize_run, trial_name, Axis, Status, Summary,
};
use crate::run::config::TrainConfig;
use crate::run::metrics::format_count;
use crate::run::run_dir::{timestamp, BEST, DIVERGED, MODEL};
use crate::run::trainer::{check_data_fits, evaluate, Training};
use crate::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: SpecChoice,
    #[command(flatten)]
    data: DataChoice,
    #[command(flatten)]
    hyper: TrainFlags,
    /// An axis of the grid, KEY=V1,V2,...: a setting (lr, weight_decay, batch_size, ...) or
    /// a layer field (conv1.kernel, conv1.pad, fc1.out_features, ...). Repeat for more axes.
    #[arg(long = "grid", required = true, value_name = "KEY=V1,V2")]
    grids: Vec<String>,
    /// Trials trained at once; the threads are divided between them.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Sweep folder [default: runs/sweep-<timestamp>]. Re-use it to continue a sweep.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// One trial's outcome.
#[derive(Clone, Debug)]
pub struct Trial {
    /// The value of each axis.
    pub values: Vec<String>,
    /// The trial's folder name.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// Why, when it did not finish.
    pub reason: String,
    /// What its metrics say.
    pub summary: Summary,
}

/// Trains one trial to the end, or to the first epoch end past `time_budget` training
/// seconds (or reports why it cannot), quietly. Used by sweeps and comparisons alike.
pub fn run_trial(
    cfg: Result<TrainConfig, Error>,
    dir: &Path,
    splits: &Splits,
    time_budget: Option<f64>,
) -> (Status, String) {
    let cfg = match cfg.and_then(|c| c.validate().map(|_| c)) {
        Ok(c) => c,
        Err(e) => return (Status::Invalid, e.to_string()),
    };
    if dir.join(MODEL).exists() {
        return (Status::Done, String::new());
    }
    if let Ok(reason) = std::fs::read_to_string(dir.join(DIVERGED)) {
        return (Status::Diverged, reason);
    }
    // A panic in one trial is a bug, reported as that trial's failure; the sweep goes on.
    let outcome = catch_panic(|| {
        if std::env::var("CONVNET_INJECT_PANIC").is_ok_and(|v| dir.ends_with(v)) {
            panic!("injected by CONVNET_INJECT_PANIC");
        }
        let mut trainer = Training::resume_or_start(&cfg, dir)?;
        trainer.evaluate_test = false;
        trainer.time_budget = time_budget;
        trainer.run(splits, &mut |_| {}, &interrupted)
    });
    match outcome {
        Ok(_) => (Status::Done, String::new()),
        Err(e @ Error::Diverged(_)) => {
            let _ = write_atomic(&dir.join(DIVERGED), e.to_string().as_bytes());
            (Status::Diverged, e.to_string())
        }
        Err(e @ Error::Interrupted { .. }) => (Status::Interrupted, e.to_string()),
        Err(e @ (Error::Config(_) | Error::Spec(_))) => (Status::Invalid, e.to_string()),
        Err(e) => (Status::Failed, e.to_string()),
    }
}

/// Runs `work(i)` for i in 0..n on `jobs` threads, each inside its own rayon pool with an
/// equal share of `threads`.
pub fn run_parallel(n: usize, jobs: usize, threads: usize, work: &(dyn Fn(usize) + Sync)) {
    let jobs = jobs.clamp(1, n.max(1));
    if jobs == 1 {
        (0..n).for_each(work);
        return;
    }
    let per_job = (threads / jobs).max(1);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(per_job)
                    .start_handler(|_| crate::threads::flush_denormals())
                    .build()
                    .expect("a thread pool");
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    pool.install(|| work(i));
                }
            });
        }
    });
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

pub fn run(args: Args) -> Result<(), Error> {
    let base = args.hyper.config(&args.model, &args.data)?;
    let axes: Vec<Axis> = args
        .grids
        .iter()
        .map(|g| parse_axis(g))
        .collect::<Result<_, _>>()?;
    for a in &axes {
        check_key(&base, &a.key)?;
    }
    let combos = combinations(&axes);
    let threads = crate::threads::init_threads(base.threads);
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{}", timestamp())));
    let splits = load_splits(base.dataset, args.data.data.as_deref(), base.val_size)?;
    check_data_fits(&base.model, &splits)?;
    println!("data: {}", splits.source);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    println!(
        "convnet sweep: {} trials of {} ({} epochs each) on {} · {} job(s) · seed {} · {}",
        combos.len(),
        base.model.name,
        base.epochs,
        base.dataset,
        args.jobs.max(1),
        base.seed,
        dir.display()
    );
    install_ctrl_c();
    let started = Instant::now();
    let results: Mutex<Vec<Option<Trial>>> = Mutex::new(vec![None; combos.len()]);
    let done = AtomicUsize::new(0);
    let total = combos.len();
    run_parallel(total, args.jobs, threads, &|i| {
        if interrupted() {
            return;
        }
        let assignment = &combos[i];
        let name = trial_name(assignment);
        let cfg = assignment
            .iter()
            .try_fold(base.clone(), |c, (k, v)| apply(&c, k, v));
        let tdir = dir.join(&name);
        let t0 = Instant::now();
        let (status, reason) = run_trial(cfg, &tdir, &splits, None);
        let summary = summarize_run(&tdir).unwrap_or_default();
        let k = done.fetch_add(1, Ordering::SeqCst) + 1;
        let what = match status {
            Status::Done => format!(
                "val {} · best {} at epoch {} · {:.1}s",
                format_count(summary.val_correct, summary.val_total),
                pct(summary.best_val_acc),
                summary.best_epoch,
                t0.elapsed().as_secs_f64()
            ),
            _ => reason.lines().next().unwrap_or("").to_string(),
        };
        println!("[{k:>3}/{total}] {name}: {status} — {what}");
        results.lock().expect("no panics while holding it")[i] = Some(Trial {
            values: assignment.iter().map(|(_, v)| v.clone()).collect(),
            name,
            status,
            reason,
            summary,
        });
    });
    let trials: Vec<Trial> = results
        .into_inner()
        .expect("no panics")
        .into_iter()
        .flatten()
        .collect();
    let interrupted_now = interrupted() || trials.iter().any(|t| t.status == Status::Interrupted);
    let best = trials
        .iter()
        .filter(|t| t.status == Status::Done)
        .max_by(|a, b| {
            a.summary
                .best_val_acc
                .total_cmp(&b.summary.best_val_acc)
                .then(b.name.cmp(&a.name))
        });
    let mut best_line = String::new();
    if let (Some(b), false) = (best, interrupted_now) {
        let (mut net, _) = crate::run::checkpoint::load_model(&dir.join(&b.name).join(BEST))?;
        let test = evaluate(&mut net, &splits.test, 1000, |_, _| {});
        best_line = format!(
            "Best trial by validation accuracy: {} ({} at epoch {}). Its test accuracy, measured once after the \
             sweep and not used to choose: {} (best.safetensors).",
            b.name,
            pct(b.summary.best_val_acc),
            b.summary.best_epoch,
            format_count(test.correct, test.count)
        );
    }
    write_reports(&dir, &axes, &trials, &best_line)?;
    println!(
        "\n{}",
        std::fs::read_to_string(dir.join("sweep.md")).unwrap_or_default()
    );
    println!(
        "{:.1}s in all · wrote {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let failed: Vec<&Trial> = trials
        .iter()
        .filter(|t| t.status == Status::Failed)
        .collect();
    if !failed.is_empty() && !interrupted_now {
        let msg = format!(
            "{} of {} trials failed ({}: {}); the others are in the reports, and running the same \
             command again retries the failed ones",
            failed.len(),
            trials.len(),
            failed[0].name,
            failed[0].reason.lines().next().unwrap_or("")
        );
        // A bug in a trial is reported as one (exit 1); anything else failed on the disk.
        return Err(
            if failed
                .iter()
                .any(|t| t.reason.starts_with("internal error"))
            {
                Error::Internal(msg)
            } else {
                Error::Io {
                    path: dir.clone(),
                    source: std::io::Error::other(msg),
                }
            },
        );
    }
    if interrupted_now {
        return Err(stopped(format!(
            "interrupted: finished trials are kept; run the same command with --out {} to continue",
            dir.display()
        )));
    }
    Ok(())
}

/// sweep.csv, sweep.md and the pictures.
fn write_reports(
    dir: &Path,
    axes: &[Axis],
    trials: &[Trial],
    best_line: &str,
) -> Result<(), Error> {
    let keys: Vec<&str> = axes.iter().map(|a| a.key.as_str()).collect();
    let mut csv = format!(
        "trial,{},status,epochs,train_loss,train_acc,val_loss,val_acc,best_val_acc,best_epoch,seconds,reason\n",
        keys.join(",")
    );
    for t in trials {
        let s = &t.summary;
        let reason = match (&t.status, s.diverged_epoch) {
            (Status::Diverged, Some(e)) => format!("diverged in epoch {e}"),
            _ => t
                .reason
                .lines()
                .next()
                .unwrap_or("")
                .replace([',', '"'], ";"),
        };
        csv.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{},{:.2},{}\n",
            t.name,
            t.values.join(","),
            t.status,
            s.epochs,
            s.train_loss,
            s.train_acc,
            s.val_loss,
            s.val_acc,
            s.best_val_acc,
            s.best_epoch,
            s.seconds,
            reason
        ));
    }
    write_atomic(&dir.join("sweep.csv"), csv.as_bytes())?;

    let cell = |t: &Trial| match t.status {
        Status::Done => pct(t.summary.best_val_acc),
        Status::Diverged => format!("diverged (epoch {})", t.summary.diverged_epoch.unwrap_or(1)),
        ref s => s.to_string(),
    };
    let mut md = String::from("Best validation accuracy per trial.\n\n");
    if axes.len() == 2 {
        let (ra, ca) = (&axes[0], &axes[1]);
        md.push_str(&format!(
            "| {} \\ {} | {} |\n",
            ra.key,
            ca.key,
            ca.values.join(" | ")
        ));
        md.push_str(&format!("|---|{}\n", "---|".repeat(ca.values.len())));
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for (r, rv) in ra.values.iter().enumerate() {
            let row: Vec<&Trial> = (0..ca.values.len())
                .filter_map(|c| trials.get(r * ca.values.len() + c))
                .collect();
            md.push_str(&format!(
                "| **{rv}** | {} |\n",
                row.iter().map(|t| cell(t)).collect::<Vec<_>>().join(" | ")
            ));
            values.push(
                row.iter()
                    .map(|t| (t.status == Status::Done).then_some(100.0 * t.summary.best_val_acc))
                    .collect(),
            );
            labels.push(row.iter().map(|t| cell(t)).collect());
        }
        if trials.len() == ra.values.len() * ca.values.len() {
            let title = "Best validation accuracy";
            crate::report::viz::grid_heatmap(
                &crate::report::viz::GridCells {
                    title,
                    row_key: &ra.key,
                    rows: &ra.values,
                    col_key: &ca.key,
                    cols: &ca.values,
                    values: &values,
                    labels: &labels,
                },
                &dir.join("sweep-heatmap"),
            )?;
            md.push_str("\n![heat map](sweep-heatmap.png)\n");
        }
    } else {
        md.push_str(&format!(
            "| {} | status | best val acc | epoch | seconds |\n|---|---|---|---|---|\n",
            keys.join(" | ")
        ));
        for t in trials {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} |\n",
                t.values.join(" | "),
                t.status,
                cell(t),
                t.summary.best_epoch,
                t.summary.seconds
            ));
        }
        if axes.len() == 1 {
            let a = &axes[0];
            let points: Vec<(f64, f64)> = trials
                .iter()
                .enumerate()
                .filter(|(_, t)| t.status == Status::Done)
                .map(|(i, t)| (i as f64, 100.0 * t.summary.best_val_acc))
                .collect();
            let line = crate::report::plot::Line {
                label: "best validation accuracy".into(),
                points,
            };
            let title = format!("Best validation accuracy against {}", a.key);
            let axes_desc = crate::report::plot::Axes {
                title: &title,
                x: &a.key,
                y: "accuracy (%)",
                x_names: Some(&a.values),
            };
            crate::report::plot::draw_line_chart(&[line], &axes_desc, &dir.join("sweep-line"))?;
            md.push_str("\n![line plot](sweep-line.png)\n");
        }
    }
    let runs: Vec<crate::report::plot::RunCurves> = trials
        .iter()
        .filter(|t| t.status != Status::Invalid)
        .filter_map(|t| crate::report::plot::load_run(&dir.join(&t.name)).ok())
        .map(|mut r| {
            r.label = r.label.split(" (").next().unwrap_or("").to_string();
            r
        })
        .collect();
    if !runs.is_empty() {
        crate::report::plot::draw_curves(&runs, "All trials", false, &dir.join("sweep-curves"))?;
        md.push_str("![curves of all trials](sweep-curves.png)\n");
    }
    if !best_line.is_empty() {
        md.push_str(&format!("\n{best_line}\n"));
    }
    write_atomic(&dir.join("sweep.md"), md.as_bytes())?;
    Ok(())
}
