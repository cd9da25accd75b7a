//! `convnet sweep`: train every combination of a grid of settings, each trial a normal run
//! directory; summarise in sweep.csv, sweep.md and pictures. Re-running the same command
//! skips finished trials and resumes an interrupted one.

use super::common::{
    catch_panic, install_ctrl_c, interrupted, stopped, DataChoice, SpecChoice, TrainFlags,
};
use crate::data::dataset::{load_splits, Splits};
use crate::fsutil::write_atomic;
use crate::report::plan::{Plan, BEST_TEST, FAILED, PLAN, SBATCH, TRIALS};
use crate::report::sweep::{summarize_run, Axis, Status, Summary};
use crate::report::table::counted;
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
    #[arg(long = "grid", required_unless_present_any = ["run", "collect"], value_name = "KEY=V1,V2")]
    grids: Vec<String>,
    /// Trials trained at once; the threads are divided between them.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Sweep folder [default: runs/sweep-<timestamp>]. Re-use it to continue a sweep.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the plan and stop: each trial's folder with its config.toml, plan.toml and
    /// trials.txt (the indices), for --run on other machines, Slurm or GNU parallel.
    #[arg(long)]
    plan: bool,
    /// With the plan, write DIR/sweep.sbatch: a Slurm job array, one task per trial
    /// (implies --plan). Submit it with `sbatch DIR/sweep.sbatch`.
    #[arg(long)]
    slurm: bool,
    /// CPUs of each Slurm array task; the trial trains on that many threads.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    cpus_per_task: u16,
    /// Another line for the Slurm script, as `#SBATCH --OPTION` (e.g. --sbatch partition=short
    /// --sbatch time=02:00:00). Repeat for more.
    #[arg(long = "sbatch", value_name = "OPTION")]
    sbatch: Vec<String>,
    /// Train one trial of the plan in DIR (with --trial); resumes it when it was stopped.
    /// Only --trial, --threads and --data apply: the settings are the plan's.
    #[arg(long, value_name = "DIR", requires = "trial", conflicts_with_all = ["collect", "plan", "slurm", "grids"])]
    run: Option<PathBuf>,
    /// The trial --run trains: its index in trials.txt (0, 1, ...) or its folder name.
    #[arg(long, value_name = "K", requires = "run")]
    trial: Option<String>,
    /// Gather the plan's trials in DIR, whatever their state: sweep.csv, sweep.md, the
    /// pictures, and the missing, running and failed trials listed. Safe while trials run.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["plan", "slurm", "grids"])]
    collect: Option<PathBuf>,
}

/// The flags --run and --collect take; any other is refused, since the plan holds the
/// settings and a flag that would be ignored is a mistake.
const RUN_FLAGS: &[&str] = &["run", "trial", "threads", "data"];
const COLLECT_FLAGS: &[&str] = &["collect", "threads", "data"];

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
        Err(Error::Busy(why)) => (Status::Running, why),
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

/// `convnet sweep`: plan (and stop, with --plan), run one trial (--run), gather
/// (--collect), or all three in this process. `explicit` lists the flags given on the
/// command line.
pub fn run(args: Args, explicit: &[String]) -> Result<(), Error> {
    let refuse_others = |mode: &str, allowed: &[&str]| -> Result<(), Error> {
        match explicit.iter().find(|f| !allowed.contains(&f.as_str())) {
            Some(f) => Err(Error::Config(format!(
                "--{mode} takes its settings from the plan; --{} does not apply (only {})",
                f.replace('_', "-"),
                allowed[1..]
                    .iter()
                    .map(|a| format!("--{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            None => Ok(()),
        }
    };
    if let Some(dir) = &args.run {
        refuse_others("run", RUN_FLAGS)?;
        let trial = args.trial.as_deref().unwrap_or("");
        return run_one(dir, trial, args.data.data.as_deref(), args.hyper.threads);
    }
    if let Some(dir) = &args.collect {
        refuse_others("collect", COLLECT_FLAGS)?;
        crate::threads::init_threads(args.hyper.threads);
        let plan = Plan::read(dir)?;
        let mut splits = None;
        let gathered = collect(dir, &plan, args.data.data.as_deref(), &mut splits, &[])?;
        return gathered.outcome(dir, false);
    }
    let base = args.hyper.config(&args.model, &args.data)?;
    let plan = Plan::new(&base, &args.grids)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{}", timestamp())));
    if args.plan || args.slurm {
        return write_plan(&plan, &dir, &args);
    }
    let threads = crate::threads::init_threads(base.threads);
    let splits = load_splits(base.dataset, args.data.data.as_deref(), base.val_size)?;
    check_data_fits(&base.model, &splits)?;
    println!("data: {}", splits.source);
    plan.write_or_check(&dir)?;
    let total = plan.trials.len();
    // What this process learns of each trial; it knows more than the folder can say (a
    // failure to make the folder itself).
    let outcomes: Mutex<Vec<Option<(Status, String)>>> = Mutex::new(vec![None; total]);
    println!(
        "convnet sweep: {total} trials of {} ({} each) on {} · {} job(s) · seed {} · {}",
        base.model.name,
        counted(base.epochs, "epoch"),
        base.dataset,
        args.jobs.max(1),
        base.seed,
        dir.display()
    );
    install_ctrl_c();
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    run_parallel(total, args.jobs, threads, &|k| {
        if interrupted() {
            return;
        }
        let name = &plan.trials[k].name;
        let tdir = plan.trial_dir(&dir, k);
        let t0 = Instant::now();
        let (status, reason) = match plan.checked_config(&dir, k) {
            Ok(cfg) => run_trial(Ok(cfg), &tdir, &splits, None),
            Err(e) => match plan.trial_config(k) {
                Err(e) => (Status::Invalid, e.to_string()),
                Ok(_) => (Status::Mismatch, e.to_string()),
            },
        };
        mark(&tdir, &status, &reason);
        let summary = summarize_run(&tdir).unwrap_or_default();
        let i = done.fetch_add(1, Ordering::SeqCst) + 1;
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
        println!("[{i:>3}/{total}] {name}: {status} — {what}");
        if let Ok(mut o) = outcomes.lock() {
            o[k] = Some((status, reason));
        }
    });
    let mut splits = Some(splits);
    let known = outcomes.into_inner().unwrap_or_default();
    let gathered = collect(&dir, &plan, args.data.data.as_deref(), &mut splits, &known)?;
    println!(
        "{:.1}s in all · wrote {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    gathered.outcome(&dir, interrupted())
}

/// Leaves a trial's outcome in its folder for whoever gathers: `FAILED` with the reason
/// when it failed, removed when it has since succeeded.
fn mark(tdir: &Path, status: &Status, reason: &str) {
    match status {
        Status::Failed => {
            let _ = write_atomic(&tdir.join(FAILED), format!("{reason}\n").as_bytes());
        }
        Status::Done => {
            let _ = std::fs::remove_file(tdir.join(FAILED));
        }
        _ => {}
    }
}

/// `--plan` (and `--slurm`): the plan's files, and how to run them.
fn write_plan(plan: &Plan, dir: &Path, args: &Args) -> Result<(), Error> {
    plan.base.validate()?;
    let (new, unmade) = plan.write_or_check(dir)?;
    for u in &unmade {
        eprintln!("warning: {u}");
    }
    let abs = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let n = plan.trials.len();
    println!(
        "{} {n} trials of {} in {} ({PLAN}, {TRIALS}, a folder with config.toml per trial):",
        if new {
            "planned"
        } else {
            "the plan is unchanged:"
        },
        plan.base.model.name,
        abs.display()
    );
    for t in &plan.trials {
        println!("  {:>3}  {}", t.index, t.name);
    }
    let d = shell_quote(&abs.display().to_string());
    println!("\nrun them:");
    println!("  one here:       convnet sweep --run {d} --trial K");
    println!(
        "  GNU parallel:   parallel -j 2 convnet sweep --run {d} --trial {{}} --threads 1 :::: {d}/{TRIALS}"
    );
    if args.slurm {
        let script = write_sbatch(plan, &abs, args)?;
        println!(
            "  Slurm:          sbatch {}",
            shell_quote(&script.display().to_string())
        );
    } else {
        println!("  Slurm:          add --slurm to write {SBATCH}");
    }
    println!("then gather:      convnet sweep --collect {d}");
    Ok(())
}

/// `'text'` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=+:,@".contains(c))
    {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// DIR/sweep.sbatch: one array task per trial, each `convnet sweep --run DIR --trial K` on
/// the task's CPUs. Its output goes to DIR/slurm/<task>.out.
fn write_sbatch(plan: &Plan, dir: &Path, args: &Args) -> Result<PathBuf, Error> {
    let logs = dir.join("slurm");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io(Path::new("convnet"), e))?;
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sweep".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut extra = String::new();
    for o in &args.sbatch {
        let o = o.trim_start_matches('-');
        if o.contains(['\n', '\r']) {
            return Err(Error::Config(format!("--sbatch `{o}`: one line, please")));
        }
        extra.push_str(&format!("#SBATCH --{o}\n"));
    }
    // The data: as --data gave it, else where CONVNET_DATA points now (sbatch passes the
    // environment on, but a batch system may not).
    let data = args
        .data
        .data
        .clone()
        .or_else(|| std::env::var_os("CONVNET_DATA").map(PathBuf::from))
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d));
    let data_line = data
        .map(|d| format!(" --data {}", shell_quote(&d.display().to_string())))
        .unwrap_or_default();
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let script = format!(
        "#!/bin/bash\n\
         # The convnet sweep in {dir}: one Slurm array task per trial of its plan.toml.\n\
         # Submit: sbatch {script}   Gather (any time): convnet sweep --collect {dirq}\n\
         # A task stopped by scancel or its time limit keeps its checkpoint: submit again\n\
         # (sbatch --array=K {script} for one) and it resumes.\n\
         #SBATCH --job-name=convnet-{name}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --cpus-per-task={cpus}\n\
         #SBATCH --output={logs}/%a.out\n\
         #SBATCH --open-mode=append\n\
         {extra}\
         set -eu\n\
         exec {exe} sweep --run {dirq} --trial \"$SLURM_ARRAY_TASK_ID\" --threads \"${{SLURM_CPUS_PER_TASK:-1}}\"{data_line}\n",
        dir = dir.display(),
        script = q(&dir.join(SBATCH)),
        dirq = q(dir),
        last = plan.trials.len().saturating_sub(1),
        cpus = args.cpus_per_task,
        logs = logs.display(),
        exe = q(&exe),
    );
    let path = dir.join(SBATCH);
    write_atomic(&path, script.as_bytes())?;
    Ok(path)
}

/// `--run DIR --trial K`: one trial, trained (or resumed) into its folder.
fn run_one(dir: &Path, which: &str, data: Option<&Path>, threads: usize) -> Result<(), Error> {
    let threads = crate::threads::init_threads(threads);
    let plan = Plan::read(dir)?;
    let k = plan.find(which)?;
    let name = plan.trials[k].name.clone();
    let cfg = plan.checked_config(dir, k)?;
    cfg.validate()?;
    let tdir = plan.trial_dir(dir, k);
    let splits = load_splits(cfg.dataset, data, cfg.val_size)?;
    check_data_fits(&cfg.model, &splits)?;
    println!(
        "convnet sweep: trial {k} of {} ({name}) · {threads} threads · data: {} · {}",
        plan.trials.len(),
        splits.source,
        tdir.display()
    );
    install_ctrl_c();
    let t0 = Instant::now();
    let (status, reason) = run_trial(Ok(cfg), &tdir, &splits, None);
    mark(&tdir, &status, &reason);
    let s = summarize_run(&tdir).unwrap_or_default();
    match status {
        Status::Done => {
            println!(
                "{name}: done — val {} · best {} at epoch {} · {:.1}s",
                format_count(s.val_correct, s.val_total),
                pct(s.best_val_acc),
                s.best_epoch,
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        // A result of the settings, not a failure of the task.
        Status::Diverged => {
            println!("{name}: diverged — {}", reason.lines().next().unwrap_or(""));
            Ok(())
        }
        Status::Interrupted => Err(stopped(format!(
            "interrupted: trial {k} keeps its checkpoint; the same command resumes it"
        ))),
        Status::Running => Err(Error::Busy(reason)),
        Status::Invalid | Status::Mismatch => Err(Error::Config(format!("{name}: {reason}"))),
        Status::Failed | Status::Missing => Err(failure(&format!("{name}: {reason}"), &tdir)),
    }
}

/// A trial's failure as the error a command ends with: a bug (exit 1) or the disk (5).
fn failure(msg: &str, path: &Path) -> Error {
    if msg.contains("internal error") {
        Error::Internal(msg.to_string())
    } else {
        Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(msg.to_string()),
        }
    }
}

/// What a gathering found.
struct Gathered {
    trials: Vec<Trial>,
}

impl Gathered {
    /// The command's end: the trials not done listed, and an error when some failed, are
    /// not trusted, or this process was interrupted.
    fn outcome(&self, dir: &Path, interrupted_now: bool) -> Result<(), Error> {
        let done = self
            .trials
            .iter()
            .filter(|t| matches!(t.status, Status::Done | Status::Diverged))
            .count();
        let total = self.trials.len();
        println!("{done} of {total} trials ended (done or diverged)");
        for status in [
            Status::Missing,
            Status::Running,
            Status::Interrupted,
            Status::Failed,
            Status::Mismatch,
            Status::Invalid,
        ] {
            let these: Vec<&Trial> = self.trials.iter().filter(|t| t.status == status).collect();
            if these.is_empty() {
                continue;
            }
            println!("{status} ({}):", these.len());
            for t in these {
                let why = t.reason.lines().next().unwrap_or("");
                println!(
                    "  {}{}",
                    t.name,
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(": {why}")
                    }
                );
            }
        }
        if interrupted_now
            || self.trials.iter().any(|t| t.status == Status::Interrupted) && interrupted()
        {
            return Err(stopped(format!(
                "interrupted: finished trials are kept; run the same command with --out {} to continue",
                dir.display()
            )));
        }
        let failed: Vec<&Trial> = self
            .trials
            .iter()
            .filter(|t| t.status == Status::Failed)
            .collect();
        if let Some(first) = failed.first() {
            let msg = format!(
                "{} of {total} trials failed ({}: {}); the others are in the reports, and running the trial again retries it",
                failed.len(),
                first.name,
                first.reason.lines().next().unwrap_or("")
            );
            return Err(
                if failed.iter().any(|t| t.reason.contains("internal error")) {
                    Error::Internal(msg)
                } else {
                    Error::Io {
                        path: dir.to_path_buf(),
                        source: std::io::Error::other(msg),
                    }
                },
            );
        }
        if let Some(t) = self.trials.iter().find(|t| t.status == Status::Mismatch) {
            return Err(Error::Config(format!(
                "{}: {}",
                t.name,
                t.reason.lines().next().unwrap_or("")
            )));
        }
        Ok(())
    }
}

/// Builds the reports from whatever the trials' folders hold now; writes only the sweep
/// folder's own files (atomically). The best trial's test accuracy is measured once, when
/// every trial has ended, and kept in best-test.toml. `known`: what this process saw of
/// trials it ran, which wins over what their folders say.
fn collect(
    dir: &Path,
    plan: &Plan,
    data: Option<&Path>,
    splits: &mut Option<Splits>,
    known: &[Option<(Status, String)>],
) -> Result<Gathered, Error> {
    let axes = plan.axes();
    let trials: Vec<Trial> = (0..plan.trials.len())
        .map(|k| {
            let mut st = plan.state(dir, k);
            if let Some(Some((status, reason))) = known.get(k) {
                if matches!(status, Status::Failed | Status::Invalid | Status::Mismatch) {
                    st.status = status.clone();
                    st.reason = reason.clone();
                }
            }
            let trusted = !matches!(
                st.status,
                Status::Mismatch | Status::Invalid | Status::Missing
            );
            let summary = if trusted {
                summarize_run(&plan.trial_dir(dir, k)).unwrap_or_default()
            } else {
                Summary::default()
            };
            Trial {
                values: plan.trials[k].values.clone(),
                name: plan.trials[k].name.clone(),
                status: st.status,
                reason: st.reason,
                summary,
            }
        })
        .collect();
    let ended = trials.iter().all(|t| {
        !matches!(
            t.status,
            Status::Missing | Status::Running | Status::Interrupted
        )
    });
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
    if let (Some(b), true) = (best, ended) {
        let test = best_test(dir, &b.name, plan, data, splits)?;
        best_line = format!(
            "Best trial by validation accuracy: {} ({} at epoch {}). Its test accuracy, measured once after the \
             sweep and not used to choose: {test} (best.safetensors).",
            b.name,
            pct(b.summary.best_val_acc),
            b.summary.best_epoch,
        );
    }
    write_reports(dir, &axes, &trials, &best_line)?;
    println!(
        "\n{}",
        std::fs::read_to_string(dir.join("sweep.md")).unwrap_or_default()
    );
    Ok(Gathered { trials })
}

/// The best trial's test accuracy: from best-test.toml when it names this trial and this
/// version of its best.safetensors, else measured now and kept there.
fn best_test(
    dir: &Path,
    name: &str,
    plan: &Plan,
    data: Option<&Path>,
    splits: &mut Option<Splits>,
) -> Result<String, Error> {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq)]
    struct BestTest {
        trial: String,
        sha256: String,
        correct: usize,
        total: usize,
    }
    let model = dir.join(name).join(BEST);
    let bytes = std::fs::read(&model).map_err(|e| Error::io(&model, e))?;
    let sha = {
        use sha2::{Digest, Sha256};
        crate::data::fetch::hex(&Sha256::digest(&bytes))
    };
    let kept = dir.join(BEST_TEST);
    if let Some(k) = std::fs::read_to_string(&kept)
        .ok()
        .and_then(|t| toml::from_str::<BestTest>(&t).ok())
        .filter(|k| k.trial == name && k.sha256 == sha)
    {
        return Ok(format_count(k.correct, k.total));
    }
    if splits.is_none() {
        let b = &plan.base;
        *splits = Some(load_splits(b.dataset, data, b.val_size)?);
    }
    let splits = splits.as_ref().expect("loaded above");
    let (mut net, _) = crate::run::checkpoint::load_model(&model)?;
    let test = evaluate(&mut net, &splits.test, 1000, |_, _| {});
    let record = BestTest {
        trial: name.to_string(),
        sha256: sha,
        correct: test.correct,
        total: test.count,
    };
    let text = toml::to_string(&record).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(&kept, text.as_bytes())?;
    Ok(format_count(test.correct, test.count))
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
        .filter(|t| {
            !matches!(
                t.status,
                Status::Invalid | Status::Mismatch | Status::Missing
            )
        })
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
