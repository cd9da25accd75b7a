//! Sweeps run by other engines: a plan written as files, trials run one by one by separate
//! processes (in any order, at once, killed and run again), GNU parallel and a real one-node
//! Slurm (tests/slurm/cluster.sh), each gathered by `--collect` and compared with the same
//! sweep run in one process: the same seeds must give the same numbers.

mod common;
use common::{fake_mnist, text, BIN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `convnet ARGS` with the data in `data` and nothing to download.
fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", data)
        .env("XDG_CACHE_HOME", data.join("no-cache"))
        .output()
        .unwrap()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let o = run(data, args);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "{args:?} exited {:?}\n{out}\n{err}",
        o.status.code()
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The grid and settings every test here sweeps.
const SWEEP: &[&str] = &[
    "sweep",
    "--grid",
    "lr=0.02,0.1",
    "--grid",
    "weight_decay=0,0.001",
    "--epochs",
    "2",
    "--val-size",
    "200",
    "--seed",
    "5",
];

fn sweep_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    SWEEP.iter().copied().chain(extra.iter().copied()).collect()
}

/// sweep.csv as trial -> every column but the times and the reason.
fn table(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| !["seconds", "reason"].contains(h))
        .map(|(i, _)| i)
        .collect();
    let mut rows = BTreeMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let row: Vec<String> = keep.iter().map(|&i| f[i].to_string()).collect();
        assert!(
            rows.insert(f[0].to_string(), row).is_none(),
            "{} twice in sweep.csv",
            f[0]
        );
    }
    rows
}

/// The test-accuracy sentence of sweep.md.
fn best_line(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sweep.md"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Best trial"))
        .unwrap_or_default()
        .to_string()
}

/// A fake MNIST of `n` images and the same sweep run in one process, for comparison.
fn setup(n: u32, limit: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fake_mnist(&data.join("mnist"), n);
    let reference = in_process_sweep(&data, dir.path(), limit);
    (dir, data, reference)
}

/// The sweep of `sweep_args` on `limit` images, run in one process into `dir/in-process`:
/// what a scheduler's run of the same plan must equal.
fn in_process_sweep(data: &Path, dir: &Path, limit: &str) -> PathBuf {
    let reference = dir.join("in-process");
    ok(
        data,
        &sweep_args(&["--limit", limit, "--out", s(&reference)]),
    );
    reference
}

fn assert_same_sweep(got: &Path, want: &Path) {
    let (g, w) = (table(got), table(want));
    assert_eq!(g.len(), 4);
    assert_eq!(g, w, "the gathered table differs from the in-process sweep");
    assert!(g.values().all(|r| r.contains(&"done".to_string())), "{g:?}");
    assert_eq!(best_line(got), best_line(want));
    assert!(
        best_line(got).contains("/"),
        "a test count: {}",
        best_line(got)
    );
}

#[test]
fn trials_run_by_separate_processes_in_any_order_gather_into_the_in_process_sweep() {
    let (dir, data, reference) = setup(600, "400");
    let plan = dir.path().join("planned");
    let out = ok(
        &data,
        &sweep_args(&["--limit", "400", "--out", s(&plan), "--plan"]),
    );
    assert!(
        out.contains("planned 4 trials") && out.contains("--collect"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(plan.join("trials.txt")).unwrap(),
        "0\n1\n2\n3\n"
    );
    for t in ["lr=0.02_weight_decay=0", "lr=0.1_weight_decay=0.001"] {
        assert!(plan.join(t).join("config.toml").is_file());
        assert!(
            !plan.join(t).join("metrics.csv").exists(),
            "nothing trained yet"
        );
    }
    // Planning again is a no-op: no file changes.
    let before = std::fs::read(plan.join("plan.toml")).unwrap();
    let mtime = std::fs::metadata(plan.join("plan.toml"))
        .unwrap()
        .modified()
        .unwrap();
    let again = ok(
        &data,
        &sweep_args(&["--limit", "400", "--out", s(&plan), "--plan"]),
    );
    assert!(again.contains("unchanged"), "{again}");
    assert_eq!(std::fs::read(plan.join("plan.toml")).unwrap(), before);
    assert_eq!(
        std::fs::metadata(plan.join("plan.toml"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime
    );

    // Gathering before anything ran lists every trial as missing and measures nothing.
    let early = ok(&data, &["sweep", "--collect", s(&plan)]);
    assert!(
        early.contains("missing (4)") && early.contains("0 of 4"),
        "{early}"
    );
    assert!(!plan.join("best-test.toml").exists());
    // Two trials by index, last first, one by name; then a gathering half-way; then the last.
    for which in ["3", "0", "lr=0.1_weight_decay=0"] {
        let o = ok(
            &data,
            &[
                "sweep",
                "--run",
                s(&plan),
                "--trial",
                which,
                "--threads",
                "1",
            ],
        );
        assert!(o.contains("1 threads") && o.contains(": done"), "{o}");
    }
    let half = ok(&data, &["sweep", "--collect", s(&plan)]);
    assert!(
        half.contains("3 of 4") && half.contains("missing (1):\n  lr=0.02_weight_decay=0.001"),
        "{half}"
    );
    assert!(
        best_line(&plan).is_empty(),
        "no test accuracy while a trial is missing"
    );
    ok(&data, &["sweep", "--run", s(&plan), "--trial", "1"]);
    // A finished trial run again is left as it is.
    let model = plan.join("lr=0.02_weight_decay=0.001/model.safetensors");
    let m0 = std::fs::metadata(&model).unwrap().modified().unwrap();
    ok(&data, &["sweep", "--run", s(&plan), "--trial", "1"]);
    assert_eq!(std::fs::metadata(&model).unwrap().modified().unwrap(), m0);
    let all = ok(&data, &["sweep", "--collect", s(&plan)]);
    assert!(all.contains("4 of 4"), "{all}");
    assert_same_sweep(&plan, &reference);
    // The test accuracy is measured once and kept.
    let kept = std::fs::read_to_string(plan.join("best-test.toml")).unwrap();
    ok(&data, &["sweep", "--collect", s(&plan)]);
    assert_eq!(
        std::fs::read_to_string(plan.join("best-test.toml")).unwrap(),
        kept
    );
}

#[test]
fn a_folder_that_does_not_hold_the_planned_trial_is_never_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fake_mnist(&data.join("mnist"), 300);
    let plan = dir.path().join("sweep");
    // A folder named like a trial, trained with other settings, before the plan exists.
    let impostor = plan.join("lr=0.02_weight_decay=0");
    ok(
        &data,
        &[
            "train",
            "--lr",
            "0.5",
            "--epochs",
            "1",
            "--val-size",
            "200",
            "--limit",
            "100",
            "--no-plot",
            "--out",
            s(&impostor),
        ],
    );
    ok(
        &data,
        &sweep_args(&["--limit", "100", "--out", s(&plan), "--plan"]),
    );
    let o = run(&data, &["sweep", "--run", s(&plan), "--trial", "0"]);
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(2), "{err}");
    for needle in [
        "does not hold the planned trial",
        "lr is 0.5 there, 0.02 in the plan",
        "epochs is 1 there, 2 in the plan",
    ] {
        assert!(err.contains(needle), "`{needle}` not in {err}");
    }
    for k in ["1", "2", "3"] {
        ok(&data, &["sweep", "--run", s(&plan), "--trial", k]);
    }
    let o = run(&data, &["sweep", "--collect", s(&plan)]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(
        out.contains("mismatch (1):\n  lr=0.02_weight_decay=0: "),
        "{out}"
    );
    let rows = table(&plan);
    let row = &rows["lr=0.02_weight_decay=0"];
    assert_eq!(row[3], "mismatch", "{row:?}");
    assert_eq!(row[4], "0", "no epochs reported for it: {row:?}");
    assert!(
        !best_line(&plan).contains("lr=0.02_weight_decay=0 "),
        "{}",
        best_line(&plan)
    );
    // Its own files are untouched.
    assert!(std::fs::read_to_string(impostor.join("config.toml"))
        .unwrap()
        .contains("lr = 0.5"));
}

#[test]
fn another_grid_in_the_same_folder_and_ignored_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fake_mnist(&data.join("mnist"), 300);
    let plan = dir.path().join("sweep");
    ok(
        &data,
        &sweep_args(&["--limit", "50", "--out", s(&plan), "--plan"]),
    );
    let refused = |args: &[&str], needles: &[&str]| {
        let o = run(&data, args);
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "`{n}` not in {err}");
        }
    };
    let mut other_grid = sweep_args(&["--limit", "50", "--out", s(&plan), "--plan"]);
    other_grid[4] = "weight_decay=0,0.01";
    refused(
        &other_grid,
        &[
            "holds a different sweep",
            "weight_decay=0,0.001 there",
            "weight_decay=0,0.01 here",
        ],
    );
    refused(
        &sweep_args(&["--limit", "60", "--out", s(&plan)]),
        &["train_limit is 50 there, 60 here"],
    );
    refused(
        &["sweep", "--run", s(&plan), "--trial", "0", "--lr", "0.3"],
        &["--lr does not apply"],
    );
    refused(
        &["sweep", "--collect", s(&plan), "--epochs", "3"],
        &["--epochs does not apply"],
    );
    refused(
        &["sweep", "--run", s(&plan), "--trial", "4"],
        &["trials 0 to 3"],
    );
    refused(
        &["sweep", "--run", s(&plan), "--trial", "lr=9"],
        &["no trial of that index or name"],
    );
    refused(
        &["sweep", "--collect", s(&dir.path().join("nothing"))],
        &["has no plan.toml", "--plan"],
    );
}

/// Waits (at most 60 s) for `cond`, failing if `child` ends first.
fn wait_for(child: &mut Child, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the trial ended ({st}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no {what} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn(data: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", data)
        .env("XDG_CACHE_HOME", data.join("no-cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn killed_trials_and_collectors_lose_nothing_and_count_every_trial_once() {
    let (dir, data, reference) = setup(3000, "2800");
    let plan = dir.path().join("planned");
    ok(
        &data,
        &sweep_args(&["--limit", "2800", "--out", s(&plan), "--plan"]),
    );
    let p = |k: usize| {
        plan.join(
            [
                "lr=0.02_weight_decay=0",
                "lr=0.02_weight_decay=0.001",
                "lr=0.1_weight_decay=0",
                "lr=0.1_weight_decay=0.001",
            ][k],
        )
    };
    // SIGKILL a trial after its first checkpoint, another in its first epoch.
    for (k, after_checkpoint) in [(0, true), (1, false)] {
        let mut child = spawn(
            &data,
            &[
                "sweep",
                "--run",
                s(&plan),
                "--trial",
                &k.to_string(),
                "--threads",
                "1",
            ],
        );
        let dirk = p(k);
        if after_checkpoint {
            wait_for(&mut child, "a checkpoint", || {
                dirk.join("checkpoint.safetensors").exists()
            });
        } else {
            wait_for(&mut child, "the run lock", || {
                dirk.join(".convnet.lock").exists()
            });
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !dirk.join("model.safetensors").exists(),
            "killed before its end"
        );
    }
    // Meanwhile a gathering sees them as interrupted, not running, and says so.
    let out = ok(&data, &["sweep", "--collect", s(&plan)]);
    assert!(
        out.contains("interrupted (") && out.contains("lr=0.02_weight_decay=0:"),
        "{out}"
    );
    // All four at once, as GNU parallel -j 4 would, while collectors are killed at random
    // moments; then one more gathering.
    // Trial 2 twice at once: whichever comes second while the other trains is refused
    // (exit 7) and marks nothing.
    let mut trials: Vec<(usize, Child)> = [0, 1, 2, 3, 2]
        .into_iter()
        .map(|k| {
            let args = [
                "sweep",
                "--run",
                s(&plan),
                "--trial",
                &k.to_string(),
                "--threads",
                "1",
            ];
            (k, spawn(&data, &args))
        })
        .collect();
    for delay in [0u64, 3, 7, 15, 30, 60, 5, 11] {
        let mut c = spawn(&data, &["sweep", "--collect", s(&plan)]);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = c.kill();
        let _ = c.wait();
        if plan.join("sweep.csv").exists() {
            assert_eq!(
                table(&plan).len(),
                4,
                "a killed collector left a whole table"
            );
        }
    }
    let mut refused = 0;
    for (k, mut t) in trials.drain(..) {
        let st = t.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(t.stderr.as_mut().unwrap(), &mut err).unwrap();
        if k == 2 && st.code() == Some(7) {
            assert!(err.contains("in use by process"), "{err}");
            refused += 1;
            continue;
        }
        assert!(st.success(), "trial {k} failed: {err}");
    }
    assert!(refused <= 1, "one of the two runs of trial 2 trains it");
    for k in 0..4 {
        assert!(!p(k).join("FAILED").exists());
        assert!(!p(k).join(".convnet.lock").exists(), "locks are released");
    }
    ok(&data, &["sweep", "--collect", s(&plan)]);
    assert_same_sweep(&plan, &reference);
}

#[test]
#[cfg_attr(
    not(all(convnet_parallel, convnet_data)),
    ignore = "needs GNU parallel (apt-get install parallel) and the data sets"
)]
fn gnu_parallel_runs_the_plan() {
    let data = PathBuf::from(common::data());
    let dir = tempfile::tempdir().unwrap();
    let reference = in_process_sweep(&data, dir.path(), "2000");
    let plan = dir.path().join("planned");
    ok(
        &data,
        &sweep_args(&["--limit", "2000", "--out", s(&plan), "--plan"]),
    );
    let start = Instant::now();
    let o = Command::new("parallel")
        .args([
            "-j",
            "2",
            "--halt",
            "now,fail=1",
            BIN,
            "sweep",
            "--run",
            s(&plan),
            "--trial",
            "{}",
            "--threads",
            "1",
            "::::",
        ])
        .arg(plan.join("trials.txt"))
        .env("CONVNET_DATA", &data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);
    eprintln!("GNU parallel: 4 trials in {:?}", start.elapsed());
    ok(&data, &["sweep", "--collect", s(&plan)]);
    assert_same_sweep(&plan, &reference);
}

/// The one-node cluster, stopped when dropped.
struct Cluster(PathBuf);
impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg(&self.0)
            .arg("stop")
            .status();
    }
}

#[test]
#[cfg_attr(
    not(all(convnet_slurm, convnet_data)),
    ignore = "needs Slurm and munge (apt-get install slurm-wlm munge) and the data sets"
)]
fn a_real_slurm_job_array_runs_the_plan() {
    let data = PathBuf::from(common::data());
    let dir = tempfile::tempdir().unwrap();
    let reference = in_process_sweep(&data, dir.path(), "2000");
    let plan = dir.path().join("planned");
    let start = Instant::now();
    let state = dir.path().join("slurm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg(&state)
        .arg("start")
        .output()
        .unwrap();
    let _cluster = Cluster(state.clone());
    assert!(
        o.status.success(),
        "the cluster did not start: {}",
        text(&o).1
    );
    let started = start.elapsed();
    let conf = state.join("slurm.conf");
    let out = ok(
        &data,
        &sweep_args(&[
            "--limit",
            "2000",
            "--out",
            s(&plan),
            "--slurm",
            "--cpus-per-task",
            "1",
            "--data",
            s(&data),
        ]),
    );
    assert!(out.contains("sbatch "), "{out}");
    let sbatch = std::fs::read_to_string(plan.join("sweep.sbatch")).unwrap();
    for needle in [
        "#!/bin/bash",
        "#SBATCH --array=0-3",
        "#SBATCH --cpus-per-task=1",
        "--threads \"${SLURM_CPUS_PER_TASK:-1}\"",
    ] {
        assert!(sbatch.contains(needle), "`{needle}` not in\n{sbatch}");
    }
    let t0 = Instant::now();
    let o = Command::new("sbatch")
        .args(["--parsable"])
        .arg(plan.join("sweep.sbatch"))
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "sbatch: {}", text(&o).1);
    let job = text(&o).0.trim().to_string();
    loop {
        let q = Command::new("squeue")
            .args(["-h", "-j", &job, "-o", "%i %t"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        if text(&q).0.trim().is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the job array did not finish: {}",
            text(&q).0
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ran = t0.elapsed();
    let t1 = Instant::now();
    ok(&data, &["sweep", "--collect", s(&plan)]);
    eprintln!(
        "Slurm: cluster up in {started:?}, 4 array tasks done in {ran:?}, collected in {:?}",
        t1.elapsed()
    );
    for k in 0..4 {
        let log = std::fs::read_to_string(plan.join("slurm").join(format!("{k}.out"))).unwrap();
        assert!(
            log.contains(&format!("trial {k} of 4")) && log.contains("1 threads"),
            "{log}"
        );
    }
    assert_same_sweep(&plan, &reference);
}
