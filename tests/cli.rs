//! The built `convnet` binary, run as a user would.

use common::fake_mnist;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{convnet, data, text};

#[test]
fn show_prints_the_layer_table() {
    let o = convnet(&["show", "--preset", "seed-cnn"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("fc1      linear      128                  100,480    100,352"),
        "{out}"
    );
    assert!(
        out.contains("total                                     103,018    383,872"),
        "{out}"
    );
    let o = convnet(&["show", "--preset", "mlp", "--toml"]);
    assert!(text(&o).0.contains("name = \"mlp\""));
}

#[test]
fn nonsense_hyper_parameters_are_rejected_before_any_work() {
    for (args, expect) in [
        (&["--lr", "0"][..], "--lr must be a positive number"),
        (&["--lr", "-1"][..], "--lr must be a positive number"),
        (
            &["--batch-size", "0"][..],
            "--batch-size must be at least 1",
        ),
        (&["--epochs", "0"][..], "--epochs must be from 1 to 1000000"),
        (&["--momentum", "1.5"][..], "--momentum must be in [0, 1)"),
        (
            &["--preset", "nope"][..],
            "invalid value 'nope' for '--preset <PRESET>'",
        ),
        (
            &["--schedule", "wobbly"][..],
            "invalid value 'wobbly' for '--schedule <SCHEDULE>'",
        ),
    ] {
        let mut all = vec!["train", "--data", "/nonexistent"];
        all.extend_from_slice(args);
        let o = convnet(&all);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn a_broken_model_file_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(
        &spec,
        "name = \"bad\"\ninput = [1, 28, 28]\n[[layers]]\nname = \"flat\"\ntype = \"flatten\"\n\
         [[layers]]\nname = \"fc1\"\ntype = \"linear\"\nin_features = 100\nout_features = 10\n",
    )
    .unwrap();
    let o = convnet(&["train", "--spec", spec.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("layer `fc1`: expects 100 inputs, gets 784"),
        "{err}"
    );
}

/// `convnet train` with `--data` (when given) and `CONVNET_DATA` (when given), offline: the
/// mirrors point at a closed port and the cache at an empty folder.
fn train_offline(dir: &Path, data: Option<&Path>, env_data: Option<&Path>) -> Output {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convnet"));
    cmd.args([
        "train",
        "--epochs",
        "1",
        "--limit",
        "8",
        "--val-size",
        "4",
        "--no-plot",
    ])
    .args(["--out", dir.join("run").to_str().unwrap()])
    .env_remove("CONVNET_DATA")
    .env("XDG_CACHE_HOME", dir.join("cache"))
    .env("CONVNET_MIRRORS", format!("http://{closed}/"));
    if let Some(d) = data {
        cmd.args(["--data", d.to_str().unwrap()]);
    }
    if let Some(d) = env_data {
        cmd.env("CONVNET_DATA", d);
    }
    cmd.output().unwrap()
}

#[test]
fn missing_data_offline_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let o = train_offline(dir.path(), Some(&data), None);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    for needle in [
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "--data DIR",
        "CONVNET_DATA",
        "could not fetch",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in: {err}");
    }
}

/// `--data` names the one place to look: a folder that does not exist, a file, or a folder
/// missing some files is an error naming it (exit 3), never a silent fall-back to
/// `CONVNET_DATA`; a data file that is a folder or a dangling link is named as such; and a
/// training says which data it used.
#[test]
fn data_sources_are_explicit_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    fake_mnist(&good.join("mnist"), 20);
    let fails = |data: Option<&Path>, env: Option<&Path>, needle: &str| {
        let o = train_offline(dir.path(), data, env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(3), "{data:?} {env:?}: {out}{err}");
        assert!(
            err.contains(needle),
            "{data:?} {env:?}: missing `{needle}` in {err}"
        );
        assert!(
            !dir.path().join("run").exists(),
            "no run folder for a run that cannot start"
        );
    };
    let nowhere = dir.path().join("nowhere");
    fails(Some(&nowhere), Some(&good), "does not exist (--data)");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails(Some(&file), Some(&good), "is not a folder (--data)");
    let partial = dir.path().join("partial");
    fake_mnist(&partial, 20);
    std::fs::remove_file(partial.join("t10k-labels-idx1-ubyte")).unwrap();
    fails(
        Some(&partial),
        Some(&good),
        "could not fetch t10k-labels-idx1-ubyte",
    );
    fails(None, Some(&nowhere), "is not a folder (from CONVNET_DATA)");
    fails(
        None,
        Some(&partial),
        "holds only 3 of the 4 files of mnist (from CONVNET_DATA)",
    );
    // A folder where the labels file should be.
    let odd = dir.path().join("odd");
    fake_mnist(&odd, 20);
    std::fs::remove_file(odd.join("train-labels-idx1-ubyte")).unwrap();
    std::fs::create_dir(odd.join("train-labels-idx1-ubyte")).unwrap();
    fails(Some(&odd), None, "train-labels-idx1-ubyte: is a folder");
    #[cfg(unix)]
    {
        let dangling = dir.path().join("dangling");
        fake_mnist(&dangling, 20);
        std::fs::remove_file(dangling.join("t10k-images-idx3-ubyte")).unwrap();
        std::os::unix::fs::symlink(
            "/nonexistent/file",
            dangling.join("t10k-images-idx3-ubyte.gz"),
        )
        .unwrap();
        fails(
            Some(&dangling),
            None,
            "is a link to a file that does not exist",
        );
    }
    let o = train_offline(dir.path(), Some(&good), None);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains(&format!("data: {} (--data)", good.join("mnist").display())),
        "{out}"
    );
}

fn run_dir_test_accuracy(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with("test:"))
        .expect("a test line");
    line.split("accuracy ")
        .nth(1)
        .unwrap()
        .split(" —")
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn train_writes_a_run_directory_that_eval_reproduces() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = convnet(&[
        "train",
        "--epochs",
        "2",
        "--limit",
        "3000",
        "--val-size",
        "1000",
        "--seed",
        "7",
        "--out",
        run.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("seed 7"), "the seed is printed: {out}");
    assert!(out.contains("epoch  2/2"), "{out}");
    assert!(
        out.contains("/1000 ("),
        "validation accuracy with its count: {out}"
    );
    for f in ["config.toml", "metrics.csv", "model.safetensors"] {
        assert!(Path::new(&run).join(f).exists(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("seed = 7") && config.contains("name = \"seed-cnn\""),
        "{config}"
    );
    let acc = run_dir_test_accuracy(&out);
    assert!(acc.ends_with("%)") && acc.contains("/10000"), "{acc}");

    let o = convnet(&["eval", "--model", run.to_str().unwrap()]);
    let (eout, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        eout.contains(&format!("accuracy {acc}")),
        "eval says {eout}, train said {acc}"
    );

    // The same --out again is refused rather than overwritten.
    let o = convnet(&["train", "--epochs", "1", "--out", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("already holds a run"));
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn eval_reports_per_class_metrics_confusion_and_pictures() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = convnet(&[
        "train",
        "--epochs",
        "1",
        "--limit",
        "5000",
        "--no-plot",
        "--out",
        run.to_str().unwrap(),
        "--data",
        &data,
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = convnet(&[
        "eval",
        "--model",
        run.to_str().unwrap(),
        "--json",
        "--mistakes",
        "10",
        "--data",
        &data,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 10000);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(v["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 10000);
    let diagonal: u64 = (0..10).map(|i| confusion[i][i]).sum();
    assert_eq!(diagonal, v["correct"].as_u64().unwrap());
    // Row sums are the class supports of the MNIST test set.
    assert_eq!(confusion[1].iter().sum::<u64>(), 1135);
    assert_eq!(v["per_class"][1]["support"], 1135);
    let mistakes = v["most_confident_mistakes"].as_array().unwrap();
    assert_eq!(mistakes.len(), 10);
    let p: Vec<f64> = mistakes
        .iter()
        .map(|m| m["probability"].as_f64().unwrap())
        .collect();
    assert!(
        p.windows(2).all(|w| w[0] >= w[1]),
        "sorted by confidence: {p:?}"
    );
    for f in [
        "confusion-test.png",
        "confusion-test.svg",
        "mistakes-test.png",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // The plain report has the tables.
    let o = convnet(&[
        "eval",
        "--model",
        run.to_str().unwrap(),
        "--no-pictures",
        "--split",
        "val",
        "--data",
        &data,
    ]);
    let (out, _) = text(&o);
    assert!(
        out.contains("mnist val: accuracy ") && out.contains("/5000 ("),
        "{out}"
    );
    assert!(
        out.contains("macro avg") && out.contains("predicted →"),
        "{out}"
    );

    // Filters and activations.
    let o = convnet(&["viz", "filters", "--model", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    for f in [
        "filters-conv1.png",
        "filters-conv1.svg",
        "filters-conv2.png",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let o = convnet(&[
        "viz",
        "activations",
        "--model",
        run.to_str().unwrap(),
        "0",
        "--data",
        &data,
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("prediction: "), "{out}");
    let svg = std::fs::read_to_string(run.join("activations-test-0.svg")).unwrap();
    assert!(svg.contains("conv2 (conv2d) 16x14x14") && svg.contains("pool2 (max_pool2d) 16x7x7"));
    let o = convnet(&[
        "viz",
        "activations",
        "--model",
        run.to_str().unwrap(),
        "10000",
        "--data",
        &data,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("out of range"));
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn a_model_whose_input_does_not_match_the_images_is_refused_before_any_run_dir() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("wrong.toml");
    std::fs::write(
        &spec,
        "name = \"wrong\"\ninput = [1, 32, 32]\n[[layers]]\nname = \"flat\"\ntype = \"flatten\"\n\
         [[layers]]\nname = \"fc\"\ntype = \"linear\"\nout_features = 10\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = convnet(&[
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("takes inputs of 1x32x32, but the mnist training images are 1x28x28"),
        "{err}"
    );
    assert!(
        !out.exists(),
        "no run directory for a run that cannot start"
    );
}

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn resume_needs_a_run_directory_and_val_size_zero_trains_without_validation() {
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let o = convnet(&[
        "train",
        "--resume",
        dir.path().to_str().unwrap(),
        "--data",
        &data,
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("holds no convnet run") && err.contains("config.toml"),
        "names the missing file: {err}"
    );

    let run = dir.path().join("run");
    let o = convnet(&[
        "train",
        "--epochs",
        "1",
        "--limit",
        "500",
        "--val-size",
        "0",
        "--no-plot",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("| no validation |"), "{out}");
    assert!(!out.contains("0/0"), "no empty accuracy: {out}");
    assert!(
        out.contains("(no validation set)") && !out.contains("best validation"),
        "names no best model that was never written: {out}"
    );
    assert!(run.join("model.safetensors").exists());
    assert!(
        !run.join("best.safetensors").exists(),
        "no validation, no best model"
    );
}

/// `convnet bench` names the conv path it measured, which `CONVNET_SIMD` can choose; an
/// unknown value is refused with a warning, not an error, and the default path runs.
#[test]
fn bench_reports_the_conv_path_that_convnet_simd_picks() {
    let bench = |simd: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_convnet"))
            .args(["bench", "--seconds", "0.05", "--batch-size", "8"])
            .args(["--eval-batch-size", "16", "--threads", "1"])
            .env("CONVNET_SIMD", simd)
            .output()
            .expect("the binary runs");
        assert!(
            out.status.success(),
            "CONVNET_SIMD={simd}: {:?}",
            text(&out)
        );
        text(&out)
    };
    let (stdout, stderr) = bench("off");
    assert!(stdout.contains("stride-1 convs: im2col + GEMM"), "{stdout}");
    assert!(stdout.contains("train batch    8:") && stdout.contains("eval batch 16:"));
    assert!(stderr.is_empty(), "{stderr}");
    let (stdout, stderr) = bench("bogus");
    assert!(stderr.contains("CONVNET_SIMD=bogus ignored"), "{stderr}");
    let has_vectors =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let default = if has_vectors {
        "stride-1 convs: direct"
    } else {
        "stride-1 convs: im2col + GEMM"
    };
    assert!(stdout.contains(default), "{stdout}");
    // seed-cnn's conv2 (8 -> 16 channels, 14x14) is wide enough for F(4x4), not for F(2x2);
    // its conv1 (one input channel) for neither.
    assert_eq!(
        stdout.contains("conv2 forward and input gradient as Winograd F(4x4, 3x3)"),
        has_vectors,
        "{stdout}"
    );
    assert!(!stdout.contains("conv1 forward"), "{stdout}");
    // With F(2x2) only (CONVNET_WINOGRAD=f2) it stays on the direct kernels.
    let out = Command::new(env!("CARGO_BIN_EXE_convnet"))
        .args(["bench", "--seconds", "0.05", "--batch-size", "8"])
        .args(["--eval-batch-size", "16", "--threads", "1"])
        .env("CONVNET_WINOGRAD", "f2")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(!text(&out).0.contains("Winograd"), "{:?}", text(&out));
    // cnn-plus's conv2 and conv3 are wide enough for Winograd; CONVNET_WINOGRAD=off keeps
    // them on the direct kernels.
    let winograd = |setting: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_convnet"))
            .args(["bench", "--preset", "cnn-plus", "--seconds", "0.05"])
            .args([
                "--batch-size",
                "8",
                "--eval-batch-size",
                "16",
                "--threads",
                "1",
            ])
            .env("CONVNET_WINOGRAD", setting)
            .output()
            .expect("the binary runs");
        assert!(out.status.success(), "{:?}", text(&out));
        text(&out).0
    };
    // F(4x4, 3x3) takes fewer products for conv2's 28x28 planes and conv3's 14x14 (whose
    // last tiles hang over the end).
    let on = winograd("on");
    for (layer, tile) in [("conv2", "F(4x4, 3x3)"), ("conv3", "F(4x4, 3x3)")] {
        let named = format!("{layer} forward and input gradient as Winograd {tile}");
        assert_eq!(on.contains(&named), has_vectors, "winograd on: {on}");
    }
    // CONVNET_WINOGRAD=f2 keeps F(2x2, 3x3) everywhere.
    let f2 = winograd("f2");
    assert_eq!(
        f2.contains("conv2 forward and input gradient as Winograd F(2x2, 3x3)"),
        has_vectors,
        "winograd f2: {f2}"
    );
    assert!(!f2.contains("F(4x4"), "{f2}");
    // Their weight gradients run as Winograd with the output channels in the lanes (32 and
    // 64 fill whole vectors; conv1's single input channel keeps the shifted dots): F(4x4)
    // for conv2's 28x28 (0.56x the products), F(2x2) for conv3's 14x14 (0.73x, not enough).
    for named in [
        "conv2 forward and input gradient as Winograd F(4x4, 3x3), weight gradient as \
         Winograd F(4x4, 3x3) with the channels in the lanes · conv3 forward",
        "conv3 forward and input gradient as Winograd F(4x4, 3x3), weight gradient as \
         Winograd F(2x2, 3x3) with the channels in the lanes",
    ] {
        assert_eq!(
            on.contains(named),
            has_vectors,
            "Winograd weight gradient: {on}"
        );
    }
    assert!(!on.contains("conv1 weight gradient"), "{on}");
    // Its shares of the FMA peak say what they count once Winograd layers run.
    assert_eq!(on.contains("a share can pass 100%"), has_vectors, "{on}");
    // Without Winograd, AVX-512 runs them with the output channels in the lanes.
    let lanes = on.contains("direct AVX-512 kernels");
    let off = winograd("off");
    assert!(
        !off.contains("Winograd") && off.contains("stride-1 convs:"),
        "{off}"
    );
    assert_eq!(
        off.contains("conv2 weight gradient with the channels"),
        lanes,
        "{off}"
    );
}
