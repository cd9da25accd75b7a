//! `convnet compare`: train several models on the same data with the same budget and put
//! the numbers side by side — parameters, multiply-adds, seconds per epoch, time to reach
//! given validation accuracies, best validation and final test accuracy — with validation
//! accuracy drawn against wall-clock time.

use super::common::{install_ctrl_c, interrupted, timestamp, DataChoice, TrainFlags};
use super::sweep::run_trial;
use anyhow::Result;
use convnet::checkpoint::{load_model, write_atomic};
use convnet::data::dataset::load_splits;
use convnet::metrics::format_count;
use convnet::network::group_digits;
use convnet::sweep::{summarize_run, time_to_reach, Status};
use convnet::train::{evaluate, TrainConfig};
use convnet::{ModelSpec, Network};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Built-in models to compare (repeat): seed-cnn, mlp.
    #[arg(long = "preset")]
    presets: Vec<String>,
    /// Model specs to compare (repeat).
    #[arg(long = "model", value_name = "FILE")]
    models: Vec<PathBuf>,
    #[command(flatten)]
    data: DataChoice,
    #[command(flatten)]
    hyper: TrainFlags,
    /// Budget in training seconds per model: each stops at the first epoch end past it
    /// (--epochs stays the horizon of the learning-rate schedule).
    #[arg(long)]
    seconds: Option<f64>,
    /// Validation accuracies (%) to time.
    #[arg(long, value_delimiter = ',', default_value = "97,98,99")]
    targets: Vec<f64>,
    /// Comparison folder (default: runs/compare-<timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let mut specs: Vec<(String, ModelSpec)> = Vec::new();
    for p in &args.presets {
        specs.push((p.clone(), ModelSpec::preset(p)?));
    }
    for m in &args.models {
        let spec = ModelSpec::load(m)?;
        specs.push((spec.name.clone(), spec));
    }
    anyhow::ensure!(
        specs.len() >= 2,
        convnet::Error::Config(
            "give at least two models: --preset seed-cnn --preset mlp, or --model FILE".into()
        )
    );
    let template = args.hyper.config(
        &super::common::ModelChoice {
            preset: Some("mlp".into()),
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
    convnet::runtime::init_threads(template.threads);
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
        convnet::train::check_data_fits(&cfg.model, &splits.train, cfg.dataset)?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| convnet::Error::io(&dir, e))?;
    let budget = match args.seconds {
        Some(s) => format!("{s} s of training each"),
        None => format!("{} epochs each", template.epochs),
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
            anyhow::bail!(convnet::Error::Config(format!("{name}: {}", status.1)));
        }
        if status.0 == Status::Interrupted || interrupted() {
            eprintln!(
                "interrupted: run the same command with --out {} to continue",
                dir.display()
            );
            std::process::exit(130);
        }
        let s = summarize_run(&run_dir)?;
        let net = Network::build(&cfg.model)?;
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
        lines.push(convnet::plot::Line {
            label: name.clone(),
            points: s.timeline.iter().map(|&(t, a)| (t, 100.0 * a)).collect(),
        });
        rows.push(vec![
            name.clone(),
            group_digits(net.param_count()),
            group_digits(net.macs()),
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
    let axes = convnet::plot::Axes {
        title: "Validation accuracy against training time",
        x: "training time (s)",
        y: "validation accuracy (%)",
        x_names: None,
    };
    convnet::plot::draw_line_chart(&lines, &axes, &dir.join("compare"))?;
    println!("\n{md}");
    println!("wrote {}", dir.display());
    Ok(())
}
