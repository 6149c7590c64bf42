//! Where Burn computes: `cpu` (flex), `cuda[:N]` (burn-cuda, with the `cuda` feature),
//! `cubecl-cpu` (CubeCL's CPU runtime, with the `cubecl-cpu` feature: the GPU code path on this
//! CPU) or `auto`. A CUDA device that cannot run is an error, never a silent CPU fallback,
//! unless the user asked for `auto`, and then the fallback is reported.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
    /// CubeCL's CPU runtime: Burn's own operations and CubeCL kernels, as on CUDA, not flex's.
    CubeclCpu,
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "auto" => Ok(DeviceChoice::Auto),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "cubecl-cpu" => Ok(DeviceChoice::CubeclCpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (use cpu, cuda, cuda:N, cubecl-cpu or auto)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::CubeclCpu => f.write_str("cubecl-cpu"),
            DeviceChoice::Auto => f.write_str("auto"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "this build has no CUDA support; rebuild with `cargo build --release --features cuda` \
         (after `bash ci/setup-cuda-build.sh`), or use --device cpu"
    )]
    CudaNotBuilt,
    #[error(
        "CUDA device {index} is unavailable: {reason}\nit needs an NVIDIA GPU and its driver (libcuda); use --device cpu, or --device auto to fall back to the CPU"
    )]
    CudaUnavailable { index: usize, reason: String },
    #[error(
        "this build has no CubeCL CPU runtime; rebuild with `cargo build --release --features cubecl-cpu` \
         (after `bash ci/setup-cuda-build.sh`), or use --device cpu"
    )]
    CubeclCpuNotBuilt,
}

/// The device to use, and why it is not the one asked for when `auto` fell back.
pub struct Resolved {
    pub device: Device,
    /// `cpu (flex)` or `cuda:0`.
    pub description: String,
    /// Set when `auto` could not use CUDA.
    pub fallback: Option<DeviceError>,
}

impl DeviceChoice {
    /// Opens the device, checking that CUDA really runs (one tiny allocation) before anything
    /// is built on it.
    pub fn resolve(self) -> Result<Resolved, DeviceError> {
        let cpu = |fallback| Resolved { device: Device::flex(), description: "cpu (flex)".into(), fallback };
        match self {
            DeviceChoice::Cpu => Ok(cpu(None)),
            DeviceChoice::Cuda(index) => {
                Ok(Resolved { device: cuda_device(index)?, description: format!("cuda:{index}"), fallback: None })
            }
            DeviceChoice::CubeclCpu => Ok(Resolved {
                device: cubecl_cpu_device()?,
                description: "cubecl-cpu (CubeCL's CPU runtime)".into(),
                fallback: None,
            }),
            DeviceChoice::Auto => match cuda_device(0) {
                Ok(device) => Ok(Resolved { device, description: "cuda:0".into(), fallback: None }),
                Err(reason) => Ok(cpu(Some(reason))),
            },
        }
    }
}

#[cfg(feature = "cubecl-cpu")]
fn cubecl_cpu_device() -> Result<Device, DeviceError> {
    sample_candidates_once();
    Ok(Device::cpu())
}

/// CubeCL's autotune times each candidate kernel at least three times, and on the CPU one
/// candidate is slow beyond use: `gemm_cpu_general` took 38 s a call on a convolution's weight
/// gradient at 32×32 (the winner: 1.3 ms), 308 s of tuning for that one shape. One timed call
/// after the warm-up is enough to drop it (40 s). Applies unless the user's `cubecl.toml` sets
/// its own sample counts, and only before CubeCL has read its configuration.
#[cfg(feature = "cubecl-cpu")]
fn sample_candidates_once() {
    use burn::cubecl::config::autotune::BenchConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    let (bench, default) = (&mut config.autotune.bench, BenchConfig::default());
    if (bench.min_samples, bench.max_samples) == (default.min_samples, default.max_samples) {
        (bench.min_samples, bench.max_samples) = (1, 3);
    }
    CubeClRuntimeConfig::try_set(config);
}

#[cfg(not(feature = "cubecl-cpu"))]
fn cubecl_cpu_device() -> Result<Device, DeviceError> {
    Err(DeviceError::CubeclCpuNotBuilt)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::CudaNotBuilt)
}

/// cudarc loads the driver at run time and panics when it is missing; the probe turns that
/// panic into an error.
#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device, DeviceError> {
    use burn::tensor::Tensor;
    use std::panic::{AssertUnwindSafe, catch_unwind, set_hook, take_hook};

    let previous_hook = take_hook();
    set_hook(Box::new(|_| {}));
    let probe = catch_unwind(AssertUnwindSafe(|| {
        let device = Device::cuda(index);
        Tensor::<1>::zeros([1], &device).into_data();
        device
    }));
    set_hook(previous_hook);
    probe.map_err(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA runtime failed to start".into());
        DeviceError::CudaUnavailable { index, reason }
    })
}
