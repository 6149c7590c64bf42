//! ERFNet (Romera et al., 2017), the largest student.
//!
//! Live parameters at the paper's width with one input channel and two classes:
//! **2,062,872**. The reference count (EMKD `networks/ERFNet.py`) is 2,063,130; the
//! difference, 258, is the encoder's `output_conv` (128 → classes, 1×1), used only when the
//! encoder is trained alone and never in the segmentation forward pass, so it is not built.
//!
//! Shapes are for an input `[b, c_in, h, w]` with `h`, `w` multiples of 8.

use crate::cpu::{BatchNormApply, Conv2dApply};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, Relu};
use burn::tensor::{Device, Tensor};

use crate::layers::{
    Activation, DownsamplerBlock, Dropout2d, Dropout2dConfig, batch_norm, conv, conv_transpose, scaled,
};
use crate::lower::{Graph, Lowered, Value};
use crate::{SegOutput, Segmenter, Tap};

const BN_EPS: f64 = 1e-3;

#[derive(Config, Debug)]
pub struct ErfnetConfig {
    #[config(default = 1)]
    pub in_channels: usize,
    #[config(default = 2)]
    pub classes: usize,
    /// Channel multiplier; 1.0 is the paper's network.
    #[config(default = 1.0)]
    pub width: f64,
}

impl ErfnetConfig {
    /// The network of the paper: one input channel, two classes, full width.
    pub fn paper() -> Self {
        Self::new()
    }

    pub fn init(&self, device: &Device) -> Erfnet {
        let w = |c| scaled(c, self.width);
        // The initial block concatenates the pooled input, so it needs at least one more channel.
        let (c16, c64, c128) = (w(16).max(self.in_channels + 1), w(64), w(128));
        let nb = |c, dropout, dilation| NonBottleneck1dConfig::new(c, dilation).with_dropout(dropout).init(device);
        Erfnet {
            initial_block: downsampler(self.in_channels, c16, device),
            down1: downsampler(c16, c64, device),
            stage1: (0..5).map(|_| nb(c64, 0.03, 1)).collect(),
            down2: downsampler(c64, c128, device),
            stage2: (0..2).flat_map(|_| [2, 4, 8, 16]).map(|d| nb(c128, 0.3, d)).collect(),
            up1: UpsamplerBlockConfig::new(c128, c64).init(device),
            decoder1: (0..2).map(|_| nb(c64, 0.0, 1)).collect(),
            up2: UpsamplerBlockConfig::new(c64, c16).init(device),
            decoder2: (0..2).map(|_| nb(c16, 0.0, 1)).collect(),
            output_conv: conv_transpose(c16, self.classes, 2, true, device),
        }
    }
}

fn downsampler(cin: usize, cout: usize, device: &Device) -> DownsamplerBlock {
    DownsamplerBlock::new(cin, cout, true, BN_EPS, Activation::Relu(Relu::new()), device)
}

/// ERFNet: an encoder of factorised (3×1, 1×3) residual blocks with growing dilation down to
/// 1/8, and a light decoder of transposed convolutions.
#[derive(Module, Debug)]
pub struct Erfnet {
    initial_block: DownsamplerBlock,
    down1: DownsamplerBlock,
    stage1: Vec<NonBottleneck1d>,
    down2: DownsamplerBlock,
    stage2: Vec<NonBottleneck1d>,
    up1: UpsamplerBlock,
    decoder1: Vec<NonBottleneck1d>,
    up2: UpsamplerBlock,
    decoder2: Vec<NonBottleneck1d>,
    output_conv: ConvTranspose2d,
}

impl Segmenter for Erfnet {
    fn forward_aligned(&self, x: Tensor<4>) -> SegOutput {
        let x = self.initial_block.forward(x); // [b, 16, h/2, w/2]
        let x = self.down1.forward(x); // [b, 64, h/4, w/4]
        let x = self.stage1.iter().fold(x, |x, b| b.forward(x)); // [b, 64, h/4, w/4]
        let x = self.down2.forward(x); // [b, 128, h/8, w/8]
        let feature = self.stage2.iter().fold(x, |x, b| b.forward(x)); // [b, 128, h/8, w/8]
        let x = self.up1.forward(feature.clone()); // [b, 64, h/4, w/4]
        let x = self.decoder1.iter().fold(x, |x, b| b.forward(x)); // [b, 64, h/4, w/4]
        let x = self.up2.forward(x); // [b, 16, h/2, w/2]
        let x = self.decoder2.iter().fold(x, |x, b| b.forward(x)); // [b, 16, h/2, w/2]
        let logits = self.output_conv.forward(x); // [b, classes, h, w]
        SegOutput { logits, feature }
    }

    fn total_stride(&self) -> usize {
        8
    }

    fn tap(&self) -> Tap {
        let [channels] = self.down2.bn.gamma.shape().dims();
        Tap { name: "encoder output", channels, stride: 8 }
    }

    fn lower_aligned(&self, g: &mut dyn Graph, x: &Value) -> Lowered {
        let x = self.initial_block.lower(g, x); // [b, 16, h/2, w/2]
        let x = self.down1.lower(g, &x); // [b, 64, h/4, w/4]
        let x = self.stage1.iter().fold(x, |x, b| b.lower(g, &x));
        let x = self.down2.lower(g, &x); // [b, 128, h/8, w/8]
        let feature = self.stage2.iter().fold(x, |x, b| b.lower(g, &x)); // [b, 128, h/8, w/8]
        let x = self.up1.lower(g, &feature); // [b, 64, h/4, w/4]
        let x = self.decoder1.iter().fold(x, |x, b| b.lower(g, &x));
        let x = self.up2.lower(g, &x); // [b, 16, h/2, w/2]
        let x = self.decoder2.iter().fold(x, |x, b| b.lower(g, &x));
        let logits = g.conv_transpose(&x, &self.output_conv, None); // [b, classes, h, w]
        Lowered { logits, feature }
    }
}

#[derive(Config, Debug)]
pub struct NonBottleneck1dConfig {
    pub channels: usize,
    pub dilation: usize,
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl NonBottleneck1dConfig {
    pub fn init(&self, device: &Device) -> NonBottleneck1d {
        let (c, d) = (self.channels, self.dilation);
        NonBottleneck1d {
            conv3x1_1: conv([c, c], [3, 1], 1, [1, 0], [1, 1], true, device),
            conv1x3_1: conv([c, c], [1, 3], 1, [0, 1], [1, 1], true, device),
            bn1: batch_norm(c, BN_EPS, device),
            conv3x1_2: conv([c, c], [3, 1], 1, [d, 0], [d, 1], true, device),
            conv1x3_2: conv([c, c], [1, 3], 1, [0, d], [1, d], true, device),
            bn2: batch_norm(c, BN_EPS, device),
            dropout: Dropout2dConfig::new(self.dropout).init(),
            relu: Relu::new(),
        }
    }
}

/// The factorised residual block: (3×1, 1×3) twice, the second pair dilated.
#[derive(Module, Debug)]
pub struct NonBottleneck1d {
    conv3x1_1: Conv2d,
    conv1x3_1: Conv2d,
    bn1: BatchNorm,
    conv3x1_2: Conv2d,
    conv1x3_2: Conv2d,
    bn2: BatchNorm,
    dropout: Dropout2d,
    relu: Relu,
}

impl NonBottleneck1d {
    /// `[b, c, h, w] → [b, c, h, w]`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = self.relu.forward(self.conv3x1_1.apply(input.clone()));
        let x = self.relu.forward(self.bn1.apply(self.conv1x3_1.apply(x)));
        let x = self.relu.forward(self.conv3x1_2.apply(x));
        let x = self.dropout.forward(self.bn2.apply(self.conv1x3_2.apply(x)));
        self.relu.forward(x + input)
    }

    pub fn lower(&self, g: &mut dyn Graph, input: &Value) -> Value {
        let x = g.conv(input, &self.conv3x1_1, None);
        let x = g.relu(&x);
        let x = g.conv(&x, &self.conv1x3_1, Some(&self.bn1));
        let x = g.relu(&x);
        let x = g.conv(&x, &self.conv3x1_2, None);
        let x = g.relu(&x);
        let x = g.conv(&x, &self.conv1x3_2, Some(&self.bn2));
        let sum = g.add(&x, input);
        g.relu(&sum)
    }
}

#[derive(Config, Debug)]
pub struct UpsamplerBlockConfig {
    pub in_channels: usize,
    pub out_channels: usize,
}

impl UpsamplerBlockConfig {
    pub fn init(&self, device: &Device) -> UpsamplerBlock {
        UpsamplerBlock {
            conv: ConvTranspose2dConfig::new([self.in_channels, self.out_channels], [3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_padding_out([1, 1])
                .init(device),
            bn: batch_norm(self.out_channels, BN_EPS, device),
            relu: Relu::new(),
        }
    }
}

/// A 3×3 stride-2 transposed convolution, normalised: doubles the resolution.
#[derive(Module, Debug)]
pub struct UpsamplerBlock {
    conv: ConvTranspose2d,
    bn: BatchNorm,
    relu: Relu,
}

impl UpsamplerBlock {
    /// `[b, in, h, w] → [b, out, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.relu.forward(self.bn.apply(self.conv.forward(x)))
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let x = g.conv_transpose(x, &self.conv, Some(&self.bn));
        g.relu(&x)
    }
}
