//! `convnet eval`: rebuild a saved model from its file alone and report how it does:
//! accuracy with counts, per-class precision / recall / F1, the confusion matrix (table
//! and heat map) and a gallery of the most confident mistakes.

use super::common::DataChoice;
use anyhow::Result;
use convnet::checkpoint::load_model;
use convnet::data::dataset::load_splits;
use convnet::data::DatasetKind;
use convnet::report::evaluate_report;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A model.safetensors (or best.safetensors), or the run directory holding it.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataChoice,
    /// test, or val (the validation split the model was trained with).
    #[arg(long, default_value = "test")]
    split: String,
    /// Validation images held out at training time [default: as saved with the model, else 5000].
    #[arg(long)]
    val_size: Option<usize>,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
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

pub fn run(args: Args) -> Result<()> {
    convnet::runtime::init_threads(args.threads);
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
    let ds = match args.split.as_str() {
        "test" => &splits.test,
        "val" => &splits.val,
        other => anyhow::bail!(convnet::Error::Config(format!(
            "unknown --split `{other}`: expected test or val"
        ))),
    };
    if net.input_shape() != [1, ds.rows, ds.cols] {
        anyhow::bail!(convnet::Error::Config(format!(
            "the model expects inputs of {:?}, the {dataset} images are 1x{}x{}",
            net.input_shape(),
            ds.rows,
            ds.cols
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
        std::fs::create_dir_all(&dir).map_err(|e| convnet::Error::io(&dir, e))?;
        let title = format!(
            "Confusion matrix, {dataset} {}: {}",
            args.split,
            report.summary()
        );
        pictures.extend(convnet::viz::confusion_heatmap(
            &report,
            &title,
            &dir.join(format!("confusion-{}", args.split)),
        )?);
        if !report.most_confident_mistakes.is_empty() {
            pictures.push(convnet::viz::mistakes_gallery(
                &report,
                ds,
                &dir.join(format!("mistakes-{}.png", args.split)),
            )?);
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["model"] = file.path.display().to_string().into();
        v["dataset"] = dataset.to_string().into();
        v["split"] = args.split.clone().into();
        v["pictures"] = pictures
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} on {dataset} {}: {}\n",
        file.path.display(),
        args.split,
        report.summary()
    );
    println!("{}", report.per_class_table());
    println!("{}", report.confusion_table());
    for p in &pictures {
        println!("wrote {}", p.display());
    }
    Ok(())
}
