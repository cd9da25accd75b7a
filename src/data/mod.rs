//! Data: IDX parsing, locating and downloading the data sets, batches, user images.

pub mod dataset;
pub mod fetch;
pub mod idx;
pub mod preprocess;

pub use dataset::{Dataset, DatasetKind, Splits};
