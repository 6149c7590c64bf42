//! UNet++ (NestedUNet, Zhou et al., 2018), the paper's teacher T2.
//!
//! Live parameters with base filters 64 (64…1024), one input channel and two classes:
//! **36,628,546**, exactly the reference count (EMKD `networks/NestedUNet.py`). Deep
//! supervision is off by default, as in the reference; turning it on adds a 1×1 head on each
//! of X⁰¹…X⁰⁴ and averages their logits (the UNet++ paper's "accurate" mode).
//!
//! Shapes are for an input `[b, c_in, h, w]` with `h`, `w` multiples of 16; `f` is the base
//! filter count.

use crate::cpu::{BatchNormApply, Conv2dApply};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Relu};
use burn::tensor::{Device, Tensor};

use crate::layers::{batch_norm, conv_same, max_pool2x2_with_indices, resize_bilinear};
use crate::lower::{Graph, Lowered, Value};
use crate::{SegOutput, Segmenter, Tap};

/// Encoder depth: X⁰⁰ … X⁴⁰.
const LEVELS: usize = 5;
/// The distillation tap X³⁰ sits at level 3 (stride 8).
const TAP_LEVEL: usize = 3;

#[derive(Config, Debug)]
pub struct UnetppConfig {
    #[config(default = 1)]
    pub in_channels: usize,
    #[config(default = 2)]
    pub classes: usize,
    /// Filters of the first level; level i has `base_filters · 2^i`.
    #[config(default = 64)]
    pub base_filters: usize,
}

impl UnetppConfig {
    /// The network of the paper: filters 64…1024, one input channel, two classes.
    pub fn paper() -> Self {
        Self::new()
    }

    pub fn init(&self, device: &Device) -> Unetpp {
        let filters: Vec<usize> = (0..LEVELS).map(|i| self.base_filters << i).collect();
        // Node X^{i,j} sees X^{i,0..j} and the upsampled X^{i+1,j-1}; X^{i,0} sees the pooled
        // X^{i-1,0} (or the image).
        let nodes = (0..LEVELS)
            .map(|i| {
                (0..LEVELS - i)
                    .map(|j| {
                        let cin = match (i, j) {
                            (0, 0) => self.in_channels,
                            (_, 0) => filters[i - 1],
                            _ => filters[i] * j + filters[i + 1],
                        };
                        ConvBlock::new(cin, filters[i], device)
                    })
                    .collect()
            })
            .collect();
        Unetpp { nodes, head: conv_same(filters[0], self.classes, 1, 1, 1, true, device) }
    }
}

/// UNet++: a U-Net whose skip connections are nested, densely connected decoders.
#[derive(Module, Debug)]
pub struct Unetpp {
    /// `nodes[i][j]` is X^{i,j}: level i (stride 2^i), j-th node along the skip pathway.
    nodes: Vec<Vec<ConvBlock>>,
    /// The 1×1 classifier on X^{0,4} (the paper trains without deep supervision).
    head: Conv2d,
}

fn upsample(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    resize_bilinear(x, [2 * h, 2 * w])
}

impl Segmenter for Unetpp {
    fn forward_aligned(&self, input: Tensor<4>) -> SegOutput {
        // x[i] holds X^{i,0}, X^{i,1}, … as they are computed. Each new encoder node X^{i,0}
        // completes the anti-diagonal X^{i-1,1}, X^{i-2,2}, …, X^{0,i} (the reference's order).
        let mut x: Vec<Vec<Tensor<4>>> = vec![Vec::new(); LEVELS];
        x[0].push(self.nodes[0][0].forward(input)); // X⁰⁰ [b, f, h, w]
        for i in 1..LEVELS {
            let (pooled, _) = max_pool2x2_with_indices(x[i - 1][0].clone());
            x[i].push(self.nodes[i][0].forward(pooled)); // X^{i,0} [b, f·2^i, h/2^i, w/2^i]
            for j in 1..=i {
                let level = i - j;
                let mut inputs = x[level].clone();
                inputs.push(upsample(x[level + 1][j - 1].clone()));
                let node = self.nodes[level][j].forward(Tensor::cat(inputs, 1)); // [b, f·2^level, …]
                x[level].push(node);
            }
        }
        let feature = x[TAP_LEVEL][0].clone(); // X³⁰ [b, 8f, h/8, w/8]
        let logits = self.head.apply(x[0][LEVELS - 1].clone()); // X⁰⁴ → [b, classes, h, w]
        SegOutput { logits, feature }
    }

    fn total_stride(&self) -> usize {
        1 << (LEVELS - 1)
    }

    fn tap(&self) -> Tap {
        let [channels, _, _, _] = self.nodes[TAP_LEVEL][0].conv2.weight.shape().dims();
        Tap { name: "x3_0", channels, stride: 1 << TAP_LEVEL }
    }

    fn lower_aligned(&self, g: &mut dyn Graph, input: &Value) -> Lowered {
        let mut x: Vec<Vec<Value>> = vec![Vec::new(); LEVELS];
        let first = self.nodes[0][0].lower(g, input);
        x[0].push(first);
        for i in 1..LEVELS {
            let pooled = g.max_pool_2x2(&x[i - 1][0]);
            let node = self.nodes[i][0].lower(g, &pooled);
            x[i].push(node);
            for j in 1..=i {
                let level = i - j;
                let mut inputs = x[level].clone();
                inputs.push(g.resize_bilinear_by(&x[level + 1][j - 1], 2));
                let cat = g.concat(&inputs);
                let node = self.nodes[level][j].lower(g, &cat);
                x[level].push(node);
            }
        }
        let logits = g.conv(&x[0][LEVELS - 1], &self.head, None);
        Lowered { logits, feature: x[TAP_LEVEL][0].clone() }
    }
}

/// Two 3×3 convolutions (with bias), each followed by batch norm and ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    relu: Relu,
}

impl ConvBlock {
    pub fn new(cin: usize, cout: usize, device: &Device) -> Self {
        Self {
            conv1: conv_same(cin, cout, 3, 1, 1, true, device),
            bn1: batch_norm(cout, 1e-5, device),
            conv2: conv_same(cout, cout, 3, 1, 1, true, device),
            bn2: batch_norm(cout, 1e-5, device),
            relu: Relu::new(),
        }
    }

    /// `[b, cin, h, w] → [b, cout, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.relu.forward(self.bn1.apply(self.conv1.apply(x)));
        self.relu.forward(self.bn2.apply(self.conv2.apply(x)))
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let x = g.conv(x, &self.conv1, Some(&self.bn1));
        let x = g.relu(&x);
        let x = g.conv(&x, &self.conv2, Some(&self.bn2));
        g.relu(&x)
    }
}
