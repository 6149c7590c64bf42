//! What an ONNX file costs, read from the graph itself: parameters (initializer elements) and
//! the multiply-accumulates of its convolutions at a given input size, found by propagating
//! shapes through the operators relkd's networks use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{Message, ModelProto, NodeProto, TensorProto};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: cannot follow shapes through {op} node (input {input}); GFLOPs unavailable")]
    Unsupported { path: PathBuf, op: String, input: String },
}

/// Parameters and GFLOPs of one model at one input size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphCost {
    /// Elements of the float initializers (weights and biases, after batch-norm folding).
    pub params: usize,
    /// 2 × multiply-accumulates of (transposed) convolutions for one image.
    pub gflops: f64,
}

/// A value during propagation: a float tensor's shape, or an int64 tensor's contents.
#[derive(Debug, Clone)]
enum Known {
    Shape(Vec<i64>),
    Ints(Vec<i64>),
}

fn ints_of(t: &TensorProto) -> Option<Vec<i64>> {
    (t.data_type == DataType::INT64 as i32).then(|| {
        if t.raw_data.is_empty() {
            t.int64_data.clone()
        } else {
            t.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
        }
    })
}

fn floats_of(t: &TensorProto) -> Option<Vec<f32>> {
    (t.data_type == DataType::FLOAT as i32).then(|| {
        if t.raw_data.is_empty() {
            t.float_data.clone()
        } else {
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
        }
    })
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute.iter().find(|a| a.name == name).map(|a| if a.ints.is_empty() { vec![a.i] } else { a.ints.clone() })
}

fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    node.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i)
}

/// Reads `path` and counts its cost for an input `[1, channels, h, w]`.
pub fn cost(path: &Path, channels: usize, h: usize, w: usize) -> Result<GraphCost, GraphError> {
    let read = |message: String| GraphError::Read { path: path.into(), message };
    let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| read(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.as_ref().ok_or_else(|| read("no graph".into()))?;

    let mut known: HashMap<String, Known> = HashMap::new();
    let mut params = 0;
    let mut float_constants: HashMap<String, Vec<f32>> = HashMap::new();
    for t in &graph.initializer {
        if let Some(ints) = ints_of(t) {
            known.insert(t.name.clone(), Known::Ints(ints));
        } else {
            if t.data_type == DataType::FLOAT as i32 || t.data_type == DataType::FLOAT16 as i32 {
                params += t.dims.iter().product::<i64>() as usize;
            }
            if let Some(values) = floats_of(t).filter(|v| v.len() <= 8) {
                float_constants.insert(t.name.clone(), values);
            }
            known.insert(t.name.clone(), Known::Shape(t.dims.clone()));
        }
    }
    let input = graph.input.first().ok_or_else(|| read("no input".into()))?;
    known.insert(input.name.clone(), Known::Shape(vec![1, channels as i64, h as i64, w as i64]));

    let mut macs = 0i64;
    for node in &graph.node {
        let n = Node { node, known: &known, float_constants: &float_constants, path };
        let out = n.outputs(&mut macs)?;
        for (name, value) in node.output.iter().zip(out) {
            known.insert(name.clone(), value);
        }
    }
    Ok(GraphCost { params, gflops: 2.0 * macs as f64 / 1e9 })
}

/// One node with what is known of the values before it.
struct Node<'a> {
    node: &'a NodeProto,
    known: &'a HashMap<String, Known>,
    float_constants: &'a HashMap<String, Vec<f32>>,
    path: &'a Path,
}

impl Node<'_> {
    fn unsupported(&self, input: &str) -> GraphError {
        GraphError::Unsupported { path: self.path.into(), op: self.node.op_type.clone(), input: input.into() }
    }

    fn get(&self, i: usize) -> Result<Known, GraphError> {
        let name = self.node.input.get(i).map(String::as_str).unwrap_or("");
        self.known.get(name).cloned().ok_or_else(|| self.unsupported(name))
    }

    fn shape(&self, i: usize) -> Result<Vec<i64>, GraphError> {
        match self.get(i)? {
            Known::Shape(s) => Ok(s),
            Known::Ints(_) => Err(self.unsupported(&self.node.input[i])),
        }
    }

    fn ints(&self, i: usize) -> Result<Vec<i64>, GraphError> {
        match self.get(i)? {
            Known::Ints(v) => Ok(v),
            Known::Shape(_) => Err(self.unsupported(&self.node.input[i])),
        }
    }

    /// What the node's outputs are, adding its multiply-accumulates to `macs`.
    fn outputs(&self, macs: &mut i64) -> Result<Vec<Known>, GraphError> {
        Ok(match self.node.op_type.as_str() {
            "Shape" => {
                let s = self.shape(0)?;
                let (start, end) =
                    (attr_int(self.node, "start", 0) as usize, attr_int(self.node, "end", s.len() as i64) as usize);
                vec![Known::Ints(s[start..end.min(s.len())].to_vec())]
            }
            "Mod" | "Sub" => {
                let (a, b) = (self.ints(0)?, self.ints(1)?);
                let f = |x: i64, y: i64| if self.node.op_type == "Mod" { x.rem_euclid(y) } else { x - y };
                vec![Known::Ints(a.iter().zip(b.iter().cycle()).map(|(&x, &y)| f(x, y)).collect())]
            }
            "Concat" => match self.get(0)? {
                Known::Ints(_) => {
                    let mut all = Vec::new();
                    for i in 0..self.node.input.len() {
                        all.extend(self.ints(i)?);
                    }
                    vec![Known::Ints(all)]
                }
                Known::Shape(first) => {
                    let axis = attr_int(self.node, "axis", 1) as usize;
                    let mut s = first.clone();
                    s[axis] =
                        (0..self.node.input.len()).map(|i| self.shape(i).map(|t| t[axis])).sum::<Result<i64, _>>()?;
                    vec![Known::Shape(s)]
                }
            },
            "Cast" | "Relu" | "LeakyRelu" | "PRelu" | "Sigmoid" | "BatchNormalization" | "Identity" => {
                vec![self.get(0)?]
            }
            "Add" | "Mul" => {
                let (a, b) = (self.shape(0)?, self.shape(1)?);
                vec![Known::Shape(if a.len() >= b.len() { a } else { b })]
            }
            "Pad" => {
                let (s, pads) = (self.shape(0)?, self.ints(1)?);
                let r = s.len();
                vec![Known::Shape((0..r).map(|i| s[i] + pads[i] + pads[r + i]).collect())]
            }
            "Slice" => {
                let (mut s, starts, ends) = (self.shape(0)?, self.ints(1)?, self.ints(2)?);
                let axes = if self.node.input.len() > 3 { self.ints(3)? } else { (0..starts.len() as i64).collect() };
                for ((&axis, &start), &end) in axes.iter().zip(&starts).zip(&ends) {
                    let d = &mut s[axis as usize];
                    *d = end.min(*d) - start;
                }
                vec![Known::Shape(s)]
            }
            "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" => self.windowed(macs)?,
            "MaxUnpool" => vec![Known::Shape(self.ints(2)?)],
            "GlobalAveragePool" => {
                let s = self.shape(0)?;
                vec![Known::Shape(vec![s[0], s[1], 1, 1])]
            }
            "Resize" => {
                let s = self.shape(0)?;
                let sizes = self.node.input.get(3).filter(|name| !name.is_empty()).map(|_| self.ints(3)).transpose()?;
                let out = match sizes {
                    Some(sizes) => sizes,
                    None => {
                        let name = self.node.input.get(2).cloned().unwrap_or_default();
                        let scales = self.float_constants.get(&name).ok_or_else(|| self.unsupported(&name))?;
                        s.iter().zip(scales).map(|(&d, &f)| (d as f64 * f as f64).floor() as i64).collect()
                    }
                };
                vec![Known::Shape(out)]
            }
            _ => return Err(self.unsupported(self.node.input.first().map_or("", String::as_str))),
        })
    }

    /// Convolutions and pooling: the output's spatial size from kernel, strides, dilations
    /// and pads; convolutions add their MACs.
    fn windowed(&self, macs: &mut i64) -> Result<Vec<Known>, GraphError> {
        let s = self.shape(0)?;
        let kernel = match self.node.op_type.as_str() {
            "Conv" | "ConvTranspose" => {
                let w = self.shape(1)?;
                attr_ints(self.node, "kernel_shape").unwrap_or_else(|| w[2..].to_vec())
            }
            _ => attr_ints(self.node, "kernel_shape").ok_or_else(|| self.unsupported("kernel_shape"))?,
        };
        let strides = attr_ints(self.node, "strides").unwrap_or(vec![1, 1]);
        let dilations = attr_ints(self.node, "dilations").unwrap_or(vec![1, 1]);
        let pads = attr_ints(self.node, "pads").unwrap_or(vec![0; 4]);
        let transposed = self.node.op_type == "ConvTranspose";
        let output_padding = attr_ints(self.node, "output_padding").unwrap_or(vec![0, 0]);
        let spatial: Vec<i64> = (0..2)
            .map(|i| {
                let span = dilations[i] * (kernel[i] - 1) + 1;
                if transposed {
                    strides[i] * (s[2 + i] - 1) + output_padding[i] + span - pads[i] - pads[2 + i]
                } else {
                    (s[2 + i] + pads[i] + pads[2 + i] - span) / strides[i] + 1
                }
            })
            .collect();
        let channels = match self.node.op_type.as_str() {
            "Conv" => {
                let w = self.shape(1)?;
                *macs += w[0] * w[1] * kernel[0] * kernel[1] * spatial[0] * spatial[1] * s[0];
                w[0]
            }
            "ConvTranspose" => {
                let w = self.shape(1)?;
                let group = attr_int(self.node, "group", 1);
                *macs += w[0] * w[1] * kernel[0] * kernel[1] * s[2] * s[3] * s[0];
                w[1] * group
            }
            _ => s[1],
        };
        let shape = vec![s[0], channels, spatial[0], spatial[1]];
        Ok(vec![Known::Shape(shape); self.node.output.len()])
    }
}
