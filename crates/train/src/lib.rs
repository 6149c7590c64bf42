//! The `train` binary's library: command-line interface, dataset summaries and (with the
//! models) training. `main.rs` only parses arguments and reports errors.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data_parallel;
pub mod evaluate;
pub mod experiment;
pub mod losses;
pub mod models;
pub mod protocol;
pub mod report;
pub mod run;
pub mod schedule;
pub mod summary;
pub mod trainer;
