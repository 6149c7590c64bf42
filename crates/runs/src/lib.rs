//! What an experiment is made of and what it leaves behind, shared by `train` and `export`
//! without the training loop (no burn-train here): its configuration ([`config`], the site
//! plans of [`protocol`], the learning-rate [`schedule`]), its [`losses`], how its data is
//! found and split ([`data`]), how a network is scored on whole volumes ([`evaluate`]), and
//! the model cards and weights of finished networks ([`card`]).

pub mod card;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod losses;
pub mod progress;
pub mod protocol;
pub mod schedule;
