//! What a run or a model looks like to a person: the evaluation report (`report.rs`), the
//! layer table (`table.rs`), pictures (`viz.rs`), curves (`plot.rs`), sweep summaries
//! (`sweep.rs`) and sweeps as files other engines run (`plan.rs`).

pub mod plan;
pub mod plot;
#[allow(clippy::module_inception)]
pub mod report;
pub mod sweep;
pub mod table;
pub mod viz;
