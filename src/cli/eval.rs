//! `convnet eval`: rebuild a saved model from its file alone and report how it does:
//! accuracy with counts, per-class precision / recall / F1, the confusion matrix (table
//! and heat map) and a gallery of the most confident mistakes.

use super::common::DataChoice;
use crate::data::dataset::load_splits;
use crate::data::DatasetKind;
use crate::report::report::evaluate_report;
use crate::run::checkpoint::load_model;
use crate::Error;
use clap::ValueEnum;
use std::path::PathBuf;

/// Which split to evaluate on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Split {
    /// The test file.
    Test,
    /// The validation split the model was trained with (the tail of the training file).
    Val,
}

#[derive(clap::Args)]
pub struct Args {
    /// A model.safetensors (or best.safetensors), or the run directory holding it.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataChoice,
    /// The split to evaluate on.
    #[arg(long, value_enum, default_value = "test")]
    split: Split,
    /// Validation images held out at training time [default: as saved with the model, else 5000].
    #[arg(long)]
    val_size: Option<usize>,
    /// Images per evaluation pass.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Worker threads; 0 = one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// How many of the most confident mistakes to show.
    #[arg(long, default_value_t = 24)]
    mistakes: usize,
    /// Folder for the pictures [default: the model's folder].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not draw pictures.
    #[arg(long)]
    no_pictures: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Error> {
    crate::threads::init_threads(args.threads);
    crate::threads::on_pool(|| evaluate(args))
}

fn evaluate(args: Args) -> Result<(), Error> {
    let (mut net, file) = load_model(&args.model)?;
    let dataset = args
        .data
        .kind_or(file.dataset().unwrap_or(DatasetKind::Mnist));
    let val_size = args
        .val_size
        .or_else(|| {
            file.metadata
                .get("convnet.val_size")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(5000);
    let splits = load_splits(dataset, args.data.data.as_deref(), val_size)?;
    crate::run::trainer::check_data_fits(&net.spec, &splits)?;
    if !args.json {
        println!("data: {}", splits.source);
    }
    let (ds, split) = match args.split {
        Split::Test => (&splits.test, "test"),
        Split::Val => (&splits.val, "val"),
    };
    if ds.is_empty() {
        return Err(Error::Config(format!(
            "the {split} split is empty (--val-size 0?)"
        )));
    }
    let report = evaluate_report(&mut net, ds, args.batch_size.max(1), args.mistakes);
    let mut pictures = Vec::new();
    if !args.no_pictures {
        let dir = args.out.clone().unwrap_or_else(|| {
            file.path
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default()
        });
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let title = format!(
            "Confusion matrix, {dataset} {}: {}",
            split,
            report.summary()
        );
        pictures.extend(crate::report::viz::confusion_heatmap(
            &report,
            &title,
            &dir.join(format!("confusion-{}", split)),
        )?);
        if !report.most_confident_mistakes.is_empty() {
            pictures.push(crate::report::viz::mistakes_gallery(
                &report,
                ds,
                &dir.join(format!("mistakes-{}.png", split)),
            )?);
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?;
        v["model"] = file.path.display().to_string().into();
        v["dataset"] = dataset.to_string().into();
        v["split"] = split.into();
        v["pictures"] = pictures
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .into();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::Internal(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{} on {dataset} {}: {}\n",
        file.path.display(),
        split,
        report.summary()
    );
    println!("{}", report.per_class_table());
    println!("{}", report.confusion_table());
    for p in &pictures {
        println!("wrote {}", p.display());
    }
    Ok(())
}
