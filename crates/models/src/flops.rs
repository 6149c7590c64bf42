//! An analytic multiply-accumulate counter.
//!
//! Convention (stated wherever figures are shown): GFLOPs = 2 × MACs / 10⁹, counting the
//! multiply-accumulates of convolutions and transposed convolutions at the given input size.
//! Normalisation, activations, pooling, additions and resizes are not counted, which is how
//! the usual counters (thop, ptflops) report the networks of the paper's Table 1.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};

/// Running total of multiply-accumulates along a network's forward path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MacCounter {
    pub macs: u64,
}

impl MacCounter {
    /// Adds one convolution applied to an `hw` map and returns its output size.
    pub fn conv(&mut self, conv: &Conv2d, [h, w]: [usize; 2]) -> [usize; 2] {
        let [cout, cin_per_group, kh, kw] = conv.weight.shape().dims();
        let (top, left, bottom, right) = match conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
            PaddingConfig2d::Valid => (0, 0, 0, 0),
            PaddingConfig2d::Same => {
                let (ph, pw) = ((kh - 1) * conv.dilation[0], (kw - 1) * conv.dilation[1]);
                (ph / 2, pw / 2, ph - ph / 2, pw - pw / 2)
            }
        };
        let out = |size: usize, k: usize, pad: usize, d: usize, s: usize| (size + pad - d * (k - 1) - 1) / s + 1;
        let oh = out(h, kh, top + bottom, conv.dilation[0], conv.stride[0]);
        let ow = out(w, kw, left + right, conv.dilation[1], conv.stride[1]);
        self.macs += (oh * ow * cout * cin_per_group * kh * kw) as u64;
        [oh, ow]
    }

    /// Adds one transposed convolution applied to an `hw` map and returns its output size.
    pub fn conv_transpose(&mut self, conv: &ConvTranspose2d, [h, w]: [usize; 2]) -> [usize; 2] {
        let [cin, cout_per_group, kh, kw] = conv.weight.shape().dims();
        // Every input pixel scatters one kernel into the output.
        self.macs += (h * w * cin * cout_per_group * kh * kw) as u64;
        let out = |size: usize, k: usize, i: usize| {
            (size - 1) * conv.stride[i] + conv.dilation[i] * (k - 1) + conv.padding_out[i] + 1 - 2 * conv.padding[i]
        };
        [out(h, kh, 0), out(w, kw, 1)]
    }

    /// 2 × MACs, in units of 10⁹.
    pub fn gflops(&self) -> f64 {
        2.0 * self.macs as f64 / 1e9
    }
}
