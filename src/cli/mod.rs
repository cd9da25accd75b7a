//! Command-line interface: `clap` derive, doc comments as the help text, one module per
//! subcommand, typed errors mapped to exit codes.

// The doc comments here are `--help` text, where `<dataset>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod bench;
mod common;
mod compare;
mod eval;
mod plot;
mod predict;
mod serve;
mod show;
mod sweep;
mod train;
mod viz;

use crate::Error;
use clap::{Parser, Subcommand};

/// convnet — train and inspect convolutional networks, written from scratch in Rust.
#[derive(Parser)]
#[command(name = "convnet", version, about, long_about = None, after_help = crate::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network (default: the seed CNN on MNIST for 10 epochs).
    #[command(after_help = crate::EXIT_CODES)]
    Train(train::Args),
    /// Evaluate a saved model on the test (or validation) set.
    #[command(after_help = crate::EXIT_CODES)]
    Eval(eval::Args),
    /// Classify your own images (PNG or JPEG), prepared the way MNIST was made.
    #[command(after_help = crate::EXIT_CODES)]
    Predict(predict::Args),
    /// Pictures of a trained network: its kernels, or the feature maps of one input.
    #[command(after_help = crate::EXIT_CODES)]
    Viz(viz::Args),
    /// Draw loss and accuracy curves of one or more runs (PNG and SVG).
    #[command(after_help = crate::EXIT_CODES)]
    Plot(plot::Args),
    /// Train several models with the same data and budget and compare them side by side.
    #[command(after_help = crate::EXIT_CODES)]
    Compare(compare::Args),
    /// Train every combination of a grid of settings and compare them.
    #[command(after_help = crate::EXIT_CODES)]
    Sweep(sweep::Args),
    /// Watch runs live, compare sweeps, look inside models and draw digits, in a browser.
    #[command(after_help = crate::EXIT_CODES)]
    Serve(serve::Args),
    /// Print a model's layer table: output shapes, kernels, parameters, multiply-adds.
    #[command(after_help = crate::EXIT_CODES)]
    Show(show::Args),
    /// Measure training and evaluation speed on synthetic batches.
    #[command(after_help = crate::EXIT_CODES)]
    Bench(bench::Args),
}

/// Runs the command line and returns the process exit code (see `convnet --help`).
pub fn run() -> i32 {
    // Die quietly on a closed pipe (`convnet show | head`) instead of panicking.
    // SAFETY: restoring the default SIGPIPE action at start-up, before any thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A panic is a bug: the hook keeps its message (and where) for the one-line report
    // below, instead of a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut last) = common::LAST_PANIC.lock() {
            *last = format!("{msg}{at}");
        }
    }));
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The flags given on the command line (not defaults), for commands whose modes take
    // only some of them.
    let explicit: Vec<String> = matches
        .subcommand()
        .map(|(name, m)| {
            let cmd = Cli::command();
            let args: Vec<String> = cmd
                .find_subcommand(name)
                .map(|c| c.get_arguments().map(|a| a.get_id().to_string()).collect())
                .unwrap_or_default();
            m.ids()
                .map(|id| id.as_str().to_string())
                .filter(|id| args.contains(id))
                .filter(|id| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
                .collect()
        })
        .unwrap_or_default();
    let result = common::catch_panic(|| {
        if std::env::var("CONVNET_INJECT_PANIC").is_ok_and(|v| v == "start") {
            panic!("injected by CONVNET_INJECT_PANIC");
        }
        dispatch(cli.command, &explicit)
    });
    match result {
        Ok(()) => 0,
        Err(e) => report(&e),
    }
}

fn dispatch(command: Command, explicit: &[String]) -> Result<(), Error> {
    match command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Show(a) => show::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Sweep(a) => sweep::run(a, explicit),
        Command::Plot(a) => plot::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Viz(a) => viz::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// Prints an error the way every command ends with one, and returns its exit code.
pub fn report(e: &Error) -> i32 {
    use std::io::Write;
    // Never panic here: stderr may be gone (a closed terminal).
    let mut err = std::io::stderr();
    let _ = match e {
        // Stopped on request: the message says where and how to resume.
        Error::Interrupted { msg, .. } => writeln!(err, "{msg}"),
        e => writeln!(err, "error: {e}"),
    };
    e.exit_code()
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it is for, and the flags that
    /// take one of a few values list them in `--help`.
    #[test]
    fn every_flag_has_help_and_every_choice_lists_its_values() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.trim().is_empty() || arg.is_hide_set(),
                    "{path} --{id} has no help text"
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let cmd = Cli::command();
        walk(&cmd, "convnet");
        let train = cmd.find_subcommand("train").unwrap();
        for flag in ["schedule", "optimizer", "init", "dataset", "preset"] {
            let arg = train
                .get_arguments()
                .find(|a| a.get_id() == flag)
                .unwrap_or_else(|| panic!("train has --{flag}"));
            assert!(
                !arg.get_possible_values().is_empty(),
                "--{flag} lists its values"
            );
        }
        let eval = cmd.find_subcommand("eval").unwrap();
        let split = eval
            .get_arguments()
            .find(|a| a.get_id() == "split")
            .unwrap();
        let values: Vec<String> = split
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        assert_eq!(values, ["test", "val"]);
        assert!(cmd
            .get_after_help()
            .unwrap()
            .to_string()
            .contains("Exit codes"));
    }
}
