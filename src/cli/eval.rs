//! `convnet eval`: rebuild a saved model from its file and measure it.

use super::common::DataChoice;
use anyhow::Result;
use convnet::checkpoint::load_model;
use convnet::data::dataset::load_splits;
use convnet::data::DatasetKind;
use convnet::metrics::format_count;
use convnet::train::evaluate;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A model.safetensors, or the run directory holding it.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DataChoice,
    /// test or val (the validation split the model was trained with: the last --val-size
    /// training images).
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value_t = 5000)]
    val_size: usize,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: Args) -> Result<()> {
    convnet::runtime::init_threads(args.threads);
    let (mut net, file) = load_model(&args.model)?;
    let trained_on = file
        .metadata
        .get("convnet.dataset")
        .and_then(|d| d.parse().ok());
    let dataset = args.data.kind_or(trained_on.unwrap_or(DatasetKind::Mnist));
    let splits = load_splits(dataset, args.data.data.as_deref(), args.val_size)?;
    let ds = match args.split.as_str() {
        "test" => &splits.test,
        "val" => &splits.val,
        other => anyhow::bail!(convnet::Error::Config(format!(
            "unknown --split `{other}`: expected test or val"
        ))),
    };
    let s = evaluate(&mut net, ds, args.batch_size.max(1), |_, _| {});
    println!(
        "{} on {dataset} {}: loss {:.4}, accuracy {}",
        file.path.display(),
        args.split,
        s.mean_loss(),
        format_count(s.correct, s.count)
    );
    Ok(())
}
