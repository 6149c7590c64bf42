//! ESPNet (Mehta et al., 2018) with p = 2, q = 3, the student with the fewest parameters.
//!
//! Live parameters at the paper's width with one input channel and two classes: **183,725**,
//! exactly the reference count (EMKD `networks/ESPNet.py`): every layer it builds runs.
//!
//! Shapes are for an input `[b, c_in, h, w]` with `h`, `w` multiples of 8; `c3` is the
//! channels after repeating a grey input to three.

use crate::cpu::{BatchNormApply, Conv2dApply};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, PRelu, PReluConfig};
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;
use burn::tensor::{Device, Tensor};

use crate::layers::{batch_norm, conv_same, conv_transpose, prelu, scaled};
use crate::lower::{Graph, Lowered, Value};
use crate::{SegOutput, Segmenter, Tap};

const BN_EPS: f64 = 1e-3;

#[derive(Config, Debug)]
pub struct EspnetConfig {
    #[config(default = 1)]
    pub in_channels: usize,
    #[config(default = 2)]
    pub classes: usize,
    /// Channel multiplier; 1.0 is the paper's network.
    #[config(default = 1.0)]
    pub width: f64,
    /// ESP blocks at 1/4 resolution.
    #[config(default = 2)]
    pub p: usize,
    /// ESP blocks at 1/8 resolution.
    #[config(default = 3)]
    pub q: usize,
}

impl EspnetConfig {
    /// The network of the paper: p = 2, q = 3, one input channel, two classes, full width.
    pub fn paper() -> Self {
        Self::new()
    }

    pub fn init(&self, device: &Device) -> Espnet {
        let w = |c| scaled(c, self.width);
        let (c16, c64, c128) = (w(16), w(64), w(128));
        let c3 = if self.in_channels == 1 { 3 } else { self.in_channels };
        let k = self.classes;
        // The reference fixes the merged decoder block at five channels, independent of width.
        const DECODER_ESP: usize = 5;
        Espnet {
            repeat_input: self.in_channels == 1,
            level1: Cbr::new(c3, c16, 3, 2, device),
            b1: Br::new(c16 + c3, device),
            level2_0: EspBlockConfig::new(c16 + c3, c64).with_downsample(true).init(device),
            level2: (0..self.p).map(|_| EspBlockConfig::new(c64, c64).with_residual(true).init(device)).collect(),
            b2: Br::new(2 * c64 + c3, device),
            level3_0: EspBlockConfig::new(2 * c64 + c3, c128).with_downsample(true).init(device),
            level3: (0..self.q).map(|_| EspBlockConfig::new(c128, c128).with_residual(true).init(device)).collect(),
            b3: Br::new(2 * c128, device),
            classifier: conv_same(2 * c128, k, 1, 1, 1, false, device),
            br: batch_norm(k, BN_EPS, device),
            up_l3: conv_transpose(k, k, 2, false, device),
            level3_c: conv_same(2 * c64 + c3, k, 1, 1, 1, false, device),
            combine_br: Br::new(2 * k, device),
            combine_esp: EspBlockConfig::new(2 * k, DECODER_ESP).init(device),
            up_l2: conv_transpose(DECODER_ESP, k, 2, false, device),
            up_l2_br: Br::new(k, device),
            conv: Cbr::new(c16 + c3 + k, k, 3, 1, device),
            final_up: conv_transpose(k, k, 2, false, device),
        }
    }
}

/// ESPNet: efficient spatial pyramid blocks (a 1×1 reduction split into five dilated 3×3
/// branches merged hierarchically) with input reinforcement, and a light decoder.
#[derive(Module, Debug)]
pub struct Espnet {
    repeat_input: bool,
    level1: Cbr,
    b1: Br,
    level2_0: EspBlock,
    level2: Vec<EspBlock>,
    b2: Br,
    level3_0: EspBlock,
    level3: Vec<EspBlock>,
    b3: Br,
    classifier: Conv2d,
    br: BatchNorm,
    up_l3: ConvTranspose2d,
    level3_c: Conv2d,
    combine_br: Br,
    combine_esp: EspBlock,
    up_l2: ConvTranspose2d,
    up_l2_br: Br,
    conv: Cbr,
    final_up: ConvTranspose2d,
}

/// The input-reinforcement pyramid: 3×3 stride-2 average pooling, padding counted.
fn halve(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(
        x,
        AvgPoolOptions {
            kernel_size: [3, 3],
            stride: [2, 2],
            padding: [(1, 1); 2],
            count_include_pad: true,
            ceil_mode: false,
        },
    )
}

impl Segmenter for Espnet {
    fn forward_aligned(&self, x: Tensor<4>) -> SegOutput {
        let input = if self.repeat_input { Tensor::cat(vec![x.clone(), x.clone(), x], 1) } else { x }; // [b, c3, h, w]
        let output0 = self.level1.forward(input.clone()); // [b, 16, h/2, w/2]
        let inp1 = halve(input); // [b, c3, h/2, w/2]
        let inp2 = halve(inp1.clone()); // [b, c3, h/4, w/4]
        let output0_cat = self.b1.forward(Tensor::cat(vec![output0, inp1], 1)); // [b, 16 + c3, h/2, w/2]
        let output1_0 = self.level2_0.forward(output0_cat.clone()); // [b, 64, h/4, w/4]
        let output1 = self.level2.iter().fold(output1_0.clone(), |x, b| b.forward(x)); // [b, 64, h/4, w/4]
        let output1_cat = self.b2.forward(Tensor::cat(vec![output1, output1_0, inp2], 1)); // [b, 128 + c3, h/4, w/4]
        let output2_0 = self.level3_0.forward(output1_cat.clone()); // [b, 128, h/8, w/8]
        let output2 = self.level3.iter().fold(output2_0.clone(), |x, b| b.forward(x)); // [b, 128, h/8, w/8]
        let feature = self.b3.forward(Tensor::cat(vec![output2_0, output2], 1)); // [b, 256, h/8, w/8]

        // Decoder: project to classes at 1/8 and 1/4, merge, refine with the 1/2 features.
        let output2_c = self.up_l3.forward(self.br.apply(self.classifier.apply(feature.clone()))); // [b, k, h/4, w/4]
        let output1_c = self.level3_c.apply(output1_cat); // [b, k, h/4, w/4]
        let merged = self.combine_esp.forward(self.combine_br.forward(Tensor::cat(vec![output1_c, output2_c], 1))); // [b, 5, h/4, w/4]
        let comb_l2_l3 = self.up_l2_br.forward(self.up_l2.forward(merged)); // [b, k, h/2, w/2]
        let concat = self.conv.forward(Tensor::cat(vec![comb_l2_l3, output0_cat], 1)); // [b, k, h/2, w/2]
        let logits = self.final_up.forward(concat); // [b, k, h, w]
        SegOutput { logits, feature }
    }

    fn total_stride(&self) -> usize {
        8
    }

    fn tap(&self) -> Tap {
        let [channels] = self.b3.bn.gamma.shape().dims();
        Tap { name: "output2_cat", channels, stride: 8 }
    }

    fn lower_aligned(&self, g: &mut dyn Graph, x: &Value) -> Lowered {
        let input = if self.repeat_input { g.concat(&[x.clone(), x.clone(), x.clone()]) } else { x.clone() };
        let output0 = self.level1.lower(g, &input); // [b, 16, h/2, w/2]
        let inp1 = g.avg_pool(&input, 3, 2, 1); // [b, c3, h/2, w/2]
        let inp2 = g.avg_pool(&inp1, 3, 2, 1); // [b, c3, h/4, w/4]
        let cat = g.concat(&[output0, inp1]);
        let output0_cat = self.b1.lower(g, &cat); // [b, 16 + c3, h/2, w/2]
        let output1_0 = self.level2_0.lower(g, &output0_cat); // [b, 64, h/4, w/4]
        let output1 = self.level2.iter().fold(output1_0.clone(), |x, b| b.lower(g, &x));
        let cat = g.concat(&[output1, output1_0, inp2]);
        let output1_cat = self.b2.lower(g, &cat); // [b, 128 + c3, h/4, w/4]
        let output2_0 = self.level3_0.lower(g, &output1_cat); // [b, 128, h/8, w/8]
        let output2 = self.level3.iter().fold(output2_0.clone(), |x, b| b.lower(g, &x));
        let cat = g.concat(&[output2_0, output2]);
        let feature = self.b3.lower(g, &cat); // [b, 256, h/8, w/8]

        let classes = g.conv(&feature, &self.classifier, Some(&self.br));
        let output2_c = g.conv_transpose(&classes, &self.up_l3, None); // [b, k, h/4, w/4]
        let output1_c = g.conv(&output1_cat, &self.level3_c, None); // [b, k, h/4, w/4]
        let cat = g.concat(&[output1_c, output2_c]);
        let merged = self.combine_br.lower(g, &cat);
        let merged = self.combine_esp.lower(g, &merged); // [b, 5, h/4, w/4]
        let up = g.conv_transpose(&merged, &self.up_l2, Some(&self.up_l2_br.bn));
        let comb_l2_l3 = g.prelu(&up, &self.up_l2_br.act); // [b, k, h/2, w/2]
        let cat = g.concat(&[comb_l2_l3, output0_cat]);
        let concat = self.conv.lower(g, &cat); // [b, k, h/2, w/2]
        let logits = g.conv_transpose(&concat, &self.final_up, None); // [b, k, h, w]
        Lowered { logits, feature }
    }
}

/// Batch norm then a per-channel PReLU.
#[derive(Module, Debug)]
pub struct Br {
    bn: BatchNorm,
    act: PRelu,
}

impl Br {
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            bn: batch_norm(channels, BN_EPS, device),
            act: PReluConfig::new().with_num_parameters(channels).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        prelu(self.bn.apply(x), &self.act)
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let x = g.batch_norm(x, &self.bn);
        g.prelu(&x, &self.act)
    }
}

/// Convolution (no bias), batch norm, per-channel PReLU.
#[derive(Module, Debug)]
pub struct Cbr {
    conv: Conv2d,
    br: Br,
}

impl Cbr {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Self {
        Self { conv: conv_same(cin, cout, k, stride, 1, false, device), br: Br::new(cout, device) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.br.forward(self.conv.apply(x))
    }

    pub fn lower(&self, g: &mut dyn Graph, x: &Value) -> Value {
        let x = g.conv(x, &self.conv, Some(&self.br.bn));
        g.prelu(&x, &self.br.act)
    }
}

#[derive(Config, Debug)]
pub struct EspBlockConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Reduce with a 3×3 stride-2 convolution instead of 1×1 (the paper's "DownSamplerB").
    #[config(default = false)]
    pub downsample: bool,
    /// Add the input to the merged branches (needs equal channels).
    #[config(default = false)]
    pub residual: bool,
}

impl EspBlockConfig {
    pub fn init(&self, device: &Device) -> EspBlock {
        // Five branches: four of n channels and the undilated one takes the remainder.
        assert!(self.out_channels >= 5, "an ESP block needs at least 5 output channels (raise the width)");
        let n = self.out_channels / 5;
        let n1 = self.out_channels - 4 * n;
        let reduce = if self.downsample {
            conv_same(self.in_channels, n, 3, 2, 1, false, device)
        } else {
            conv_same(self.in_channels, n, 1, 1, 1, false, device)
        };
        EspBlock {
            reduce,
            d1: conv_same(n, n1, 3, 1, 1, false, device),
            d2: conv_same(n, n, 3, 1, 2, false, device),
            d4: conv_same(n, n, 3, 1, 4, false, device),
            d8: conv_same(n, n, 3, 1, 8, false, device),
            d16: conv_same(n, n, 3, 1, 16, false, device),
            br: Br::new(self.out_channels, device),
            residual: self.residual,
        }
    }
}

/// Reduce → split into dilations 1, 2, 4, 8, 16 → hierarchical feature fusion → merge.
#[derive(Module, Debug)]
pub struct EspBlock {
    reduce: Conv2d,
    d1: Conv2d,
    d2: Conv2d,
    d4: Conv2d,
    d8: Conv2d,
    d16: Conv2d,
    br: Br,
    residual: bool,
}

impl EspBlock {
    /// `[b, in, h, w] → [b, out, h', w']` (h' = h/2 when downsampling).
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = self.reduce.apply(input.clone()); // [b, n, h', w']
        // Hierarchical fusion: each wider branch adds the narrower ones, against gridding.
        let add1 = self.d2.apply(x.clone());
        let add2 = add1.clone() + self.d4.apply(x.clone());
        let add3 = add2.clone() + self.d8.apply(x.clone());
        let add4 = add3.clone() + self.d16.apply(x.clone());
        let merged = Tensor::cat(vec![self.d1.apply(x), add1, add2, add3, add4], 1); // [b, out, h', w']
        let merged = if self.residual { merged + input } else { merged };
        self.br.forward(merged)
    }

    pub fn lower(&self, g: &mut dyn Graph, input: &Value) -> Value {
        let x = g.conv(input, &self.reduce, None);
        let add1 = g.conv(&x, &self.d2, None);
        let d4 = g.conv(&x, &self.d4, None);
        let add2 = g.add(&add1, &d4);
        let d8 = g.conv(&x, &self.d8, None);
        let add3 = g.add(&add2, &d8);
        let d16 = g.conv(&x, &self.d16, None);
        let add4 = g.add(&add3, &d16);
        let d1 = g.conv(&x, &self.d1, None);
        let merged = g.concat(&[d1, add1, add2, add3, add4]);
        let merged = if self.residual { g.add(&merged, input) } else { merged };
        self.br.lower(g, &merged)
    }
}
