//! The `train` binary's library: command-line interface, dataset summaries and (with the
//! models) training. `main.rs` only parses arguments and reports errors.

pub mod charts;
pub mod checkpoint;
pub mod cli;
pub mod data_parallel;
pub mod experiment;
pub mod models;
pub mod report;
pub mod run;
pub mod step_time;
pub mod summary;
pub mod teacher;
pub mod trainer;

// What a run is made of lives below the trainer, in `relkd-runs` (shared with `export`).
pub use relkd_runs::{config, evaluate, losses, protocol, schedule};
