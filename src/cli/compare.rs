//! `convnet compare`: train several models on the same data with the same budget and put
//! the numbers side by side — parameters, multiply-adds, seconds per epoch, time to reach
//! given validation accuracies, best validation and final test accuracy — with validation
//! accuracy drawn against wall-clock time.

use super::common::{
    install_ctrl_c, interrupted, stopped, DataChoice, Preset, SpecChoice, TrainFlags,
};
use super::sweep::run_trial;
use crate::data::dataset::load_splits;
use crate::fsutil::write_atomic;
use crate::report::sweep::{summarize_run, time_to_reach, Status};
use crate::report::table::counted;
use crate::report::table::group_digits;
use crate::run::checkpoint::load_model;
use crate::run::config::TrainConfig;
use crate::run::metrics::format_count;
use crate::run::run_dir::timestamp;
use crate::run::trainer::{check_data_fits, evaluate};
use crate::spec::ModelSpec;
use crate::Error;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Built-in models to compare (repeat).
    #[arg(long = "preset", value_enum)]
    presets: Vec<Preset>,
    /// Model specs in TOML to compare (repeat).
    #[arg(long = "spec", value_name = "FILE.toml")]
    specs: Vec<PathBuf>,
    /// The old spelling of --spec.
    #[arg(long = "model", value_name = "FILE.toml", hide = true)]
    models: Vec<PathBuf>,
    #[command(flatten)]
    data: DataChoice,
    #[command(flatten)]
    hyper: TrainFlags,
    /// Budget in training seconds per model: each stops at the first epoch end past it
    /// (--epochs stays the horizon of the learning-rate schedule).
    #[arg(long, value_name = "S")]
    seconds: Option<f64>,
    /// Validation accuracies (%) to time.
    #[arg(long, value_delimiter = ',', default_value = "97,98,99")]
    targets: Vec<f64>,
    /// Comparison folder [default: runs/compare-<timestamp>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), Error> {
    let mut specs: Vec<(String, ModelSpec)> = Vec::new();
    for p in &args.presets {
        specs.push((p.name().to_string(), p.spec()?));
    }
    if !args.models.is_empty() {
        eprintln!("note: --model FILE.toml is read as --spec FILE.toml; --model now names a trained model");
    }
    for m in args.specs.iter().chain(&args.models) {
        let spec = ModelSpec::load(m)?;
        specs.push((spec.name.clone(), spec));
    }
    if specs.len() < 2 {
        return Err(Error::Config(
            "give at least two models: --preset seed-cnn --preset mlp, or --spec FILE.toml".into(),
        ));
    }
    let template = args.hyper.config(
        &SpecChoice {
            preset: Some(Preset::Mlp),
            spec: None,
            model: None,
        },
        &args.data,
    )?;
    let configs: Vec<(String, TrainConfig)> = specs
        .into_iter()
        .map(|(name, spec)| {
            let mut c = template.clone();
            c.preset = None;
            c.model = spec;
            c.validate().map(|_| (name, c))
        })
        .collect::<Result<_, _>>()?;
    crate::threads::init_threads(template.threads);
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("compare-{}", timestamp())));
    let splits = load_splits(
        template.dataset,
        args.data.data.as_deref(),
        template.val_size,
    )?;
    for (_, cfg) in &configs {
        check_data_fits(&cfg.model, &splits)?;
    }
    println!("data: {}", splits.source);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let budget = match args.seconds {
        Some(s) => format!("{s} s of training each"),
        None => format!("{} each", counted(template.epochs, "epoch")),
    };
    println!(
        "convnet compare: {} models on {}, {budget} · seed {} · {}",
        configs.len(),
        template.dataset,
        template.seed,
        dir.display()
    );
    install_ctrl_c();

    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (name, cfg) in &configs {
        let run_dir = dir.join(name);
        let status = run_trial(Ok(cfg.clone()), &run_dir, &splits, args.seconds);
        if status.0 == Status::Invalid {
            return Err(Error::Config(format!("{name}: {}", status.1)));
        }
        if status.0 == Status::Running {
            return Err(Error::Busy(status.1));
        }
        if status.0 == Status::Failed {
            return Err(Error::Io {
                path: run_dir.clone(),
                source: std::io::Error::other(format!("{name}: {}", status.1)),
            });
        }
        if status.0 == Status::Interrupted || interrupted() {
            return Err(stopped(format!(
                "interrupted: run the same command with --out {} to continue",
                dir.display()
            )));
        }
        let s = summarize_run(&run_dir)?;
        let layers = cfg.model.resolve()?;
        let (params, macs): (usize, usize) = (
            layers.iter().map(|l| l.param_count()).sum(),
            layers.iter().map(|l| l.macs()).sum(),
        );
        let test = if status.0 == Status::Done {
            let (mut trained, _) = load_model(&run_dir)?;
            let t = evaluate(&mut trained, &splits.test, 1000, |_, _| {});
            format_count(t.correct, t.count)
        } else {
            status.0.to_string()
        };
        let per_epoch = if s.epochs > 0 {
            s.seconds / s.epochs as f64
        } else {
            0.0
        };
        let reach: Vec<String> = args
            .targets
            .iter()
            .map(|t| {
                time_to_reach(&s, t / 100.0)
                    .map(|v| format!("{v:.1}s"))
                    .unwrap_or_else(|| "—".into())
            })
            .collect();
        println!(
            "  {name}: {} epochs, best val {:.2}%, test {test}",
            s.epochs,
            100.0 * s.best_val_acc
        );
        lines.push(crate::report::plot::Line {
            label: name.clone(),
            points: s.timeline.iter().map(|&(t, a)| (t, 100.0 * a)).collect(),
        });
        rows.push(vec![
            name.clone(),
            group_digits(params),
            group_digits(macs),
            format!("{per_epoch:.2}"),
            reach.join(" | "),
            format!(
                "{} (epoch {})",
                format_count(s.best_val_correct, s.val_total),
                s.best_epoch
            ),
            test,
        ]);
    }
    let targets: Vec<String> = args.targets.iter().map(|t| format!("→{t}%")).collect();
    let mut md = format!(
        "| model | parameters | mult-adds/image | s/epoch | {} | best val | test |\n|---|---|---|---|{}---|---|\n",
        targets.join(" | "),
        "---|".repeat(targets.len())
    );
    for r in &rows {
        md.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    md.push_str(&format!(
        "\nSame data ({}), same budget ({budget}), same settings: batch {}, lr {}, momentum {}, weight decay {}, seed {}. \
         Times are training seconds (validation excluded) until the validation accuracy first reached the target.\n\n\
         ![validation accuracy against time](compare.png)\n",
        template.dataset, template.batch_size, template.lr, template.momentum, template.weight_decay, template.seed
    ));
    write_atomic(&dir.join("compare.md"), md.as_bytes())?;
    let axes = crate::report::plot::Axes {
        title: "Validation accuracy against training time",
        x: "training time (s)",
        y: "validation accuracy (%)",
        x_names: None,
    };
    crate::report::plot::draw_line_chart(&lines, &axes, &dir.join("compare"))?;
    println!("\n{md}");
    println!("wrote {}", dir.display());
    Ok(())
}
