//! Multiply-accumulates of a network, counted from its lowering: [`MacGraph`] is a
//! [`Graph`] that follows spatial sizes through the operations a network lowers itself onto
//! and adds up its convolutions, so the count comes from the one description of the network
//! that export uses too, never from a hand-written twin.
//!
//! Convention (stated wherever figures are shown): GFLOPs = 2 × MACs / 10⁹, counting the
//! multiply-accumulates of convolutions and transposed convolutions at the given input size.
//! Normalisation, activations, pooling, additions and resizes are not counted, which is how
//! the usual counters (thop, ptflops) report the networks of the paper's Table 1.

use std::collections::HashMap;

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, PRelu, PaddingConfig2d};

use crate::lower::{Graph, Value};

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

/// A [`Graph`] that tracks each value's height and width and counts convolution MACs.
#[derive(Debug, Default)]
pub struct MacGraph {
    sizes: HashMap<Value, [usize; 2]>,
    pub counter: MacCounter,
}

impl MacGraph {
    /// The graph's input, of `hw`.
    pub fn input(&mut self, hw: [usize; 2]) -> Value {
        self.value(hw)
    }

    fn value(&mut self, hw: [usize; 2]) -> Value {
        let v = Value(format!("v{}", self.sizes.len()));
        self.sizes.insert(v.clone(), hw);
        v
    }

    fn size(&self, v: &Value) -> [usize; 2] {
        self.sizes[v]
    }

    /// A value of the same size as `x`.
    fn same(&mut self, x: &Value) -> Value {
        let hw = self.size(x);
        self.value(hw)
    }
}

impl Graph for MacGraph {
    fn conv(&mut self, x: &Value, conv: &Conv2d, _bn: Option<&BatchNorm>) -> Value {
        let hw = self.counter.conv(conv, self.size(x));
        self.value(hw)
    }

    fn conv_transpose(&mut self, x: &Value, conv: &ConvTranspose2d, _bn: Option<&BatchNorm>) -> Value {
        let hw = self.counter.conv_transpose(conv, self.size(x));
        self.value(hw)
    }

    fn batch_norm(&mut self, x: &Value, _bn: &BatchNorm) -> Value {
        self.same(x)
    }

    fn relu(&mut self, x: &Value) -> Value {
        self.same(x)
    }

    fn prelu(&mut self, x: &Value, _prelu: &PRelu) -> Value {
        self.same(x)
    }

    fn add(&mut self, a: &Value, _b: &Value) -> Value {
        self.same(a)
    }

    fn concat(&mut self, xs: &[Value]) -> Value {
        self.same(&xs[0])
    }

    fn max_pool_2x2(&mut self, x: &Value) -> Value {
        let [h, w] = self.size(x);
        self.value([h / 2, w / 2])
    }

    fn max_pool_2x2_with_indices(&mut self, x: &Value) -> (Value, Value) {
        let pooled = self.max_pool_2x2(x);
        let indices = self.same(&pooled);
        (pooled, indices)
    }

    fn max_unpool_2x2(&mut self, _x: &Value, _indices: &Value, like: &Value) -> Value {
        self.same(like)
    }

    fn avg_pool(&mut self, x: &Value, k: usize, stride: usize, pad: usize) -> Value {
        let [h, w] = self.size(x);
        let out = |n: usize| (n + 2 * pad - k) / stride + 1;
        self.value([out(h), out(w)])
    }

    fn global_avg_pool(&mut self, _x: &Value) -> Value {
        self.value([1, 1])
    }

    fn resize_bilinear_like(&mut self, _x: &Value, like: &Value) -> Value {
        self.same(like)
    }

    fn resize_bilinear_by(&mut self, x: &Value, factor: usize) -> Value {
        let [h, w] = self.size(x);
        self.value([h * factor, w * factor])
    }
}
