//! Hostile input, as a new user gives it: every case ends with a clear error and its
//! documented exit code before any work, never a panic or an exit 0 with a wrong answer, and
//! nothing already on disk is lost. Uses tiny data sets written on the spot, no downloads.

mod common;
use common::{fake_mnist, idx_images, idx_labels, offline, sha256, text, BIN};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A temporary folder with a fake MNIST of `n` images per split in `data/mnist`.
fn setup(n: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fake_mnist(&data.join("mnist"), n);
    (dir, data)
}

fn out_arg(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Runs `convnet ARGS` on the fake data and checks the exit code and that stderr holds
/// every needle; returns stderr.
fn refused(data: &Path, args: &[&str], code: i32, needles: &[&str]) -> String {
    let o = offline(data, args);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}\n{out}\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: missing `{n}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{err}"
    );
    err
}

fn spec_file(dir: &Path, name: &str, layers: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!("name = \"{name}\"\ninput = [1, 28, 28]\n{layers}"),
    )
    .unwrap();
    out_arg(&path)
}

const FLAT_FC: &str = "[[layers]]\nname = \"flat\"\ntype = \"flatten\"\n[[layers]]\nname = \"fc\"\ntype = \"linear\"\n";

#[test]
fn out_refuses_a_folder_that_holds_any_run_file_and_changes_nothing() {
    let (dir, data) = setup(16);
    let out = dir.path().join("exported");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), b"my exported model").unwrap();
    std::fs::write(out.join("config.toml"), b"my notes").unwrap();
    let err = refused(
        &data,
        &[
            "train",
            "--epochs",
            "1",
            "--val-size",
            "4",
            "--out",
            &out_arg(&out),
        ],
        2,
        &["already holds a run", "model.safetensors", "--resume"],
    );
    assert!(err.contains("config.toml"), "{err}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        b"my exported model"
    );
    assert_eq!(std::fs::read(out.join("config.toml")).unwrap(), b"my notes");
    // `--out` naming a file.
    refused(
        &data,
        &[
            "train",
            "--val-size",
            "4",
            "--out",
            &out_arg(&out.join("model.safetensors")),
        ],
        2,
        &["is not a folder"],
    );
}

fn spawn_train(data: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("train")
        .args(args)
        .env("CONVNET_DATA", data)
        .env("XDG_CACHE_HOME", data.join("no-cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most 60 s) until `cond` holds.
fn wait_for(what: &str, child: &mut Child, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the training ended ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metrics_rows(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.csv"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// One process per run folder: a second training or a resume into a folder a training
/// holds is refused with exit code 7 and the holder's pid, the first goes on untouched; a
/// lock left by a killed process is taken over.
#[test]
fn a_run_folder_is_locked_while_a_process_trains_into_it() {
    let (dir, data) = setup(2000);
    let run = dir.path().join("run");
    let mut a = spawn_train(
        &data,
        &[
            "--epochs",
            "500",
            "--val-size",
            "100",
            "--out",
            &out_arg(&run),
        ],
    );
    wait_for("its first epoch", &mut a, || metrics_rows(&run) >= 1);
    let pid = a.id().to_string();
    for args in [
        vec![
            "train",
            "--preset",
            "mlp",
            "--epochs",
            "1",
            "--val-size",
            "4",
            "--out",
            &out_arg(&run),
        ],
        vec!["train", "--resume", &out_arg(&run)],
    ] {
        let err = refused(&data, &args, 7, &["is in use by process", &pid]);
        assert!(err.contains(&out_arg(&run)), "{err}");
    }
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("seed-cnn") && !config.contains("\"mlp\""),
        "{config}"
    );
    // Killed: the lock file stays, the lock itself goes with the process.
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(run.join(".convnet.lock").exists());
    let stale = run.join(".checkpoint.safetensors.4000000.tmp");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    let mut b = spawn_train(&data, &["--resume", &out_arg(&run), "--no-plot"]);
    let rows = metrics_rows(&run);
    wait_for("the resumed run's next epoch", &mut b, || {
        metrics_rows(&run) > rows
    });
    assert!(
        !stale.exists(),
        "a dead process's temporary file is removed on resume"
    );
    let holder = std::fs::read_to_string(run.join(".convnet.lock")).unwrap();
    assert!(holder.starts_with(&format!("{} on ", b.id())), "{holder}");
    b.kill().unwrap();
    b.wait().unwrap();
}

/// SIGTERM (what `timeout` and Slurm send) and SIGHUP (a closed terminal) stop a training
/// as Ctrl-C does: a checkpoint after the current batch, the resume command, exit 128+n.
#[cfg(unix)]
#[test]
fn sigterm_and_sighup_checkpoint_like_ctrl_c() {
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129)] {
        let (dir, data) = setup(3000);
        let run = dir.path().join("run");
        let mut child = spawn_train(
            &data,
            &[
                "--epochs",
                "50",
                "--val-size",
                "100",
                "--no-plot",
                "--out",
                &out_arg(&run),
            ],
        );
        wait_for("its first epoch", &mut child, || metrics_rows(&run) >= 1);
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "signal {signal}: {err}");
        assert!(run.join("checkpoint.safetensors").exists());
        if signal == libc::SIGTERM {
            assert!(
                err.contains("SIGTERM") && err.contains("convnet train --resume"),
                "{err}"
            );
        }
        assert!(!run.join(".convnet.lock").exists(), "the lock is released");
    }
}

#[test]
fn a_model_that_does_not_fit_the_data_set_is_refused_before_any_work() {
    let (dir, data) = setup(16);
    let run = dir.path().join("run");
    for (outputs, name) in [(5, "five"), (11, "eleven")] {
        let spec = spec_file(
            dir.path(),
            name,
            &format!("{FLAT_FC}out_features = {outputs}\n"),
        );
        for cmd in ["train", "compare"] {
            let mut args = vec![
                cmd,
                "--spec",
                &spec,
                "--val-size",
                "4",
                "--out",
                run.to_str().unwrap(),
            ];
            if cmd == "compare" {
                args.extend(["--preset", "mlp"]);
            }
            refused(
                &data,
                &args,
                2,
                &[&format!("outputs {outputs} scores"), "mnist has 10 classes"],
            );
            assert!(!run.exists(), "{cmd}: nothing written");
        }
    }
    // A test set of other images than the model takes.
    let odd = dir.path().join("odd");
    fake_mnist(&odd.join("mnist"), 16);
    std::fs::write(
        odd.join("mnist/t10k-images-idx3-ubyte"),
        idx_images(16, 32, 32),
    )
    .unwrap();
    refused(
        &odd,
        &["train", "--val-size", "4", "--out", &out_arg(&run)],
        2,
        &["test images are 1x32x32", "takes inputs of 1x28x28"],
    );
    assert!(!run.exists());
}

#[test]
fn sizes_no_machine_can_hold_are_refused_with_the_estimate() {
    let (dir, data) = setup(16);
    let run = dir.path().join("run");
    let big = |field: &str| {
        format!(
            "[[layers]]\nname = \"conv\"\ntype = \"conv2d\"\nout_channels = 8\nkernel = 3\n{field}\n{FLAT_FC}out_features = 10\n"
        )
    };
    for (name, layers, needle) in [
        ("pad", big("pad = 1000000"), "is too large"),
        (
            "wide",
            big("out_channels = 100000").replace("out_channels = 8\n", ""),
            "GiB",
        ),
        ("huge", big("pad = 100000000000"), "too large"),
        (
            "zero",
            format!("{FLAT_FC}out_features = 0\n"),
            "`out_features` must be at least 1",
        ),
    ] {
        let spec = spec_file(dir.path(), name, &layers);
        let args = [
            "train",
            "--spec",
            &spec,
            "--val-size",
            "4",
            "--out",
            &out_arg(&run),
        ];
        refused(&data, &args, 2, &[needle]);
        // Drawing the table of a spec needs no memory, only sizes that exist.
        if name != "wide" {
            refused(&data, &["show", "--spec", &spec], 2, &[needle]);
        }
    }
    for (args, needle) in [
        (vec!["--batch-size", "99999999999999"], "--batch-size"),
        (vec!["--limit", "0"], "--limit must be at least 1"),
        (vec!["--threads", "100000"], "--threads"),
    ] {
        let mut all = vec!["train", "--val-size", "4", "--out", run.to_str().unwrap()];
        all.extend(args);
        refused(&data, &all, 2, &[needle]);
    }
    assert!(!run.exists());
}

#[test]
fn settings_that_would_train_to_nan_are_refused_by_name() {
    let (dir, data) = setup(16);
    let bn = |field: &str| {
        format!(
            "[[layers]]\nname = \"conv\"\ntype = \"conv2d\"\nout_channels = 4\nkernel = 3\n\
             [[layers]]\nname = \"bn\"\ntype = \"batch_norm2d\"\n{field}\n{FLAT_FC}out_features = 10\n"
        )
    };
    for (name, layers, needle) in [
        ("momentum", bn("momentum = 2.0"), "`momentum` must be in [0, 1], got 2"),
        ("eps", bn("eps = -1.0"), "`eps` must be a number > 0, got -1"),
        ("p", format!("[[layers]]\nname = \"d\"\ntype = \"dropout\"\np = nan\n{FLAT_FC}out_features = 10\n"), "got NaN"),
        ("bad-name", format!("[[layers]]\nname = \"../../x\"\ntype = \"relu\"\n{FLAT_FC}out_features = 10\n"), "layer name `../../x`"),
    ] {
        let spec = spec_file(dir.path(), name, &layers);
        refused(&data, &["train", "--spec", &spec], 2, &[needle]);
    }
    let path = dir.path().join("mean.toml");
    std::fs::write(
        &path,
        format!("name = \"mean\"\ninput = [1, 28, 28]\nnormalize = {{ mean = nan, scale = 255.0 }}\n{FLAT_FC}out_features = 10\n"),
    )
    .unwrap();
    refused(
        &data,
        &["train", "--spec", &out_arg(&path)],
        2,
        &["`normalize.mean` must be a number"],
    );
}

#[test]
fn idx_headers_that_overflow_are_refused() {
    let (dir, data) = setup(16);
    let mut header = Vec::new();
    for v in [0x0000_0803u32, u32::MAX, u32::MAX, u32::MAX] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(data.join("mnist/t10k-images-idx3-ubyte"), header).unwrap();
    refused(
        &data,
        &[
            "train",
            "--val-size",
            "4",
            "--out",
            &out_arg(&dir.path().join("run")),
        ],
        3,
        &["t10k-images-idx3-ubyte", "more bytes than any file holds"],
    );
    std::fs::write(
        data.join("mnist/t10k-images-idx3-ubyte"),
        idx_images(16, 28, 28),
    )
    .unwrap();
    std::fs::write(data.join("mnist/t10k-labels-idx1-ubyte"), idx_labels(15)).unwrap();
    refused(
        &data,
        &["train", "--val-size", "4"],
        3,
        &["has 15 labels but", "16 images"],
    );
}

/// Trains the seed network for one epoch on 64 fake images into `run`.
fn quick_run(data: &Path, run: &Path, seed: &str) {
    let o = offline(
        data,
        &[
            "train",
            "--epochs",
            "1",
            "--val-size",
            "16",
            "--seed",
            seed,
            "--no-plot",
            "--out",
            &out_arg(run),
        ],
    );
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn the_same_seed_gives_byte_identical_model_and_checkpoint_files() {
    let (dir, data) = setup(64);
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    quick_run(&data, &a, "3");
    quick_run(&data, &b, "3");
    quick_run(&data, &c, "4");
    for f in [
        "model.safetensors",
        "best.safetensors",
        "checkpoint.safetensors",
    ] {
        assert_eq!(sha256(&a.join(f)), sha256(&b.join(f)), "{f}");
    }
    assert_ne!(
        sha256(&a.join("model.safetensors")),
        sha256(&c.join("model.safetensors"))
    );
}

#[test]
fn damaged_model_and_checkpoint_files_are_refused_by_their_checksum() {
    let (dir, data) = setup(64);
    let run = dir.path().join("run");
    quick_run(&data, &run, "1");
    // One bit flipped in the tensor data (the end of the file) of each.
    for f in ["checkpoint.safetensors", "model.safetensors"] {
        let path = run.join(f);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
    }
    let model = out_arg(&run.join("model.safetensors"));
    refused(
        &data,
        &["eval", "--model", &model],
        4,
        &["does not match its checksum"],
    );
    refused(
        &data,
        &["show", "--model", &model],
        4,
        &["does not match its checksum"],
    );
    // A resume of a finished run is refused before it reads the checkpoint; make it
    // unfinished.
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let err = refused(
        &data,
        &["train", "--resume", &out_arg(&run)],
        4,
        &["does not match its checksum"],
    );
    assert!(err.contains("checkpoint.safetensors"), "{err}");
}

#[test]
fn a_model_with_nan_weights_is_refused_not_believed() {
    let (dir, data) = setup(16);
    let spec = convnet::ModelSpec::preset("seed-cnn").unwrap();
    let mut model = convnet::Model::from_network(convnet::Network::build(&spec).unwrap(), None);
    model.network_mut().layer_mut(0).params_mut()[0].value[3] = f32::NAN;
    let path = dir.path().join("nan.safetensors");
    model.save(&path).unwrap();
    let image = dir.path().join("seven.png");
    image::GrayImage::from_fn(40, 40, |x, y| {
        image::Luma([if (10..30).contains(&x) && y == 10 || x == 29 && y > 10 {
            0
        } else {
            255
        }])
    })
    .save(&image)
    .unwrap();
    refused(
        &data,
        &["predict", "--model", &out_arg(&path), &out_arg(&image)],
        4,
        &["conv1.weight", "NaN"],
    );
    refused(
        &data,
        &["eval", "--model", &out_arg(&path)],
        4,
        &["conv1.weight", "NaN"],
    );
}

#[test]
fn a_resumed_config_is_checked_like_a_new_one() {
    let (dir, data) = setup(64);
    let run = dir.path().join("run");
    quick_run(&data, &run, "1");
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    std::fs::write(
        run.join("config.toml"),
        cfg.replace("batch_size = 64", "batch_size = 0"),
    )
    .unwrap();
    refused(
        &data,
        &["train", "--resume", &out_arg(&run)],
        2,
        &["config.toml", "--batch-size must be at least 1"],
    );
}

#[test]
fn a_panic_is_one_line_with_exit_code_1() {
    let o = Command::new(BIN)
        .args(["show"])
        .env("CONVNET_INJECT_PANIC", "start")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("internal error: injected") && err.contains("please report it"),
        "{err}"
    );
}

/// A trial that panics or cannot write its folder is recorded as failed; the sweep trains
/// the others, writes its reports, and ends with an error (the failed ones are retried by
/// the same command).
#[test]
fn a_failing_sweep_trial_does_not_stop_the_sweep() {
    let (dir, data) = setup(64);
    let out = dir.path().join("sweep");
    std::fs::create_dir_all(&out).unwrap();
    // A file where the trial lr=0.03 wants its folder.
    std::fs::write(out.join("lr=0.03"), b"in the way").unwrap();
    let o = Command::new(BIN)
        .args([
            "sweep",
            "--epochs",
            "1",
            "--val-size",
            "16",
            "--grid",
            "lr=0.01,0.02,0.03",
        ])
        .args(["--out", &out_arg(&out)])
        .env("CONVNET_DATA", &data)
        .env("CONVNET_INJECT_PANIC", "lr=0.02")
        .output()
        .unwrap();
    let (stdout, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a bug in a trial: exit 1\n{stdout}\n{err}"
    );
    assert!(err.contains("2 of 3 trials failed"), "{err}");
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let status = |trial: &str| {
        csv.lines()
            .find(|l| l.starts_with(trial))
            .unwrap_or_else(|| panic!("{trial} in {csv}"))
            .split(',')
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_eq!(status("lr=0.01"), "done");
    assert_eq!(status("lr=0.02"), "failed");
    assert_eq!(status("lr=0.03"), "failed");
    assert!(csv.contains("injected by CONVNET_INJECT_PANIC"), "{csv}");
}

#[test]
fn an_io_error_is_reported_once() {
    let o = Command::new(BIN)
        .args(["eval", "--model", "/nonexistent/run"])
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/run"), "{err}");
}

/// `--threads` is honoured, and without it a Slurm task's share (`SLURM_CPUS_PER_TASK`):
/// the memory check made before the thread pool exists must not start it with the
/// default count.
#[test]
fn the_thread_count_asked_for_is_the_one_used() {
    let (dir, data) = setup(64);
    for (k, (flag, slurm, want)) in [
        (Some("1"), None, "threads 1"),
        (None, Some("1"), "threads 1"),
        (Some("2"), Some("1"), "threads 2"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("run{k}"));
        let mut cmd = Command::new(BIN);
        cmd.args(["train", "--epochs", "1", "--val-size", "16", "--no-plot"])
            .args(["--out", &out_arg(&out)])
            .env("CONVNET_DATA", &data)
            .env_remove("SLURM_CPUS_PER_TASK")
            .env_remove("RAYON_NUM_THREADS");
        if let Some(t) = flag {
            cmd.args(["--threads", t]);
        }
        if let Some(s) = slurm {
            cmd.env("SLURM_CPUS_PER_TASK", s);
        }
        let o = cmd.output().unwrap();
        let (stdout, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            stdout.contains(want),
            "--threads {flag:?}, SLURM_CPUS_PER_TASK {slurm:?}: {stdout}"
        );
    }
}
