//! The networks as graphs of operations, for exporters.
//!
//! Each network lowers itself onto a [`Graph`], a small vocabulary of layer-level operations
//! that an exporter implements (ONNX in `relkd-export`). The lowering sits in each network's
//! file beside the `forward` it mirrors, so that a change to one is seen next to the other;
//! the exporter's parity tests (Burn's logits against the exported graph's) check that they
//! agree. Inference semantics: batch norm uses its running statistics and dropout is absent.

use burn::nn::BatchNorm;
use burn::nn::PRelu;
use burn::nn::conv::{Conv2d, ConvTranspose2d};

/// A tensor in the graph being built (for ONNX, a value name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value(pub String);

/// What a lowering gives, as `forward_aligned` does: the logits and the distillation tap's
/// feature (which an exporter may expose as a second output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered {
    pub logits: Value,
    pub feature: Value,
}

/// The operations the five networks are made of, in NCHW layout. Spatial sizes are never
/// fixed: an exporter keeps height and width symbolic.
pub trait Graph {
    /// A convolution, with the batch norm that follows it folded in when given.
    fn conv(&mut self, x: &Value, conv: &Conv2d, bn: Option<&BatchNorm>) -> Value;
    /// A transposed convolution, with the batch norm that follows it folded in when given.
    fn conv_transpose(&mut self, x: &Value, conv: &ConvTranspose2d, bn: Option<&BatchNorm>) -> Value;
    /// A batch norm that follows no convolution (after a concatenation or a sum).
    fn batch_norm(&mut self, x: &Value, bn: &BatchNorm) -> Value;
    fn relu(&mut self, x: &Value) -> Value;
    fn prelu(&mut self, x: &Value, prelu: &PRelu) -> Value;
    fn add(&mut self, a: &Value, b: &Value) -> Value;
    /// Concatenation along channels.
    fn concat(&mut self, xs: &[Value]) -> Value;
    /// 2×2, stride-2 max pooling.
    fn max_pool_2x2(&mut self, x: &Value) -> Value;
    /// 2×2, stride-2 max pooling that also gives the argmax of each window, for
    /// [`Graph::max_unpool_2x2`].
    fn max_pool_2x2_with_indices(&mut self, x: &Value) -> (Value, Value);
    /// Places each value at its pooling index in a zero map of the spatial size of `like`.
    fn max_unpool_2x2(&mut self, x: &Value, indices: &Value, like: &Value) -> Value;
    /// `k × k` average pooling, stride `stride`, zero padding `pad` counted in the average.
    fn avg_pool(&mut self, x: &Value, k: usize, stride: usize, pad: usize) -> Value;
    /// Mean over height and width: `[b, c, h, w] → [b, c, 1, 1]`.
    fn global_avg_pool(&mut self, x: &Value) -> Value;
    /// Bilinear resize with aligned corners to the height and width of `like`.
    fn resize_bilinear_like(&mut self, x: &Value, like: &Value) -> Value;
    /// Bilinear resize with aligned corners by an integer factor.
    fn resize_bilinear_by(&mut self, x: &Value, factor: usize) -> Value;
}
