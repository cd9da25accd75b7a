//! `convnet predict`: classify the user's own images, prepared the way MNIST was made
//! (see `crate::data::preprocess`). One bad file is reported on its line; the others are
//! still classified, and the exit code is non-zero at the end.

use crate::data::preprocess::{to_gray_image, Preprocessed};
use crate::fsutil::write_atomic;
use crate::model::{Model, Prediction};
use crate::Error;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A model.safetensors (or best.safetensors), or the run directory holding it.
    #[arg(long, value_name = "RUN|FILE")]
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

/// Writes the prepared image of `path` into `dir` as PNG.
fn save_prepared(dir: &Path, path: &Path, p: &Preprocessed) -> Result<(), Error> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let out = dir.join(format!("{stem}.png"));
    let mut bytes = Vec::new();
    to_gray_image(p)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::data(&out, e.to_string()))?;
    write_atomic(&out, &bytes)
}

pub fn run(args: Args) -> Result<(), Error> {
    let mut model = Model::load(&args.model)?;
    if let Some(dir) = &args.save_preprocessed {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut failures: Vec<&Path> = Vec::new();
    for path in &args.files {
        let result = model.prepare(path).and_then(|p| {
            if let Some(dir) = &args.save_preprocessed {
                save_prepared(dir, path, &p)?;
            }
            Ok((model.classify_pixels(&p.pixels)?, p.inverted))
        });
        match result {
            Ok((prediction, inverted)) => print_prediction(path, &prediction, inverted, &args),
            Err(e) => {
                failures.push(path);
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
    // The summary names the first file that failed, not the first file given (which may
    // have been classified).
    if let Some(first) = failures.first() {
        return Err(Error::data(
            first,
            format!(
                "could not be classified; {} of {} files could not be (see above)",
                failures.len(),
                args.files.len()
            ),
        ));
    }
    Ok(())
}

fn print_prediction(path: &Path, p: &Prediction, inverted: bool, args: &Args) {
    let top = p.top(args.top.max(1));
    if args.json {
        let top: Vec<serde_json::Value> = top
            .iter()
            .map(|r| serde_json::json!({"class": r.class, "index": r.index, "probability": r.probability}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"file": path.display().to_string(), "top": top, "inverted": inverted})
        );
    } else {
        let top: Vec<String> = top
            .iter()
            .map(|r| format!("{} {:.1}%", r.class, 100.0 * r.probability))
            .collect();
        println!("{}: {}", path.display(), top.join(", "));
    }
}
