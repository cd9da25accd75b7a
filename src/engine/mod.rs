//! The execution machinery: a network built from a spec (`network.rs`), and how its
//! batches run on the fast kernels (`pipeline.rs`: chunks, stages, fusions, timing) through
//! one small adapter per layer type (`ops.rs`).

pub mod memory;
pub mod network;
mod ops;
pub mod pipeline;

pub use network::{Engine, Network};
