//! What `train` and `infer` share, and nothing that needs Burn: NIfTI IO, the multi-site
//! dataset layout, preprocessing and augmentation, metrics, and the synthetic phantom.
//!
//! The modules keep MONAI's split: data ([`dataset`], [`nifti_io`], [`phantom`]),
//! [`transforms`] and [`metrics`]; [`png`] draws the pictures of reports and overlays, and
//! [`files`] writes every output atomically.

pub mod dataset;
pub mod errors;
pub mod files;
pub mod metrics;
pub mod nifti_io;
pub mod phantom;
pub mod png;
pub mod segment;
pub mod stats;
pub mod timing;
pub mod transforms;
