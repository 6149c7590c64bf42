//! The CPU backend's own training operations: where Burn's generic rules cost most on flex
//! (issues #16 and #32), the networks and the affinity loss call these instead. Each is a Burn
//! backend extension with a flex kernel and an autodiff node; on any other device (CUDA) they keep
//! Burn's operations.
//! Values equal Burn's up to float rounding, tested against Burn's on the same inputs:
//! - [`conv`]: the convolution, forward and both gradients, as gemms over each image's im2col
//!   (the gemms in `im2col.rs`);
//! - [`batch_norm`]: batch statistics and gradients in one pass per channel plane;
//! - [`prelu`]: PReLU in one pass forward and one backward;
//! - [`affinity`]: the affinity loss's sums over pixel pairs, one pass each way;
//! - [`memory`]: the allocator keeps what a step frees for the next step.

pub mod affinity;
pub mod batch_norm;
pub mod conv;
mod im2col;
mod memory;
pub mod prelu;

pub use affinity::{AffinityPairs, affinity_sums, neighbour_offsets};
pub use batch_norm::BatchNormApply;
pub use conv::Conv2dApply;
pub use memory::keep_freed_memory;
pub use prelu::prelu;

use burn::backend::DispatchDevice;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Device, TensorData};

/// Whether the device computes on flex (with or without autodiff): where these operations
/// replace Burn's.
pub fn runs_on_flex(device: &Device) -> bool {
    matches!(device.clone().without_autodiff().as_dispatch(), DispatchDevice::Flex(_))
}

/// Σ f(a[i], b[i]) over `a` (and the head of `b`): f32 in eight lanes, which the compiler
/// vectorises, added up in f64. A plane has at most a few thousand values, so each lane sums a
/// few hundred.
pub(crate) fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let (chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 =
        chunks.remainder().iter().zip(&b[a.len() / LANES * LANES..]).map(|(&x, &y)| f64::from(f(x, y))).sum();
    for (x, y) in chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += f(x[lane], y[lane]);
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + tail
}

pub(crate) fn flex_vec(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
