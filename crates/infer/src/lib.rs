//! ONNX Runtime inference for relkd models: `infer` segments NIfTI volumes with an exported
//! model and measures the efficiency table. Depends on `ort`, the shared `relkd-core` (NIfTI,
//! preprocessing, metrics) and `onnx-protobuf` (to read a graph's cost), and on nothing of
//! Burn, so the binary stays small and deployable.

pub mod bench;
pub mod cli;
pub mod graph;
pub mod model;
pub mod runtime;
