//! The operators with spatial meaning: padding, convolutions and pooling (which add their
//! multiply-accumulates), unpooling, resizing, reductions and matrix products.

use super::node::Node;
use super::{GraphError, Known, attr, attr_int, attr_ints, axis, broadcast};

impl Node<'_> {
    /// `Shape`, with its optional `start` and `end` (negative counts from the end).
    pub(super) fn shape_of(&self) -> Result<Known, GraphError> {
        let s = self.dims(0)?;
        let r = s.len();
        let (start, end) = (attr_int(self.node, "start", 0), attr_int(self.node, "end", r as i64));
        let (start, end) = (axis(start, r).min(r), axis(end, r).min(r));
        Ok(Known::Ints(s[start..end.max(start)].to_vec()))
    }

    pub(super) fn range(&self) -> Result<Known, GraphError> {
        let (start, limit, delta) = (self.ints(0)?[0], self.ints(1)?[0], self.ints(2)?[0]);
        let n = if delta == 0 { 0 } else { ((limit - start) as f64 / delta as f64).ceil().max(0.0) as i64 };
        Ok(Known::Ints((0..n).map(|i| start + i * delta).collect()))
    }

    /// `Pad`: pads as an input (or an attribute before opset 11), optionally on some axes.
    pub(super) fn pad(&self) -> Result<Known, GraphError> {
        let s = self.dims(0)?;
        let r = s.len();
        let pads = self.ints_input_or_attr(1, "pads")?.ok_or_else(|| self.unsupported("pads"))?;
        let axes: Vec<usize> = match self.has(3) {
            true => self.ints(3)?.iter().map(|&a| axis(a, r)).collect(),
            false => (0..r).collect(),
        };
        let mut out = s.clone();
        for (k, &a) in axes.iter().enumerate() {
            out[a] += pads[k] + pads[axes.len() + k];
        }
        Ok(Known::Shape(out))
    }

    /// `MaxUnpool`: the given output shape, or the one its kernel, strides and pads imply.
    pub(super) fn max_unpool(&self) -> Result<Known, GraphError> {
        if self.has(2) {
            return Ok(Known::Shape(self.ints(2)?));
        }
        let s = self.dims(0)?;
        let kernel = attr_ints(self.node, "kernel_shape").ok_or_else(|| self.unsupported("kernel_shape"))?;
        let n = kernel.len();
        let strides = attr_ints(self.node, "strides").unwrap_or(vec![1; n]);
        let pads = attr_ints(self.node, "pads").unwrap_or(vec![0; 2 * n]);
        let mut out = s[..2].to_vec();
        out.extend((0..n).map(|i| (s[2 + i] - 1) * strides[i] + kernel[i] - pads[i] - pads[n + i]));
        Ok(Known::Shape(out))
    }

    pub(super) fn global_pool(&self) -> Result<Known, GraphError> {
        let s = self.dims(0)?;
        Ok(Known::Shape(s.iter().enumerate().map(|(i, &d)| if i < 2 { d } else { 1 }).collect()))
    }

    pub(super) fn depth_to_space(&self) -> Result<Known, GraphError> {
        let (s, b) = (self.dims(0)?, attr_int(self.node, "blocksize", 1));
        Ok(Known::Shape(match self.op() {
            "DepthToSpace" => vec![s[0], s[1] / (b * b), s[2] * b, s[3] * b],
            _ => vec![s[0], s[1] * b * b, s[2] / b, s[3] / b],
        }))
    }

    pub(super) fn reduce(&self) -> Result<Known, GraphError> {
        let s = self.dims(0)?;
        let axes: Vec<usize> = match self.op() {
            "ArgMax" | "ArgMin" => vec![attr_int(self.node, "axis", 0)],
            _ => self.ints_input_or_attr(1, "axes")?.unwrap_or_else(|| (0..s.len() as i64).collect()),
        }
        .iter()
        .map(|&a| axis(a, s.len()))
        .collect();
        let keep = attr_int(self.node, "keepdims", 1) == 1;
        Ok(Known::Shape(
            s.iter()
                .enumerate()
                .filter_map(|(i, &d)| match axes.contains(&i) {
                    false => Some(d),
                    true => keep.then_some(1),
                })
                .collect(),
        ))
    }

    pub(super) fn matmul(&self, macs: &mut i64) -> Result<Known, GraphError> {
        let (mut a, mut b) = (self.dims(0)?, self.dims(1)?);
        if self.op() == "Gemm" {
            if attr_int(self.node, "transA", 0) == 1 {
                a.reverse();
            }
            if attr_int(self.node, "transB", 0) == 1 {
                b.reverse();
            }
        }
        let (a_vector, b_vector) = (a.len() == 1, b.len() == 1);
        if a_vector {
            a.insert(0, 1);
        }
        if b_vector {
            b.push(1);
        }
        let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], b[b.len() - 1]);
        let mut out = broadcast(&[a[..a.len() - 2].to_vec(), b[..b.len() - 2].to_vec()]);
        *macs += out.iter().product::<i64>() * m * k * n;
        if !a_vector {
            out.push(m);
        }
        if !b_vector {
            out.push(n);
        }
        Ok(Known::Shape(out))
    }

    pub(super) fn resize(&self) -> Result<Known, GraphError> {
        let s = self.dims(0)?;
        // Resize: X, roi, scales, sizes; Upsample: X, scales.
        let (scales_at, sizes_at) = if self.op() == "Upsample" { (1, usize::MAX) } else { (2, 3) };
        if self.has(sizes_at) {
            let sizes = self.ints(sizes_at)?;
            // With `axes` (opset 18) sizes name only those axes.
            return Ok(Known::Shape(match attr_ints(self.node, "axes") {
                Some(axes) => {
                    let mut out = s.clone();
                    for (&a, &d) in axes.iter().zip(&sizes) {
                        out[axis(a, s.len())] = d;
                    }
                    out
                }
                None => sizes,
            }));
        }
        let scales = match self.get(scales_at)?.numbers() {
            Some(v) => v,
            None => attr(self.node, "scales")
                .map(|a| a.floats.iter().map(|&f| f as f64).collect())
                .ok_or_else(|| self.unsupported("scales"))?,
        };
        Ok(Known::Shape(s.iter().zip(&scales).map(|(&d, &f)| (d as f64 * f).floor() as i64).collect()))
    }

    /// Convolutions and pooling: the output's spatial size from kernel, strides, dilations
    /// and pads; convolutions add their MACs.
    pub(super) fn windowed(&self, macs: &mut i64) -> Result<Vec<Known>, GraphError> {
        let s = self.dims(0)?;
        let n = s.len() - 2;
        let kernel = match self.op() {
            "Conv" | "ConvTranspose" => {
                let w = self.dims(1)?;
                attr_ints(self.node, "kernel_shape").unwrap_or_else(|| w[2..].to_vec())
            }
            _ => attr_ints(self.node, "kernel_shape").ok_or_else(|| self.unsupported("kernel_shape"))?,
        };
        let strides = attr_ints(self.node, "strides").unwrap_or(vec![1; n]);
        let dilations = attr_ints(self.node, "dilations").unwrap_or(vec![1; n]);
        let pads = attr_ints(self.node, "pads").unwrap_or(vec![0; 2 * n]);
        let auto_pad = attr(self.node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).into_owned());
        let same = auto_pad.as_deref().is_some_and(|p| p.starts_with("SAME"));
        let ceil_mode = attr_int(self.node, "ceil_mode", 0) == 1;
        let transposed = self.op() == "ConvTranspose";
        let output_padding = attr_ints(self.node, "output_padding").unwrap_or(vec![0; n]);
        let spatial: Vec<i64> = (0..n)
            .map(|i| {
                let span = dilations[i] * (kernel[i] - 1) + 1;
                let (size, stride) = (s[2 + i], strides[i]);
                match (transposed, same) {
                    (true, true) => size * stride,
                    (true, false) => stride * (size - 1) + output_padding[i] + span - pads[i] - pads[n + i],
                    (false, true) => (size + stride - 1) / stride,
                    (false, false) => {
                        let room = size + pads[i] + pads[n + i] - span;
                        let steps = if ceil_mode { (room + stride - 1) / stride } else { room / stride };
                        steps + 1
                    }
                }
            })
            .collect();
        let pixels: i64 = spatial.iter().product();
        let channels = match self.op() {
            "Conv" => {
                let w = self.dims(1)?;
                *macs += w.iter().product::<i64>() * pixels * s[0];
                w[0]
            }
            "ConvTranspose" => {
                let w = self.dims(1)?;
                let group = attr_int(self.node, "group", 1);
                *macs += w.iter().product::<i64>() * s[2..].iter().product::<i64>() * s[0];
                w[1] * group
            }
            _ => s[1],
        };
        let mut shape = vec![s[0], channels];
        shape.extend(spatial);
        Ok(self.all(Known::Shape(shape)))
    }
}
