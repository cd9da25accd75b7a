//! `convnet plot`: loss and accuracy curves of one or more runs, from their logs.

use crate::report::plot::{draw_curves, load_run};
use crate::Error;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories; several overlay in one figure.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Output path without extension; .png and .svg are written
    /// [default: RUN_DIR/curves for one run, ./curves for several].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Add the per-iteration training loss (from steps.csv).
    #[arg(long)]
    steps: bool,
    /// Figure title.
    #[arg(long, default_value = "Training curves")]
    title: String,
}

pub fn run(args: Args) -> Result<(), Error> {
    let runs = args
        .runs
        .iter()
        .map(|d| load_run(d))
        .collect::<Result<Vec<_>, _>>()?;
    for (dir, r) in args.runs.iter().zip(&runs) {
        if r.metrics.is_empty() {
            eprintln!("note: {} has no finished epoch yet", dir.display());
        }
    }
    let out = args.out.clone().unwrap_or_else(|| {
        if args.runs.len() == 1 {
            args.runs[0].join("curves")
        } else {
            PathBuf::from("curves")
        }
    });
    for p in draw_curves(&runs, &args.title, args.steps, &out)? {
        println!("{}", p.display());
    }
    Ok(())
}
