//! ONNX Runtime inference for relkd models. Depends on `ort`, `nifti` (through `relkd-core`)
//! and nothing of Burn, so the `infer` binary stays small and deployable.

pub mod runtime;
