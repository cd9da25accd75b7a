//! `convnet show`: the layer table of a preset, a spec file or a trained model.

use super::common::Preset;
use crate::report::table::layer_table;
use crate::run::checkpoint::{resolve_model_path, TensorFile};
use crate::spec::ModelSpec;
use crate::Error;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A built-in model [default: seed-cnn].
    #[arg(long, value_enum, conflicts_with_all = ["spec", "model"])]
    preset: Option<Preset>,
    /// A model spec in TOML.
    #[arg(long, value_name = "FILE.toml", conflicts_with = "model")]
    spec: Option<PathBuf>,
    /// A trained model: a .safetensors file or the run directory holding it.
    #[arg(long, value_name = "RUN|FILE")]
    model: Option<PathBuf>,
    /// Print the spec as TOML instead of the table.
    #[arg(long)]
    toml: bool,
}

pub fn run(args: Args) -> Result<(), Error> {
    let spec = match (&args.preset, &args.spec, &args.model) {
        (_, Some(path), _) => ModelSpec::load(path)?,
        (_, None, Some(path)) if path.extension().is_some_and(|e| e == "toml") => {
            eprintln!(
                "note: --model {} is read as --spec (a TOML architecture); --model names a trained model",
                path.display()
            );
            ModelSpec::load(path)?
        }
        (_, None, Some(path)) => TensorFile::read(&resolve_model_path(path))?.spec()?,
        (Some(p), None, None) => p.spec()?,
        (None, None, None) => Preset::SeedCnn.spec()?,
    };
    if args.toml {
        print!("{}", spec.to_toml());
        return Ok(());
    }
    let layers = spec.resolve()?;
    let classes = layers.last().map(|l| l.output[0]).unwrap_or(0);
    println!(
        "model {}: input {:?}, {classes} classes\n",
        spec.name, spec.input
    );
    print!("{}", layer_table(&spec)?);
    Ok(())
}
