//! The CPU backend's own training operations: where Burn's generic rules cost most on flex
//! (issues #16 and #32), the networks and the losses call these instead. Each is a Burn
//! backend extension with a flex kernel and an autodiff node; on any other device (CUDA) they keep
//! Burn's operations.
//! Values equal Burn's up to float rounding, tested against Burn's on the same inputs:
//! - [`conv`]: the convolution, forward and both gradients, as gemms over each image's im2col
//!   (the gemms in `im2col.rs`);
//! - [`batch_norm`]: batch statistics and gradients in one pass per channel plane;
//! - [`prelu`]: PReLU in one pass forward and one backward;
//! - [`affinity`]: the affinity loss's sums over pixel pairs from the student's logits, one pass
//!   each way;
//! - [`divergence`]: LM's and Hinton's per-pixel KL from both logits, one pass each way;
//! - [`memory`]: the allocator keeps what a step frees for the next step.

pub mod affinity;
pub mod batch_norm;
pub mod conv;
pub mod divergence;
mod im2col;
mod memory;
pub mod prelu;
mod softmax;

pub use affinity::{AffinityPairs, affinity_sums, neighbour_offsets};
pub use batch_norm::BatchNormApply;
pub use conv::Conv2dApply;
pub use divergence::{PixelKl, pixel_kl_of_logits};
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

/// The values of a 4D float tensor in row-major order. Flex's own copy walks a layout it cannot
/// flatten (its softmax over channels returns `[b, k, h, w]` stored channels-last, with h and w
/// swapped) one strided index at a time, the slowest part of the affinity loss's pass (issue
/// #32); four nested loops over the strides do the same copy many times faster.
pub(crate) fn values_4d(t: &FlexTensor) -> Vec<f32> {
    let layout = t.layout();
    if t.is_contiguous() || layout.shape().num_dims() != 4 || layout.strides().iter().any(|&s| s < 0) {
        return t.to_contiguous().storage::<f32>().to_vec();
    }
    let dims: [usize; 4] = layout.shape().dims();
    let s: [usize; 4] = std::array::from_fn(|d| layout.strides()[d] as usize);
    let src = &t.storage::<f32>()[layout.start_offset()..];
    let mut values = Vec::with_capacity(dims.iter().product());
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                let row = a * s[0] + b * s[1] + c * s[2];
                values.extend((0..dims[3]).map(|d| src[row + d * s[3]]));
            }
        }
    }
    values
}

pub(crate) fn flex_vec(values: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
