//! Data: the IDX files (`idx.rs`), finding and downloading them (`fetch.rs`), data sets and
//! batches in memory (`dataset.rs`), and a user's own images prepared the way MNIST was
//! made (`preprocess.rs`).

pub(crate) mod dataset;
pub(crate) mod fetch;
pub(crate) mod idx;
pub mod preprocess;

pub use dataset::{Dataset, DatasetKind, Splits};
