//! Sweeps and comparisons: grids over settings and layer fields, invalid and diverging
//! trials recorded rather than fatal, re-runs that skip finished work, and side-by-side
//! comparisons. Reads MNIST through CONVNET_DATA.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_convnet");

fn convnet(args: &[&str]) -> Output {
    let data = std::env::var("CONVNET_DATA")
        .expect("CONVNET_DATA must point at the data sets (see .ci/run)");
    Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", data)
        .output()
        .unwrap()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn a_two_key_sweep_records_every_trial_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let args = [
        "sweep",
        "--epochs",
        "2",
        "--limit",
        "2000",
        "--val-size",
        "500",
        "--grid",
        "lr=0.05,1000",
        "--grid",
        "conv1.kernel=3,31",
        "--jobs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = convnet(&args);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 4, "{csv}");
    let status = |name: &str| rows.iter().find(|r| r[0] == name).map(|r| r[3]).unwrap();
    assert_eq!(status("lr=0.05_conv1.kernel=3"), "done");
    assert_eq!(status("lr=1000_conv1.kernel=3"), "diverged");
    assert_eq!(status("lr=0.05_conv1.kernel=31"), "invalid");
    assert!(
        csv.contains("kernel 31 is larger than the padded input 30x30"),
        "{csv}"
    );
    assert!(csv.contains("diverged in epoch 1"), "{csv}");
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("| lr \\ conv1.kernel | 3 | 31 |"), "{md}");
    assert!(
        md.contains("| **1000** | diverged (epoch 1) | invalid |"),
        "{md}"
    );
    assert!(
        md.contains("Best trial by validation accuracy: lr=0.05_conv1.kernel=3"),
        "{md}"
    );
    assert!(
        md.contains("test accuracy, measured once after the sweep"),
        "{md}"
    );
    for f in ["sweep-heatmap.png", "sweep-heatmap.svg", "sweep-curves.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // Every finished trial is a normal run directory.
    let trial = out.join("lr=0.05_conv1.kernel=3");
    for f in [
        "config.toml",
        "metrics.csv",
        "model.safetensors",
        "best.safetensors",
        "checkpoint.safetensors",
    ] {
        assert!(trial.join(f).exists(), "{f} missing");
    }
    // Re-running skips what is done.
    let before = mtime(&trial.join("model.safetensors"));
    let o = convnet(&args);
    assert!(o.status.success());
    assert_eq!(
        mtime(&trial.join("model.safetensors")),
        before,
        "a finished trial was trained again"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );
    // A trial cut short resumes: drop its final model, as if killed after the last epoch.
    std::fs::remove_file(trial.join("model.safetensors")).unwrap();
    let rows_before = std::fs::read_to_string(trial.join("metrics.csv")).unwrap();
    assert!(convnet(&args).status.success());
    assert!(trial.join("model.safetensors").exists());
    assert_eq!(
        std::fs::read_to_string(trial.join("metrics.csv")).unwrap(),
        rows_before,
        "no row duplicated or lost"
    );
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn a_one_key_sweep_draws_a_line_and_bad_keys_fail_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let o = convnet(&[
        "sweep",
        "--epochs",
        "1",
        "--limit",
        "1000",
        "--val-size",
        "500",
        "--grid",
        "batch_size=32,128",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("sweep-line.png").exists() && out.join("sweep-line.svg").exists());
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(
        md.contains("| batch_size | status |") && md.contains("| 128 | done |"),
        "{md}"
    );
    let o = convnet(&[
        "sweep",
        "--grid",
        "conv7.kernel=3",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no layer `conv7`"));
    assert!(
        !dir.path().join("x").exists(),
        "nothing is written before the grid is checked"
    );
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn compare_puts_models_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let o = convnet(&[
        "compare",
        "--preset",
        "seed-cnn",
        "--preset",
        "mlp",
        "--epochs",
        "2",
        "--limit",
        "2000",
        "--val-size",
        "1000",
        "--targets",
        "80,90",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains(
            "| model | parameters | mult-adds/image | s/epoch | →80% | →90% | best val | test |"
        ),
        "{md}"
    );
    assert!(md.contains("| seed-cnn | 103,018 | 383,872 |"), "{md}");
    assert!(md.contains("| mlp | 101,770 | 101,632 |"), "{md}");
    assert!(md.contains("/1000 (") && md.contains("/10000 ("), "{md}");
    assert!(out.join("compare.png").exists() && out.join("compare.svg").exists());
    let o = convnet(&["compare", "--preset", "mlp"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least two models"));
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn a_seconds_budget_stops_each_model_at_the_first_epoch_end_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let o = convnet(&[
        "compare",
        "--preset",
        "seed-cnn",
        "--preset",
        "mlp",
        "--epochs",
        "5",
        "--seconds",
        "0.001",
        "--limit",
        "1000",
        "--val-size",
        "500",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for model in ["seed-cnn", "mlp"] {
        let rows = std::fs::read_to_string(out.join(model).join("metrics.csv"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(rows, 2, "{model}: one epoch, then the budget is spent");
    }
    assert!(std::fs::read_to_string(out.join("compare.md"))
        .unwrap()
        .contains("0.001 s of training each"));
}
