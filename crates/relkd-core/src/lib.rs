//! What `train` and `infer` share, and nothing that needs Burn: NIfTI IO, the multi-site
//! dataset layout, preprocessing and augmentation, metrics, and the synthetic phantom.
//!
//! The modules keep MONAI's split: data ([`dataset`], [`nifti_io`], [`phantom`]),
//! [`transforms`] and [`metrics`].

pub mod dataset;
pub mod metrics;
pub mod nifti_io;
pub mod phantom;
pub mod timing;
pub mod transforms;
