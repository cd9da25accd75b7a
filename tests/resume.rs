//! Runs that cannot be lost: a real training process killed mid-epoch (SIGKILL) or
//! interrupted (SIGINT) and resumed ends with exactly the weights and metrics of an
//! uninterrupted run. Reads MNIST through CONVNET_DATA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_convnet");

fn args(out: &Path) -> Vec<String> {
    [
        "train",
        "--limit",
        "4000",
        "--val-size",
        "500",
        "--epochs",
        "4",
        "--batch-size",
        "20",
        "--checkpoint-every",
        "7",
        "--seed",
        "3",
        "--no-plot",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn data_env() -> String {
    std::env::var("CONVNET_DATA").expect("CONVNET_DATA must point at the data sets (see .ci/run)")
}

fn run(args: &[String]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", data_env())
        .output()
        .unwrap()
}

fn spawn(args: &[String]) -> Child {
    Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", data_env())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run has finished its first epoch (a metrics row and a checkpoint).
fn wait_for_first_epoch(dir: &Path, child: &mut Child) {
    let start = Instant::now();
    loop {
        let rows = std::fs::read_to_string(dir.join("metrics.csv"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if rows >= 2 && dir.join("checkpoint.safetensors").exists() {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first epoch did"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no epoch after two minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every tensor of a model file: name, shape and raw bytes.
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let f = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = f
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort();
    out
}

/// metrics.csv without the timing columns (seconds, images/s).
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(11).collect::<Vec<_>>().join(","))
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors")),
        "final weights differ"
    );
    assert_eq!(metrics(a), metrics(b), "metrics differ");
    assert_eq!(metrics(a).len(), 5, "header + one row per epoch");
    assert_eq!(
        std::fs::read_to_string(a.join("steps.csv")).unwrap(),
        std::fs::read_to_string(b.join("steps.csv")).unwrap(),
        "per-iteration logs differ"
    );
}

fn reference_run(root: &Path) -> PathBuf {
    let a = root.join("uninterrupted");
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    a
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn killed_mid_epoch_then_resumed_equals_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let a = reference_run(root.path());
    let b = root.path().join("killed");
    let mut child = spawn(&args(&b));
    wait_for_first_epoch(&b, &mut child);
    std::thread::sleep(Duration::from_millis(60));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !b.join("model.safetensors").exists(),
        "the run finished before it was killed"
    );
    // Plotting works on an interrupted run.
    let o = Command::new(BIN)
        .args(["plot", b.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = run(&["train".into(), "--resume".into(), b.display().to_string()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("resuming after epoch"), "{out}");
    assert_same_run(&a, &b);
    // Nothing is left to resume.
    let o = run(&["train".into(), "--resume".into(), b.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
}

/// A kill between the first epoch's best model and its checkpoint leaves a folder with a
/// metrics row and `best.safetensors` but no checkpoint: resuming starts the run again and
/// ends as the uninterrupted one did.
#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn killed_before_the_first_checkpoint_then_resumed_equals_an_uninterrupted_run() {
    let root = tempfile::tempdir().unwrap();
    let a = reference_run(root.path());
    let b = root.path().join("killed-early");
    std::fs::create_dir(&b).unwrap();
    for f in ["config.toml", "best.safetensors"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    for (f, rows) in [("metrics.csv", 2), ("steps.csv", 30)] {
        let text = std::fs::read_to_string(a.join(f)).unwrap();
        let head: Vec<&str> = text.lines().take(rows).collect();
        std::fs::write(b.join(f), head.join("\n") + "\n").unwrap();
    }
    let o = run(&["train".into(), "--resume".into(), b.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&a, &b);
    assert_eq!(
        tensors(&a.join("best.safetensors")),
        tensors(&b.join("best.safetensors"))
    );
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn ctrl_c_saves_a_checkpoint_and_prints_the_resume_command() {
    let root = tempfile::tempdir().unwrap();
    let a = reference_run(root.path());
    let b = root.path().join("interrupted");
    let mut child = spawn(&args(&b));
    wait_for_first_epoch(&b, &mut child);
    // SAFETY: sending SIGINT to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains(&format!("convnet train --resume {}", b.display())),
        "{err}"
    );
    assert!(err.contains("checkpoint saved"), "{err}");
    assert!(!b.join("model.safetensors").exists());
    let o = run(&["train".into(), "--resume".into(), b.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&a, &b);
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn a_corrupt_checkpoint_is_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let mut a = args(&dir);
    a[6] = "1".into(); // one epoch
    assert!(run(&a).status.success());
    let ckpt = dir.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() - 100]).unwrap();
    let o = run(&["train".into(), "--resume".into(), dir.display().to_string()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("checkpoint.safetensors") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn divergence_stops_the_run_and_is_recorded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let mut a = args(&dir);
    a.extend([
        "--lr".into(),
        "1e6".into(),
        "--schedule".into(),
        "constant".into(),
    ]);
    let o = run(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(
        err.contains("diverged")
            && err.contains("epoch 1, iteration")
            && err.contains("smaller --lr"),
        "{err}"
    );
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let last = csv.lines().last().unwrap().to_lowercase();
    assert!(
        last.starts_with("1,") && (last.contains("nan") || last.contains("inf")),
        "{csv}"
    );
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn plot_overlays_several_runs_in_png_and_svg() {
    let root = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (name, lr) in [("slow", "0.01"), ("fast", "0.1")] {
        let d = root.path().join(name);
        let mut a = args(&d);
        a[6] = "2".into();
        a.extend(["--lr".into(), lr.into()]);
        assert!(run(&a).status.success());
        dirs.push(d.display().to_string());
    }
    let out = root.path().join("both");
    let o = Command::new(BIN)
        .args([
            "plot",
            &dirs[0],
            &dirs[1],
            "--steps",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(out.with_extension("png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (1400, 950));
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    for needle in [
        "slow (seed-cnn, lr 0.01",
        "fast (seed-cnn, lr 0.1",
        "validation",
        "Accuracy per epoch",
    ] {
        assert!(svg.contains(needle), "the SVG lacks `{needle}`");
    }
    let o = Command::new(BIN)
        .args(["plot", root.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no metrics.csv"));
}

/// The stronger recipe resumes exactly too: batch-norm running statistics, Adam's moment
/// buffers, dropout masks and augmentation are all restored or re-derived from the seed.
#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn interrupted_runs_with_batch_norm_dropout_adamw_and_augmentation_resume_exactly() {
    let root = tempfile::tempdir().unwrap();
    let spec = root.path().join("small.toml");
    std::fs::write(
        &spec,
        r#"
name = "small-plus"
input = [1, 28, 28]
[[layers]]
name = "conv1"
type = "conv2d"
out_channels = 4
kernel = 3
pad = 1
[[layers]]
name = "bn1"
type = "batch_norm2d"
[[layers]]
name = "relu1"
type = "relu"
[[layers]]
name = "pool1"
type = "max_pool2d"
kernel = 2
[[layers]]
name = "flatten"
type = "flatten"
[[layers]]
name = "drop"
type = "dropout"
p = 0.2
[[layers]]
name = "fc"
type = "linear"
out_features = 10
"#,
    )
    .unwrap();
    let extra = [
        "--spec",
        spec.to_str().unwrap(),
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
        "--weight-decay",
        "0.01",
        "--augment-shift",
        "1",
        "--augment-rotate",
        "5",
        "--label-smoothing",
        "0.1",
        "--warmup-epochs",
        "0.5",
        "--schedule",
        "onecycle",
    ];
    let with = |out: &Path| {
        let mut a = args(out);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = root.path().join("uninterrupted");
    let o = run(&with(&a));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = root.path().join("interrupted");
    let mut child = spawn(&with(&b));
    wait_for_first_epoch(&b, &mut child);
    // SAFETY: sending SIGINT to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["train".into(), "--resume".into(), b.display().to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_run(&a, &b);
    let model = tensors(&b.join("model.safetensors"));
    let (_, _, count) = model
        .iter()
        .find(|(n, _, _)| n == "bn1.num_batches_tracked")
        .expect("bn1.num_batches_tracked saved");
    assert!(i64::from_le_bytes(count[..8].try_into().unwrap()) > 0);
    let ck = tensors(&b.join("checkpoint.safetensors"));
    assert!(ck
        .iter()
        .any(|(n, _, _)| n == "optimizer.fc.weight.exp_avg_sq"));
}
