//! `convnet show`: the layer table of a preset, a spec file or a saved model.

use super::common::ModelChoice;
use anyhow::Result;
use convnet::checkpoint::TensorFile;
use convnet::Network;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelChoice,
    /// Print the spec as TOML instead of the table.
    #[arg(long)]
    toml: bool,
}

pub fn run(args: Args) -> Result<()> {
    let spec = match &args.model.model {
        Some(p) if p.extension().is_some_and(|e| e == "safetensors") || p.is_dir() => {
            TensorFile::read(&convnet::checkpoint::resolve_model_path(p))?.spec()?
        }
        _ => args.model.resolve()?.0,
    };
    if args.toml {
        print!("{}", spec.to_toml());
        return Ok(());
    }
    let net = Network::build(&spec)?;
    println!(
        "model {}: input {:?}, {} classes\n",
        spec.name,
        spec.input,
        net.classes()
    );
    print!("{}", net.layer_table());
    Ok(())
}
