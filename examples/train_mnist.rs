//! Train the seed network on MNIST from code, then classify a test image.
//!
//! cargo run --release --example train_mnist -- [EPOCHS]
//!
//! The data set is found in `$CONVNET_DATA`, the cache folder, or downloaded and verified.

use convnet::{DatasetKind, Splits, Trainer};

fn main() -> Result<(), convnet::Error> {
    let epochs = std::env::args()
        .nth(1)
        .map(|e| e.parse().expect("EPOCHS is a whole number"))
        .unwrap_or(2);
    let splits = Splits::load(DatasetKind::Mnist)?;
    let run = Trainer::preset("seed-cnn")?
        .epochs(epochs)
        .seed(1)
        .on_epoch(|m| {
            println!(
                "epoch {}: train loss {:.4}, validation {}",
                m.epoch,
                m.train.mean_loss(),
                m.val
            )
        })
        .train(&splits)?;
    println!(
        "test accuracy {} · saved in {}",
        run.test,
        run.run_dir.display()
    );
    let mut model = run.model;
    let p = model.classify_pixels(splits.test.image(0))?;
    println!(
        "test image 0 (label {}): {} with probability {:.3}",
        splits.test.labels[0], p.class, p.probability
    );
    Ok(())
}
