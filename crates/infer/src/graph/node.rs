//! Each operator's output shapes (and contents, for shape arithmetic) from its inputs'.

use std::collections::HashMap;
use std::path::Path;

use onnx_protobuf::NodeProto;
use onnx_protobuf::tensor_proto::DataType;

use super::{GraphError, Known, attr_int, attr_ints, axis, broadcast, known_of};

/// One node with what is known of the values before it.
pub(super) struct Node<'a> {
    pub node: &'a NodeProto,
    pub known: &'a HashMap<String, Known>,
    pub path: &'a Path,
}

/// Operators whose outputs have their first input's shape.
const SAME_SHAPE: &[&str] = &[
    "Identity",
    "Dropout",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "LogSoftmax",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Exp",
    "Log",
    "Sqrt",
    "Erf",
    "Reciprocal",
    "BatchNormalization",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "QuantizeLinear",
    "DequantizeLinear",
    "Not",
    "ScatterND",
    "ScatterElements",
];

impl Node<'_> {
    pub(super) fn op(&self) -> &str {
        &self.node.op_type
    }

    pub(super) fn unsupported(&self, input: &str) -> GraphError {
        GraphError::Unsupported { path: self.path.into(), op: self.op().into(), input: input.into() }
    }

    pub(super) fn has(&self, i: usize) -> bool {
        self.node.input.get(i).is_some_and(|name| !name.is_empty())
    }

    pub(super) fn get(&self, i: usize) -> Result<Known, GraphError> {
        let name = self.node.input.get(i).map(String::as_str).unwrap_or("");
        self.known.get(name).cloned().ok_or_else(|| self.unsupported(name))
    }

    pub(super) fn dims(&self, i: usize) -> Result<Vec<i64>, GraphError> {
        Ok(self.get(i)?.dims())
    }

    pub(super) fn ints(&self, i: usize) -> Result<Vec<i64>, GraphError> {
        match self.get(i)? {
            Known::Ints(v) => Ok(v),
            _ => Err(self.unsupported(&self.node.input[i])),
        }
    }

    /// Integers given as an input from `opset_input` on, or as an attribute before that.
    pub(super) fn ints_input_or_attr(&self, i: usize, name: &str) -> Result<Option<Vec<i64>>, GraphError> {
        if self.has(i) { self.ints(i).map(Some) } else { Ok(attr_ints(self.node, name)) }
    }

    pub(super) fn all(&self, value: Known) -> Vec<Known> {
        vec![value; self.node.output.len()]
    }

    /// What the node's outputs are, adding its multiply-accumulates to `macs`.
    pub fn outputs(&self, macs: &mut i64) -> Result<Vec<Known>, GraphError> {
        Ok(match self.op() {
            "Constant" => vec![self.constant()?],
            "Shape" => vec![self.shape_of()?],
            "Size" => vec![Known::Ints(vec![self.dims(0)?.iter().product()])],
            "ConstantOfShape" => vec![Known::Shape(self.ints(0)?)],
            op if SAME_SHAPE.contains(&op) => vec![Known::Shape(self.dims(0)?); self.node.output.len()],
            "Neg" | "Abs" | "Floor" | "Ceil" | "Round" => vec![self.unary()?],
            "Cast" => vec![self.cast()?],
            "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Max" | "Min" | "Pow" | "Sum" | "Mean" | "Equal" | "Less"
            | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Where" => vec![self.elementwise()?],
            "Range" => vec![self.range()?],
            "Concat" => vec![self.concat()?],
            "Gather" => vec![self.gather()?],
            "Unsqueeze" | "Squeeze" => vec![self.squeeze()?],
            "Reshape" => vec![self.reshape()?],
            "Flatten" => {
                let s = self.dims(0)?;
                let a = axis(attr_int(self.node, "axis", 1), s.len());
                vec![Known::Shape(vec![s[..a].iter().product(), s[a..].iter().product()])]
            }
            "Transpose" => {
                let s = self.dims(0)?;
                let perm = attr_ints(self.node, "perm").unwrap_or_else(|| (0..s.len() as i64).rev().collect());
                vec![Known::Shape(perm.iter().map(|&p| s[p as usize]).collect())]
            }
            "Expand" => vec![Known::Shape(broadcast(&[self.dims(0)?, self.ints(1)?]))],
            "Tile" => {
                let (s, reps) = (self.dims(0)?, self.ints(1)?);
                vec![Known::Shape(s.iter().zip(&reps).map(|(d, r)| d * r).collect())]
            }
            "Split" => self.split()?,
            "Pad" => vec![self.pad()?],
            "Slice" => vec![self.slice()?],
            "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" | "LpPool" => self.windowed(macs)?,
            "MaxUnpool" => vec![self.max_unpool()?],
            "GlobalAveragePool" | "GlobalMaxPool" => vec![self.global_pool()?],
            "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceSum" | "ReduceProd" | "ReduceL2" | "ArgMax"
            | "ArgMin" => vec![self.reduce()?],
            "MatMul" | "Gemm" => vec![self.matmul(macs)?],
            "Resize" | "Upsample" => vec![self.resize()?],
            "DepthToSpace" | "SpaceToDepth" => vec![self.depth_to_space()?],
            _ => return Err(self.unsupported(self.node.input.first().map_or("", String::as_str))),
        })
    }

    fn constant(&self) -> Result<Known, GraphError> {
        let a = self.node.attribute.first().ok_or_else(|| self.unsupported("value"))?;
        Ok(match a.name.as_str() {
            "value" => known_of(&a.t),
            "value_int" => Known::Ints(vec![a.i]),
            "value_ints" => Known::Ints(a.ints.clone()),
            "value_float" => Known::Floats(vec![], vec![a.f]),
            "value_floats" => Known::Floats(vec![a.floats.len() as i64], a.floats.clone()),
            other => return Err(self.unsupported(other)),
        })
    }

    fn unary(&self) -> Result<Known, GraphError> {
        let f = |x: f64| match self.op() {
            "Neg" => -x,
            "Abs" => x.abs(),
            "Floor" => x.floor(),
            "Ceil" => x.ceil(),
            _ => x.round_ties_even(),
        };
        Ok(match self.get(0)? {
            Known::Ints(v) => Known::Ints(v.iter().map(|&x| f(x as f64) as i64).collect()),
            Known::Floats(s, v) => Known::Floats(s, v.iter().map(|&x| f(x as f64) as f32).collect()),
            shape => shape,
        })
    }

    fn cast(&self) -> Result<Known, GraphError> {
        let x = self.get(0)?;
        let to = attr_int(self.node, "to", DataType::FLOAT as i64);
        let is = |types: &[DataType]| types.iter().any(|&d| to == d as i64);
        Ok(match x.numbers() {
            Some(v) if is(&[DataType::INT64, DataType::INT32]) => Known::Ints(v.iter().map(|&x| x as i64).collect()),
            Some(v) if is(&[DataType::FLOAT, DataType::DOUBLE]) => {
                Known::Floats(x.dims(), v.iter().map(|&x| x as f32).collect())
            }
            _ => Known::Shape(x.dims()),
        })
    }

    /// Arithmetic and comparisons: evaluated when every input's contents are known (shape
    /// arithmetic), otherwise the broadcast shape.
    fn elementwise(&self) -> Result<Known, GraphError> {
        let inputs = (0..self.node.input.len()).map(|i| self.get(i)).collect::<Result<Vec<_>, _>>()?;
        let shape = broadcast(&inputs.iter().map(Known::dims).collect::<Vec<_>>());
        let Some(values) = inputs.iter().map(Known::numbers).collect::<Option<Vec<_>>>() else {
            return Ok(Known::Shape(shape));
        };
        let len = values.iter().map(Vec::len).max().unwrap_or(0);
        let at = |k: usize, i: usize| values[k][if values[k].len() == 1 { 0 } else { i }];
        // Comparisons give booleans, kept as 0/1 integers; Where's condition is not an operand.
        let comparison =
            matches!(self.op(), "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or");
        let operands = if self.op() == "Where" { &inputs[1..] } else { &inputs[..] };
        let integer = comparison || operands.iter().all(|k| matches!(k, Known::Ints(_)));
        let truth = |b: bool| if b { 1.0 } else { 0.0 };
        let out: Vec<f64> = (0..len)
            .map(|i| {
                let (a, b) = (at(0, i), if values.len() > 1 { at(1, i) } else { 0.0 });
                match self.op() {
                    "Add" | "Sum" | "Mean" => {
                        let total: f64 = (0..values.len()).map(|k| at(k, i)).sum();
                        if self.op() == "Mean" { total / values.len() as f64 } else { total }
                    }
                    "Sub" => a - b,
                    "Mul" => a * b,
                    "Div" if integer => (a / b).trunc(),
                    "Div" => a / b,
                    "Mod" => a - b * (a / b).floor(),
                    "Max" => (0..values.len()).map(|k| at(k, i)).fold(f64::MIN, f64::max),
                    "Min" => (0..values.len()).map(|k| at(k, i)).fold(f64::MAX, f64::min),
                    "Pow" => a.powf(b),
                    "Equal" => truth(a == b),
                    "Less" => truth(a < b),
                    "Greater" => truth(a > b),
                    "LessOrEqual" => truth(a <= b),
                    "GreaterOrEqual" => truth(a >= b),
                    "And" => truth(a != 0.0 && b != 0.0),
                    "Or" => truth(a != 0.0 || b != 0.0),
                    _ => {
                        if a != 0.0 { b } else { at(2, i) } // Where
                    }
                }
            })
            .collect();
        Ok(if integer {
            Known::Ints(out.iter().map(|&x| x as i64).collect())
        } else {
            Known::Floats(shape, out.iter().map(|&x| x as f32).collect())
        })
    }

    fn concat(&self) -> Result<Known, GraphError> {
        let inputs = (0..self.node.input.len()).map(|i| self.get(i)).collect::<Result<Vec<_>, _>>()?;
        if inputs.iter().all(|k| matches!(k, Known::Ints(_))) {
            return Ok(Known::Ints(
                inputs.iter().flat_map(|k| k.numbers().unwrap_or_default()).map(|x| x as i64).collect(),
            ));
        }
        let mut s = inputs[0].dims();
        let a = axis(attr_int(self.node, "axis", 0), s.len());
        s[a] = inputs.iter().map(|k| k.dims()[a]).sum();
        Ok(Known::Shape(s))
    }

    fn gather(&self) -> Result<Known, GraphError> {
        let (data, indices) = (self.get(0)?, self.ints(1)?);
        if let Known::Ints(v) = &data {
            let n = v.len() as i64;
            return indices
                .iter()
                .map(|&i| v.get(if i < 0 { i + n } else { i } as usize).copied())
                .collect::<Option<Vec<_>>>()
                .map(Known::Ints)
                .ok_or_else(|| self.unsupported(&self.node.input[1]));
        }
        let s = data.dims();
        let a = axis(attr_int(self.node, "axis", 0), s.len());
        let mut out = s[..a].to_vec();
        out.push(indices.len() as i64);
        out.extend_from_slice(&s[a + 1..]);
        Ok(Known::Shape(out))
    }

    fn squeeze(&self) -> Result<Known, GraphError> {
        let x = self.get(0)?;
        if let Known::Ints(_) = x {
            return Ok(x); // contents are kept flat
        }
        let s = x.dims();
        let axes = self.ints_input_or_attr(1, "axes")?;
        Ok(Known::Shape(if self.op() == "Unsqueeze" {
            let axes = axes.ok_or_else(|| self.unsupported("axes"))?;
            let rank = s.len() + axes.len();
            let mut inserted: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect();
            inserted.sort_unstable();
            let mut rest = s.iter();
            (0..rank).map(|i| if inserted.contains(&i) { 1 } else { *rest.next().unwrap_or(&1) }).collect()
        } else {
            let removed: Vec<usize> = match axes {
                Some(axes) => axes.iter().map(|&a| axis(a, s.len())).collect(),
                None => (0..s.len()).filter(|&i| s[i] == 1).collect(),
            };
            s.iter().enumerate().filter(|(i, _)| !removed.contains(i)).map(|(_, &d)| d).collect()
        }))
    }

    fn reshape(&self) -> Result<Known, GraphError> {
        let (x, target) = (self.get(0)?, self.ints(1)?);
        if let Known::Ints(_) = x {
            return Ok(x);
        }
        let s = x.dims();
        let total: i64 = s.iter().product();
        let allow_zero = attr_int(self.node, "allowzero", 0) == 1;
        let mut out: Vec<i64> =
            target.iter().enumerate().map(|(i, &d)| if d == 0 && !allow_zero { s[i] } else { d }).collect();
        if let Some(free) = out.iter().position(|&d| d == -1) {
            let known: i64 = out.iter().filter(|&&d| d != -1).product();
            out[free] = if known == 0 { 0 } else { total / known };
        }
        Ok(Known::Shape(out))
    }

    fn split(&self) -> Result<Vec<Known>, GraphError> {
        let s = self.dims(0)?;
        let a = axis(attr_int(self.node, "axis", 0), s.len());
        let n = self.node.output.len() as i64;
        let sizes = match self.ints_input_or_attr(1, "split")? {
            Some(sizes) => sizes,
            None => {
                let chunk = (s[a] + n - 1) / n; // the last part may be smaller
                (0..n).map(|i| chunk.min(s[a] - i * chunk)).collect()
            }
        };
        Ok(sizes
            .iter()
            .map(|&d| {
                let mut part = s.clone();
                part[a] = d;
                Known::Shape(part)
            })
            .collect())
    }

    fn slice(&self) -> Result<Known, GraphError> {
        let x = self.get(0)?;
        let s = x.dims();
        let (starts, ends) = (self.ints(1)?, self.ints(2)?);
        let axes = if self.has(3) { self.ints(3)? } else { (0..starts.len() as i64).collect() };
        let steps = if self.has(4) { self.ints(4)? } else { vec![1; starts.len()] };
        let mut out = s.clone();
        let mut ranges = Vec::new();
        for k in 0..starts.len() {
            let (a, d, step) = (axis(axes[k], s.len()), s[axis(axes[k], s.len())], steps[k]);
            let clamp = |v: i64| {
                let v = if v < 0 { v + d } else { v };
                if step > 0 { v.clamp(0, d) } else { v.clamp(-1, d - 1) }
            };
            let (start, end) = (clamp(starts[k]), clamp(ends[k]));
            out[a] = ((end - start) as f64 / step as f64).ceil().max(0.0) as i64;
            ranges.push((start, step, out[a]));
        }
        Ok(match x {
            Known::Ints(v) => {
                let (start, step, n) = ranges[0];
                Known::Ints((0..n).map(|i| v[(start + i * step) as usize]).collect())
            }
            _ => Known::Shape(out),
        })
    }
}
