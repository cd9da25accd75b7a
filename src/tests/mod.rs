//! Tests of the crate's internals: every readable layer against finite differences, every
//! fast kernel against the readable layer it replaces, the engine's pipeline against each
//! layer run alone, the parsers and the downloader. The command line and the public API
//! are tested from outside, in `tests/`.

#![allow(clippy::needless_range_loop, clippy::type_complexity)]

mod common;
mod data;
mod engine;
mod fetch;
mod fuzz;
mod gradcheck;
mod idx;
mod kernels;
mod model;
mod nn;
mod sweep;
