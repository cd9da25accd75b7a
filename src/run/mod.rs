//! Runs: their config (`config.rs`), the training loop (`trainer.rs`), checkpoints and model
//! files (`checkpoint.rs`), the metric log (`metrics.rs`) and the files of a run folder
//! (`run_dir.rs`).

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod run_dir;
pub mod trainer;
