//! `convnet predict`: classify the user's own images, prepared the way MNIST was made
//! (see `convnet::data::preprocess`). One bad file is reported on its line; the others are
//! still classified, and the exit code is non-zero at the end.

use anyhow::Result;
use convnet::checkpoint::load_model;
use convnet::data::dataset::PixelLut;
use convnet::data::preprocess::{preprocess_file_as, to_gray_image, Style};
use convnet::loss::softmax;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A model.safetensors, or the run directory holding it.
    #[arg(long)]
    model: PathBuf,
    /// PNG or JPEG files, any size.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// How many classes to list per file.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Print one JSON object per file (JSON Lines).
    #[arg(long)]
    json: bool,
    /// Write the 28x28 images the network actually saw into this folder.
    #[arg(long, value_name = "DIR")]
    save_preprocessed: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let (mut net, file) = load_model(&args.model)?;
    let shape = net.input_shape().to_vec();
    anyhow::ensure!(
        shape[0] == 1 && shape[1] == shape[2],
        convnet::Error::Config(format!(
            "predict needs a model with a 1xNxN input, this one takes {shape:?}"
        ))
    );
    let side = shape[1];
    let classes = file.class_names(net.classes());
    let lut = PixelLut::new(net.spec.normalize);
    let style = file.dataset().map(Style::of).unwrap_or(Style::Digit);
    if let Some(dir) = &args.save_preprocessed {
        std::fs::create_dir_all(dir).map_err(|e| convnet::Error::io(dir, e))?;
    }
    let mut failures = 0;
    for path in &args.files {
        let result = preprocess_file_as(path, side, style).and_then(|p| {
            if let Some(dir) = &args.save_preprocessed {
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into());
                let out = dir.join(format!("{stem}.png"));
                let mut bytes = Vec::new();
                to_gray_image(&p)
                    .write_to(
                        &mut std::io::Cursor::new(&mut bytes),
                        image::ImageFormat::Png,
                    )
                    .map_err(|e| convnet::Error::data(&out, e.to_string()))?;
                convnet::checkpoint::write_atomic(&out, &bytes)?;
            }
            Ok(p)
        });
        match result {
            Ok(p) => {
                for (d, &v) in net.input_mut(1).iter_mut().zip(&p.pixels) {
                    *d = lut.0[v as usize];
                }
                let probs = softmax(net.forward(false).sample(0));
                let mut order: Vec<usize> = (0..probs.len()).collect();
                order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
                order.truncate(args.top.max(1));
                if args.json {
                    let top: Vec<serde_json::Value> = order
                        .iter()
                        .map(|&k| serde_json::json!({"class": classes[k], "index": k, "probability": probs[k]}))
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"file": path.display().to_string(), "top": top, "inverted": p.inverted})
                    );
                } else {
                    let top: Vec<String> = order
                        .iter()
                        .map(|&k| format!("{} {:.1}%", classes[k], 100.0 * probs[k]))
                        .collect();
                    println!("{}: {}", path.display(), top.join(", "));
                }
            }
            Err(e) => {
                failures += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"file": path.display().to_string(), "error": e.to_string()})
                    );
                } else {
                    println!("{}: error: {e}", path.display());
                }
            }
        }
    }
    if failures > 0 {
        anyhow::bail!(convnet::Error::data(
            &args.files[0],
            format!(
                "{failures} of {} files could not be classified (see above)",
                args.files.len()
            )
        ));
    }
    Ok(())
}
