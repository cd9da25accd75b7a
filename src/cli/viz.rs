//! `convnet viz`: pictures of a trained network — its conv kernels, and the feature maps
//! of every layer for one input.

use super::common::DataChoice;
use crate::data::dataset::{load_splits, PixelLut};
use crate::data::DatasetKind;
use crate::engine::Network;
use crate::model::Model;
use crate::nn::loss::softmax;
use crate::nn::Mode;
use crate::report::viz::FeatureMaps;
use crate::Error;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Draw every conv layer's kernels (filters-<layer>.png/.svg).
    Filters {
        /// A model.safetensors, or the run directory holding it.
        #[arg(long, value_name = "RUN|FILE")]
        model: PathBuf,
        /// Output folder [default: the model's folder].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Draw the feature maps of every conv / ReLU / pool layer for one input, with the
    /// output probabilities.
    Activations {
        /// A model.safetensors, or the run directory holding it.
        #[arg(long, value_name = "RUN|FILE")]
        model: PathBuf,
        /// An image file (prepared as `convnet predict` does), or a test-set index.
        input: String,
        #[command(flatten)]
        data: DataChoice,
        /// Output path without extension [default: <model folder>/activations-<input>].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn model_dir(model: &Model) -> PathBuf {
    model
        .path()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn run(args: Args) -> Result<(), Error> {
    match args.what {
        What::Filters { model, out } => {
            let model = Model::load(&model)?;
            let dir = out.unwrap_or_else(|| model_dir(&model));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            for p in crate::report::viz::filters(model.network().layers(), &dir)? {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        What::Activations {
            model,
            input,
            data,
            out,
        } => {
            crate::threads::init_threads(0);
            let mut model = Model::load(&model)?;
            let shape = model.network().input_shape().to_vec();
            let [c, h, w] = [shape[0], shape[1], shape[2]];
            let (pixels, heading, stem): (Vec<u8>, String, String) = match input.parse::<usize>() {
                Ok(index) => {
                    let kind = data.kind_or(model.dataset().unwrap_or(DatasetKind::Mnist));
                    let splits = load_splits(kind, data.data.as_deref(), 1)?;
                    crate::run::trainer::check_data_fits(model.spec(), &splits)?;
                    if index >= splits.test.len() {
                        return Err(Error::Config(format!(
                            "test index {index} is out of range (0..{})",
                            splits.test.len()
                        )));
                    }
                    let label = &splits.test.class_names[splits.test.labels[index] as usize];
                    (
                        splits.test.image(index).to_vec(),
                        format!("{kind} test image #{index} (label {label})"),
                        format!("test-{index}"),
                    )
                }
                Err(_) => {
                    let path = Path::new(&input);
                    let p = model.prepare(path)?;
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (
                        p.pixels,
                        format!("{} (as preprocessed)", path.display()),
                        stem,
                    )
                }
            };
            if pixels.len() != c * h * w {
                return Err(Error::Config(format!(
                    "the input has {} values, the model wants {c}x{h}x{w}",
                    pixels.len()
                )));
            }
            let classes = model.class_names().to_vec();
            let base = out.unwrap_or_else(|| model_dir(&model).join(format!("activations-{stem}")));
            let net = model.network_mut();
            let maps = feature_maps(net, &pixels);
            let probs: Vec<(String, f32)> = classes
                .into_iter()
                .zip(softmax(net.output().sample(0)))
                .collect();
            for p in crate::report::viz::activations(&maps, &probs, &heading, &base)? {
                println!("wrote {}", p.display());
            }
            let best = probs
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("classes");
            println!("prediction: {} ({:.1}%)", best.0, 100.0 * best.1);
            Ok(())
        }
    }
}

/// Runs one sample through the network and collects the input and every image-shaped
/// layer output.
fn feature_maps(net: &mut Network, pixels: &[u8]) -> Vec<FeatureMaps> {
    let lut = PixelLut::new(net.spec.normalize);
    for (d, &p) in net.input_mut(1).iter_mut().zip(pixels) {
        *d = lut.0[p as usize];
    }
    net.keep_every_output = true;
    net.forward(Mode::Eval);
    let s = net.input_shape();
    let mut maps = vec![FeatureMaps {
        title: format!("input {}x{}x{}", s[0], s[1], s[2]),
        shape: [s[0], s[1], s[2]],
        values: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
    }];
    for (i, l) in net.layers().enumerate() {
        if let [c, h, w] = *l.output_shape() {
            maps.push(FeatureMaps {
                title: format!("{} ({}) {c}x{h}x{w}", l.name(), l.kind()),
                shape: [c, h, w],
                values: net.activation(i).sample(0).to_vec(),
            });
        }
    }
    maps
}
