//! ENet (Paszke et al., 2016), the smallest student.
//!
//! Live parameters at the paper's width with one input channel and two classes: **335,966**.
//! The reference count (EMKD `networks/ENet.py`, Table 1's 0.353 M) is 353,761; the difference,
//! 17,795, is `bottleneck3_5`, which the reference builds but never calls. Only layers that run
//! are built here, so the live count sits 4.8% under Table 1.
//!
//! Shapes are for an input `[b, c_in, h, w]` with `h`, `w` multiples of 8.

use crate::cpu::{BatchNormApply, Conv2dApply};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, PRelu, PReluConfig};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::layers::{
    Activation, DownsamplerBlock, Dropout2d, Dropout2dConfig, batch_norm, conv, conv_same, conv_transpose,
    max_pool2x2_with_indices, max_unpool2d, prelu, scaled,
};
use crate::lower::{Graph, Lowered, Value};
use crate::{SegOutput, Segmenter, Tap};

const BN_EPS: f64 = 1e-5;

#[derive(Config, Debug)]
pub struct EnetConfig {
    #[config(default = 1)]
    pub in_channels: usize,
    #[config(default = 2)]
    pub classes: usize,
    /// Channel multiplier; 1.0 is the paper's network.
    #[config(default = 1.0)]
    pub width: f64,
}

impl EnetConfig {
    /// The network of the paper: one input channel, two classes, full width.
    pub fn paper() -> Self {
        Self::new()
    }

    pub fn init(&self, device: &Device) -> Enet {
        let w = |c| scaled(c, self.width);
        let c3 = if self.in_channels == 1 { 3 } else { self.in_channels };
        // The initial block concatenates the pooled input, so it needs at least one more channel.
        let (c16, c64, c128) = (w(16).max(c3 + 1), w(64), w(128));
        let (i4, i16, i32) = (w(4), w(16), w(32));
        let regular = |c, i| BottleneckConfig::new([c, i, c]);
        let dilated = |d| BottleneckConfig::new([c128, i32, c128]).with_kind(BottleneckKind::Dilated(d));
        let asymmetric = || BottleneckConfig::new([c128, i32, c128]).with_kind(BottleneckKind::Asymmetric);
        // Stages 2 and 3 share one pattern; stage 3 has no downsampling block, and its fifth
        // block (bottleneck3_5) is left out because the reference never runs it.
        let stage2_pattern = [
            regular(c128, i32),
            dilated(2),
            asymmetric(),
            dilated(4),
            regular(c128, i32),
            dilated(8),
            asymmetric(),
            dilated(16),
        ];
        let stage3_pattern =
            [regular(c128, i32), dilated(2), asymmetric(), dilated(4), dilated(8), asymmetric(), dilated(16)];
        Enet {
            repeat_input: self.in_channels == 1,
            initial: DownsamplerBlock::new(
                c3,
                c16,
                false,
                BN_EPS,
                Activation::PRelu(PReluConfig::new().init(device)),
                device,
            ),
            bottleneck1_0: BottleneckConfig::new([c16, i16, c64]).with_kind(BottleneckKind::Downsampling).init(device),
            stage1: (0..4).map(|_| regular(c64, i16).init(device)).collect(),
            bottleneck2_0: BottleneckConfig::new([c64, i32, c128]).with_kind(BottleneckKind::Downsampling).init(device),
            stage2: stage2_pattern.iter().map(|c| c.init(device)).collect(),
            stage3: stage3_pattern.iter().map(|c| c.init(device)).collect(),
            bottleneck4_0: UpsamplingBottleneckConfig::new([c128, i16, c64]).init(device),
            stage4: (0..2).map(|_| regular(c64, i16).init(device)).collect(),
            bottleneck5_0: UpsamplingBottleneckConfig::new([c64, i4, c16]).init(device),
            bottleneck5_1: regular(c16, i4).init(device),
            fullconv: conv_transpose(c16, self.classes, 2, false, device),
        }
    }
}

/// ENet: initial block, two downsampling stages, a dilated/asymmetric stage at 1/8, and two
/// upsampling stages that max-unpool with the encoder's indices.
#[derive(Module, Debug)]
pub struct Enet {
    /// One grey channel is repeated to the three the initial block expects.
    repeat_input: bool,
    initial: DownsamplerBlock,
    bottleneck1_0: Bottleneck,
    stage1: Vec<Bottleneck>,
    bottleneck2_0: Bottleneck,
    stage2: Vec<Bottleneck>,
    stage3: Vec<Bottleneck>,
    bottleneck4_0: UpsamplingBottleneck,
    stage4: Vec<Bottleneck>,
    bottleneck5_0: UpsamplingBottleneck,
    bottleneck5_1: Bottleneck,
    fullconv: ConvTranspose2d,
}

impl Segmenter for Enet {
    fn forward_aligned(&self, x: Tensor<4>) -> SegOutput {
        let x = if self.repeat_input { Tensor::cat(vec![x.clone(), x.clone(), x], 1) } else { x }; // [b, 3, h, w]
        let x = self.initial.forward(x); // [b, 16, h/2, w/2]
        let hw2 = spatial(&x);
        let (x, indices1) = self.bottleneck1_0.forward_down(x); // [b, 64, h/4, w/4]
        let x = self.stage1.iter().fold(x, |x, b| b.forward(x)); // [b, 64, h/4, w/4]
        let hw4 = spatial(&x);
        let (x, indices2) = self.bottleneck2_0.forward_down(x); // [b, 128, h/8, w/8]
        let x = self.stage2.iter().fold(x, |x, b| b.forward(x)); // [b, 128, h/8, w/8]
        let feature = self.stage3.iter().fold(x, |x, b| b.forward(x)); // [b, 128, h/8, w/8]
        let x = self.bottleneck4_0.forward(feature.clone(), indices2, hw4); // [b, 64, h/4, w/4]
        let x = self.stage4.iter().fold(x, |x, b| b.forward(x)); // [b, 64, h/4, w/4]
        let x = self.bottleneck5_0.forward(x, indices1, hw2); // [b, 16, h/2, w/2]
        let x = self.bottleneck5_1.forward(x); // [b, 16, h/2, w/2]
        let logits = self.fullconv.forward(x); // [b, classes, h, w]
        SegOutput { logits, feature }
    }

    fn total_stride(&self) -> usize {
        8
    }

    fn tap(&self) -> Tap {
        let [channels] = self.stage3.last().expect("stage 3 has blocks").bn3.gamma.shape().dims();
        Tap { name: "stage3 (bottleneck3_8)", channels, stride: 8 }
    }

    fn lower_aligned(&self, g: &mut dyn Graph, x: &Value) -> Lowered {
        let x = if self.repeat_input { g.concat(&[x.clone(), x.clone(), x.clone()]) } else { x.clone() };
        let x = self.initial.lower(g, &x); // [b, 16, h/2, w/2]
        let hw2 = x.clone();
        let (x, indices1) = self.bottleneck1_0.lower_down(g, &x); // [b, 64, h/4, w/4]
        let x = self.stage1.iter().fold(x, |x, b| b.lower(g, &x));
        let hw4 = x.clone();
        let (x, indices2) = self.bottleneck2_0.lower_down(g, &x); // [b, 128, h/8, w/8]
        let x = self.stage2.iter().fold(x, |x, b| b.lower(g, &x));
        let feature = self.stage3.iter().fold(x, |x, b| b.lower(g, &x)); // [b, 128, h/8, w/8]
        let x = self.bottleneck4_0.lower(g, &feature, &indices2, &hw4); // [b, 64, h/4, w/4]
        let x = self.stage4.iter().fold(x, |x, b| b.lower(g, &x));
        let x = self.bottleneck5_0.lower(g, &x, &indices1, &hw2); // [b, 16, h/2, w/2]
        let x = self.bottleneck5_1.lower(g, &x);
        let logits = g.conv_transpose(&x, &self.fullconv, None); // [b, classes, h, w]
        Lowered { logits, feature }
    }
}

fn spatial(x: &Tensor<4>) -> [usize; 2] {
    let [_, _, h, w] = x.dims();
    [h, w]
}

/// What the middle convolution of a bottleneck is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum BottleneckKind {
    /// 3×3.
    Regular,
    /// 3×3 with this dilation.
    Dilated(usize),
    /// 5×1 then 1×5.
    Asymmetric,
    /// 2×2 stride 2, with a max-pooled, 1×1-projected shortcut whose indices are kept.
    Downsampling,
}

#[derive(Config, Debug)]
pub struct BottleneckConfig {
    /// Input, inner and output channels.
    pub channels: [usize; 3],
    #[config(default = "BottleneckKind::Regular")]
    pub kind: BottleneckKind,
}

impl BottleneckConfig {
    pub fn init(&self, device: &Device) -> Bottleneck {
        let [cin, inner, cout] = self.channels;
        let (conv2, conv2b) = match self.kind {
            BottleneckKind::Regular => (conv_same(inner, inner, 3, 1, 1, false, device), None),
            BottleneckKind::Dilated(d) => (conv_same(inner, inner, 3, 1, d, false, device), None),
            BottleneckKind::Asymmetric => (
                conv([inner, inner], [5, 1], 1, [2, 0], [1, 1], false, device),
                Some(conv([inner, inner], [1, 5], 1, [0, 2], [1, 1], false, device)),
            ),
            BottleneckKind::Downsampling => (conv([inner, inner], [2, 2], 2, [0, 0], [1, 1], false, device), None),
        };
        let shortcut = (self.kind == BottleneckKind::Downsampling).then(|| Projection {
            conv: conv_same(cin, cout, 1, 1, 1, false, device),
            bn: batch_norm(cout, BN_EPS, device),
        });
        Bottleneck {
            conv1: conv_same(cin, inner, 1, 1, 1, false, device),
            bn1: batch_norm(inner, BN_EPS, device),
            act1: PReluConfig::new().init(device),
            conv2,
            conv2b,
            bn2: batch_norm(inner, BN_EPS, device),
            act2: PReluConfig::new().init(device),
            conv3: conv_same(inner, cout, 1, 1, 1, false, device),
            bn3: batch_norm(cout, BN_EPS, device),
            dropout: Dropout2dConfig::new(0.1).init(),
            shortcut,
            act: PReluConfig::new().init(device),
        }
    }
}

/// A 1×1 convolution and batch norm: the shortcut of a downsampling bottleneck and the
/// unpooled branch of an upsampling one.
#[derive(Module, Debug)]
pub struct Projection {
    conv: Conv2d,
    bn: BatchNorm,
}

impl Projection {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.apply(self.conv.apply(x))
    }
}

/// ENet's residual bottleneck: 1×1 reduce, middle convolution, 1×1 expand, channel dropout,
/// added to the shortcut.
#[derive(Module, Debug)]
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm,
    act1: PRelu,
    conv2: Conv2d,
    conv2b: Option<Conv2d>,
    bn2: BatchNorm,
    act2: PRelu,
    conv3: Conv2d,
    bn3: BatchNorm,
    dropout: Dropout2d,
    shortcut: Option<Projection>,
    act: PRelu,
}

impl Bottleneck {
    fn branch(&self, x: Tensor<4>) -> Tensor<4> {
        let x = prelu(self.bn1.apply(self.conv1.apply(x)), &self.act1); // [b, inner, h, w]
        let x = self.conv2.apply(x); // [b, inner, h', w']
        let x = match &self.conv2b {
            Some(conv) => conv.apply(x),
            None => x,
        };
        let x = prelu(self.bn2.apply(x), &self.act2); // [b, inner, h', w']
        self.dropout.forward(self.bn3.apply(self.conv3.apply(x))) // [b, out, h', w']
    }

    /// A non-downsampling block: `[b, c, h, w] → [b, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let branch = self.branch(x.clone());
        prelu(branch + x, &self.act)
    }

    /// A downsampling block: `[b, in, h, w] → [b, out, h/2, w/2]`, with the max-pool indices.
    pub fn forward_down(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4, Int>) {
        let projection = self.shortcut.as_ref().expect("forward_down needs a downsampling bottleneck");
        let (pooled, indices) = max_pool2x2_with_indices(x.clone()); // [b, in, h/2, w/2]
        let shortcut = projection.forward(pooled); // [b, out, h/2, w/2]
        (prelu(self.branch(x) + shortcut, &self.act), indices)
    }

    fn lower_branch(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let x = g.conv(x, &self.conv1, Some(&self.bn1));
        let x = g.prelu(&x, &self.act1);
        let x = match &self.conv2b {
            Some(second) => {
                let first = g.conv(&x, &self.conv2, None);
                g.conv(&first, second, Some(&self.bn2))
            }
            None => g.conv(&x, &self.conv2, Some(&self.bn2)),
        };
        let x = g.prelu(&x, &self.act2);
        g.conv(&x, &self.conv3, Some(&self.bn3))
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let branch = self.lower_branch(g, x);
        let sum = g.add(&branch, x);
        g.prelu(&sum, &self.act)
    }

    pub fn lower_down(&self, g: &mut dyn Graph, x: &Value) -> (Value, Value) {
        let projection = self.shortcut.as_ref().expect("lower_down needs a downsampling bottleneck");
        let (pooled, indices) = g.max_pool_2x2_with_indices(x);
        let shortcut = g.conv(&pooled, &projection.conv, Some(&projection.bn));
        let branch = self.lower_branch(g, x);
        let sum = g.add(&branch, &shortcut);
        (g.prelu(&sum, &self.act), indices)
    }
}

#[derive(Config, Debug)]
pub struct UpsamplingBottleneckConfig {
    /// Input, inner and output channels.
    pub channels: [usize; 3],
}

impl UpsamplingBottleneckConfig {
    pub fn init(&self, device: &Device) -> UpsamplingBottleneck {
        let [cin, inner, cout] = self.channels;
        UpsamplingBottleneck {
            unpool_projection: Projection {
                conv: conv_same(cin, cout, 1, 1, 1, false, device),
                bn: batch_norm(cout, BN_EPS, device),
            },
            conv1: conv_same(cin, inner, 1, 1, 1, false, device),
            bn1: batch_norm(inner, BN_EPS, device),
            act1: PReluConfig::new().init(device),
            deconv: conv_transpose(inner, inner, 2, false, device),
            bn2: batch_norm(inner, BN_EPS, device),
            act2: PReluConfig::new().init(device),
            conv3: conv_same(inner, cout, 1, 1, 1, false, device),
            bn3: batch_norm(cout, BN_EPS, device),
            dropout: Dropout2dConfig::new(0.1).init(),
            act: PReluConfig::new().init(device),
        }
    }
}

/// ENet's decoder block: a projected, max-unpooled shortcut plus a transposed-convolution
/// branch.
#[derive(Module, Debug)]
pub struct UpsamplingBottleneck {
    unpool_projection: Projection,
    conv1: Conv2d,
    bn1: BatchNorm,
    act1: PRelu,
    deconv: ConvTranspose2d,
    bn2: BatchNorm,
    act2: PRelu,
    conv3: Conv2d,
    bn3: BatchNorm,
    dropout: Dropout2d,
    act: PRelu,
}

impl UpsamplingBottleneck {
    /// `[b, in, h, w] → [b, out, 2h, 2w]`, unpooling with the matching encoder indices.
    pub fn forward(&self, x: Tensor<4>, indices: Tensor<4, Int>, output_hw: [usize; 2]) -> Tensor<4> {
        let up = self.unpool_projection.forward(x.clone()); // [b, out, h, w]
        let up = max_unpool2d(up, indices, output_hw); // [b, out, 2h, 2w]
        let ext = prelu(self.bn1.apply(self.conv1.apply(x)), &self.act1); // [b, inner, h, w]
        let ext = prelu(self.bn2.apply(self.deconv.forward(ext)), &self.act2); // [b, inner, 2h, 2w]
        let ext = self.dropout.forward(self.bn3.apply(self.conv3.apply(ext))); // [b, out, 2h, 2w]
        prelu(up + ext, &self.act)
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value, indices: &Value, like: &Value) -> Value {
        let p = &self.unpool_projection;
        let up = g.conv(x, &p.conv, Some(&p.bn));
        let up = g.max_unpool_2x2(&up, indices, like);
        let ext = g.conv(x, &self.conv1, Some(&self.bn1));
        let ext = g.prelu(&ext, &self.act1);
        let ext = g.conv_transpose(&ext, &self.deconv, Some(&self.bn2));
        let ext = g.prelu(&ext, &self.act2);
        let ext = g.conv(&ext, &self.conv3, Some(&self.bn3));
        let sum = g.add(&up, &ext);
        g.prelu(&sum, &self.act)
    }
}
