//! # convnet
//!
//! A convolutional-network trainer written from scratch: every layer's forward and
//! backward pass, the losses, the optimiser and the initialisation are in this crate,
//! side by side and checked against finite differences. GEMM comes from a well-kept
//! crate (see `gemm.rs`); stride-1 convolutions run on our own vector kernels
//! (`layers/conv_direct.rs`, over `simd.rs`), chosen at run time.
//!
//! ```text
//! IDX files ──► Dataset (u8 images + labels, in memory once)
//!           ──► Batches (seeded shuffle, normalised f32 NCHW)
//!           ──► Network: [Layer] forward ──► Loss ──► backward ──► Optimiser step
//!           ──► Trainer: per-epoch metrics ──► metrics.csv, model, progress
//! ```
//!
//! ```
//! use convnet::{ModelSpec, Network};
//! use rand::SeedableRng;
//!
//! let spec = ModelSpec::preset("seed-cnn").unwrap();
//! let mut net = Network::build(&spec).unwrap();
//! net.initialize(&mut rand_pcg::Pcg64Mcg::seed_from_u64(1), None);
//! // One batch of two blank images, labels 3 and 7.
//! net.input_mut(2).fill(0.0);
//! let logits = net.forward(true);
//! assert_eq!(logits.shape, vec![2, 10]);
//! let stats = net.backward(&[3, 7]);
//! assert_eq!(stats.count, 2);
//! // The same two passes in one call, the way the trainer runs them (faster: each chunk
//! // of the batch goes forward and backward while its activations are in cache).
//! let stats = net.train_step(&[3, 7]);
//! assert_eq!(stats.count, 2);
//! let mut sgd = convnet::optim::Optimizer::sgd(0.9, 5e-4, true);
//! net.visit_params_mut(|i, _layer, p| sgd.update(i, p, 0.01, 1));
//! ```

pub mod checkpoint;
pub mod data;
pub mod gemm;
pub mod init;
pub mod layers;
pub mod loss;
pub mod metrics;
pub mod network;
pub mod optim;
pub mod plot;
pub mod report;
pub mod runtime;
pub mod simd;
pub mod spec;
pub mod sweep;
pub mod tensor;
pub mod train;
pub mod viz;

pub use network::Network;
pub use spec::ModelSpec;
pub use tensor::Tensor;

use std::path::{Path, PathBuf};

/// Every error convnet reports. Each names the file or option and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad option or hyper-parameter.
    #[error("{0}")]
    Config(String),
    /// A model spec that cannot be built.
    #[error("{0}")]
    Spec(String),
    /// A data file that is not what it should be.
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
    /// The data set is missing and could not be downloaded.
    #[error("{0}")]
    Fetch(String),
    /// A saved model or checkpoint that cannot be used.
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Training produced a NaN or infinite loss.
    #[error("{0}")]
    Diverged(String),
    /// Training was interrupted (Ctrl-C) and a checkpoint was written.
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn data(path: &Path, msg: impl Into<String>) -> Error {
        Error::Data {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn model(path: &Path, msg: impl Into<String>) -> Error {
        Error::Model {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Spec(_) => 2,
            Error::Data { .. } | Error::Fetch(_) => 3,
            Error::Model { .. } => 4,
            Error::Io { .. } => 5,
            Error::Diverged(_) => 6,
            Error::Interrupted(_) => 130,
        }
    }
}
