//! # convnet
//!
//! A convolutional-network trainer and classifier written from scratch: every layer's
//! forward and backward pass, the losses, the optimisers and the initialisation are in
//! this crate, checked against finite differences. GEMM comes from a well-kept crate;
//! convolutions run on our own AVX-512 / AVX2 kernels, chosen at run time.
//!
//! Classify an image file with a trained model (a run folder or a `.safetensors` file):
//!
//! ```no_run
//! let mut model = convnet::Model::load("runs/my-run")?;
//! let p = model.classify("digit.png")?;
//! println!("{} ({:.1}%)", p.class, 100.0 * p.probability);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! Train the seed network on MNIST (found in `$CONVNET_DATA`, the cache folder, or
//! downloaded and verified):
//!
//! ```no_run
//! let splits = convnet::Splits::load(convnet::DatasetKind::Mnist)?;
//! let run = convnet::Trainer::preset("seed-cnn")?
//!     .epochs(2)
//!     .seed(7)
//!     .threads(2)
//!     .run_dir("runs/example")
//!     .on_epoch(|m| println!("epoch {}: val {}/{}", m.epoch, m.val.correct, m.val.count))
//!     .train(&splits)?;
//! println!("test accuracy {}", run.test);
//! # Ok::<(), convnet::Error>(())
//! ```
//!
//! ## Two houses
//!
//! ```text
//! IDX files ──► Dataset (u8 images + labels, in memory once)
//!           ──► batches (seeded shuffle, normalised f32 NCHW)
//!           ──► Network: layers forward ──► loss ──► backward ──► optimiser step
//!                 │ Engine::Reference: the readable layers of `nn`, whole batch, plain loops
//!                 │ Engine::Fast: the kernels, chunk by chunk, conv + ReLU + pool fused
//!           ──► Trainer: per-epoch metrics ──► metrics.csv, checkpoint, model file
//! ```
//!
//! [`nn`] is the math, one screen per layer, and runs on its own (`Engine::Reference`, or
//! `CONVNET_SIMD=reference` for the command line); the fast kernels compute the same and
//! are tested against it. [`Network`] runs either.

#![deny(missing_docs)]

pub mod data;
mod engine;
mod error;
mod fsutil;
mod kernels;
mod model;
pub mod nn;
mod report;
mod run;
mod seed;
mod serve;
mod spec;
mod tensor;
mod threads;
mod train;

/// The command line; `src/main.rs` runs it. Not part of the library's API.
#[doc(hidden)]
pub mod cli;

/// What `cargo bench` measures; not part of the library's API.
#[doc(hidden)]
pub mod bench {
    pub use crate::kernels::conv::{FastConv, WeightGrad};
    pub use crate::kernels::gemm::{sgemm_with, Backend};
    pub use crate::kernels::Scratch;
    pub use crate::serve::{serve, Options as ServeOptions};
}

#[cfg(test)]
mod tests;

pub use data::{Dataset, DatasetKind, Splits};
pub use engine::{Engine, Network};
pub use error::{Error, EXIT_CODES};
pub use model::{Model, Prediction, Ranked};
pub use nn::loss::BatchStats;
pub use nn::Mode;
pub use run::config::TrainConfig;
pub use run::metrics::EpochMetrics;
pub use spec::{LayerSpec, ModelSpec, Normalize};
pub use tensor::Tensor;
pub use train::{TrainedRun, Trainer};
