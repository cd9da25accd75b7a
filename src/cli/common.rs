//! Pieces several subcommands share: choosing a model, finding data.

use anyhow::Result;
use clap::Args;
use convnet::data::DatasetKind;
use convnet::ModelSpec;
use std::path::PathBuf;

/// `--preset NAME` or `--model FILE`.
#[derive(Args, Clone, Debug)]
pub struct ModelChoice {
    /// Built-in model: seed-cnn or mlp.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// A model spec in TOML (see presets/ for examples).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

impl ModelChoice {
    /// The spec and the preset name (when it is one). Defaults to seed-cnn.
    pub fn resolve(&self) -> Result<(ModelSpec, Option<String>)> {
        Ok(match (&self.preset, &self.model) {
            (_, Some(path)) => (ModelSpec::load(path)?, None),
            (Some(p), None) => (ModelSpec::preset(p)?, Some(p.clone())),
            (None, None) => (ModelSpec::preset("seed-cnn")?, Some("seed-cnn".into())),
        })
    }
}

/// Where the data set comes from.
#[derive(Args, Clone, Debug)]
pub struct DataChoice {
    /// mnist or fashion-mnist [default: mnist, or the one a saved model was trained on].
    #[arg(long)]
    pub dataset: Option<DatasetKind>,
    /// Folder holding the data set (DIR/<dataset>/ or DIR/); default: $CONVNET_DATA, then
    /// the cache folder, downloading when missing.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

impl DataChoice {
    /// The data set asked for, else `fallback`.
    pub fn kind_or(&self, fallback: DatasetKind) -> DatasetKind {
        self.dataset.unwrap_or(fallback)
    }
}
