//! Building blocks shared by the five networks, and the operations Burn 0.22 lacks:
//! max-unpooling, channel dropout and a bilinear resize that differentiates on every backend.

use crate::cpu::{BatchNormApply, Conv2dApply};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PRelu, PaddingConfig2d, Relu};
use burn::tensor::module::max_pool2d_with_indices;
use burn::tensor::ops::{MaxPoolOptions, PadMode};
use burn::tensor::{Device, Distribution, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::lower::{Graph, Value};

/// `channels × width`, rounded, at least 1: how a width multiplier shrinks a layer.
pub fn scaled(channels: usize, width: f64) -> usize {
    ((channels as f64 * width).round() as usize).max(1)
}

/// A convolution without bias (the usual case before a batch norm), `padding` on all sides.
pub fn conv(
    channels: [usize; 2],
    kernel: [usize; 2],
    stride: usize,
    padding: [usize; 2],
    dilation: [usize; 2],
    bias: bool,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new(channels, kernel)
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding[0], padding[1], padding[0], padding[1]))
        .with_dilation(dilation)
        .with_bias(bias)
        .init(device)
}

/// A square `k × k` convolution with "same" padding for its dilation.
pub fn conv_same(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    bias: bool,
    device: &Device,
) -> Conv2d {
    let pad = (k - 1) / 2 * dilation;
    conv([cin, cout], [k, k], stride, [pad, pad], [dilation, dilation], bias, device)
}

/// A `k × k`, stride-`k` transposed convolution without padding: exactly doubles (k = 2) the
/// resolution, as the decoders use it.
pub fn conv_transpose(cin: usize, cout: usize, k: usize, bias: bool, device: &Device) -> ConvTranspose2d {
    ConvTranspose2dConfig::new([cin, cout], [k, k]).with_stride([k, k]).with_bias(bias).init(device)
}

/// Batch norm with PyTorch's momentum (0.1) and the given epsilon.
pub fn batch_norm(channels: usize, epsilon: f64, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).with_epsilon(epsilon).with_momentum(0.1).init(device)
}

/// 2×2, stride-2 max pooling that keeps the argmax of each window (flat `y·w + x` indices into
/// the input plane), for [`max_unpool2d`].
pub fn max_pool2x2_with_indices(x: Tensor<4>) -> (Tensor<4>, Tensor<4, Int>) {
    max_pool2d_with_indices(
        x,
        MaxPoolOptions {
            kernel_size: [2, 2],
            stride: [2, 2],
            padding: [(0, 0); 2],
            dilation: [1, 1],
            ceil_mode: false,
        },
    )
}

/// Max-unpooling: places each value of `x` at the position its max-pool index names, in a
/// zero tensor of spatial size `output_hw`. The gradient flows back to exactly those positions.
pub fn max_unpool2d(x: Tensor<4>, indices: Tensor<4, Int>, output_hw: [usize; 2]) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let [oh, ow] = output_hw;
    let zeros = Tensor::<3>::zeros([b, c, oh * ow], &x.device());
    zeros
        .scatter(2, indices.reshape([b, c, h * w]), x.reshape([b, c, h * w]), IndexingUpdateOp::Add)
        .reshape([b, c, oh, ow])
}

/// Interpolation matrix `[out, in]` of 1D linear resizing with aligned corners (the output's
/// first and last samples sit on the input's): row i mixes the two inputs around i·(in−1)/(out−1).
fn interpolation_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    let scale = if output > 1 { (input - 1) as f64 / (output - 1) as f64 } else { 0.0 };
    for i in 0..output {
        let src = i as f64 * scale;
        let lo = (src.floor() as usize).min(input - 1);
        let hi = (lo + 1).min(input - 1);
        let frac = (src - lo as f64) as f32;
        m[i * input + lo] += 1.0 - frac;
        m[i * input + hi] += frac;
    }
    m
}

/// Bilinear resize with `align_corners = true` (the reference networks' `nn.Upsample` and
/// `F.interpolate` setting, and ONNX Resize's `align_corners` mode), as matrix products
/// `A_h · x · A_wᵀ`. Burn 0.22.1 differentiates `interpolate` only on flex; matmul everywhere.
pub fn resize_bilinear(x: Tensor<4>, output_hw: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let [oh, ow] = output_hw;
    let x = if w == ow { x } else { resize_last_axis(x, ow) }; // [b, c, h, ow]
    if h == oh {
        return x;
    }
    resize_last_axis(x.swap_dims(2, 3), oh).swap_dims(2, 3) // [b, c, oh, ow]
}

/// `x · A_wᵀ` over the last axis, as one plain 2D product of all rows: the batched product
/// with a broadcast matrix took 3–8 s a call at 32×32 on CubeCL's CPU runtime (#30).
fn resize_last_axis(x: Tensor<4>, output: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let matrix = Tensor::<2>::from_data(TensorData::new(interpolation_matrix(w, output), [output, w]), &x.device());
    // [b·c·h, w] · [w, output] → [b, c, h, output]
    x.reshape([b * c * h, w]).matmul(matrix.transpose()).reshape([b, c, h, output])
}

/// Channel dropout (PyTorch's `Dropout2d`): whole feature maps are zeroed with probability
/// `prob` while training, and the rest rescaled. The identity at inference.
#[derive(Module, Debug)]
pub struct Dropout2d {
    pub prob: f64,
    /// Cleared by `freeze`, like Burn's own dropout.
    pub training: Param<burn::module::Flag>,
}

#[derive(Config, Debug)]
pub struct Dropout2dConfig {
    pub prob: f64,
}

impl Dropout2dConfig {
    pub fn init(&self) -> Dropout2d {
        assert!((0.0..1.0).contains(&self.prob), "dropout probability must be in [0, 1)");
        Dropout2d { prob: self.prob, training: Param::from_bool(true) }
    }
}

impl Dropout2d {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !self.training.is_enabled() || !x.device().is_autodiff() || self.prob == 0.0 {
            return x;
        }
        let [b, c, _, _] = x.dims();
        let keep = 1.0 - self.prob;
        let mask = Tensor::<4>::random([b, c, 1, 1], Distribution::Bernoulli(keep), &x.device());
        x * mask.div_scalar(keep)
    }
}

/// Pads height and width at the bottom and right with zeros (the z-scored mean) up to a
/// multiple of `stride`, so any input size fits a network's down- and up-sampling.
pub fn pad_to_multiple(x: Tensor<4>, stride: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let (ph, pw) = (h.next_multiple_of(stride) - h, w.next_multiple_of(stride) - w);
    if ph == 0 && pw == 0 {
        return x;
    }
    x.pad([(0, ph), (0, pw)], PadMode::Constant(0.0))
}

/// The top-left `h × w` of a map: undoes [`pad_to_multiple`].
pub fn crop(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [b, c, ph, pw] = x.dims();
    if (ph, pw) == (h, w) {
        return x;
    }
    x.slice([0..b, 0..c, 0..h, 0..w])
}

/// PReLU with one slope or one per channel: Burn's `PRelu::forward` selects between x and α·x
/// with `mask_where`, whose backward on flex falls to a slow strided path; [`crate::cpu::prelu`]
/// computes the same values (README, "Training speed on the CPU").
pub fn prelu(x: Tensor<4>, act: &PRelu) -> Tensor<4> {
    crate::cpu::prelu(x, act.alpha.val())
}

/// The activation after a [`DownsamplerBlock`]: ENet uses PReLU, ERFNet ReLU.
#[derive(Module, Debug)]
pub enum Activation {
    PRelu(PRelu),
    Relu(Relu),
}

impl Activation {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Activation::PRelu(a) => prelu(x, a),
            Activation::Relu(a) => a.forward(x),
        }
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        match self {
            Activation::PRelu(a) => g.prelu(x, a),
            Activation::Relu(_) => g.relu(x),
        }
    }
}

/// ENet's initial block, which ERFNet reuses as its downsampler: a 3×3 stride-2 convolution
/// beside a 2×2 max-pool of the input, concatenated, normalised and activated.
#[derive(Module, Debug)]
pub struct DownsamplerBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub act: Activation,
}

impl DownsamplerBlock {
    /// The convolution makes `out − in` channels so that the pooled input completes `out`.
    pub fn new(cin: usize, cout: usize, conv_bias: bool, bn_epsilon: f64, act: Activation, device: &Device) -> Self {
        assert!(cout > cin, "a downsampler block needs more output than input channels ({cout} ≤ {cin})");
        Self {
            conv: conv_same(cin, cout - cin, 3, 2, 1, conv_bias, device),
            bn: batch_norm(cout, bn_epsilon, device),
            act,
        }
    }

    /// `[b, in, h, w] → [b, out, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let conv = self.conv.apply(x.clone()); // [b, out − in, h/2, w/2]
        let (pool, _) = max_pool2x2_with_indices(x); // [b, in, h/2, w/2]
        self.act.forward(self.bn.apply(Tensor::cat(vec![conv, pool], 1)))
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let conv = g.conv(x, &self.conv, None);
        let pool = g.max_pool_2x2(x);
        let cat = g.concat(&[conv, pool]);
        let normed = g.batch_norm(&cat, &self.bn);
        self.act.lower(g, &normed)
    }
}
