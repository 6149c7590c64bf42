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
        let unsupported =
            |input: &str| GraphError::Unsupported { path: path.into(), op: node.op_type.clone(), input: input.into() };
        let get = |i: usize| -> Result<Known, GraphError> {
            let name = node.input.get(i).map(String::as_str).unwrap_or("");
            known.get(name).cloned().ok_or_else(|| unsupported(name))
        };
        let shape = |i: usize| match get(i)? {
            Known::Shape(s) => Ok(s),
            Known::Ints(_) => Err(unsupported(&node.input[i])),
        };
        let ints = |i: usize| match get(i)? {
            Known::Ints(v) => Ok(v),
            Known::Shape(_) => Err(unsupported(&node.input[i])),
        };
        let out: Vec<Known> = match node.op_type.as_str() {
            "Shape" => {
                let s = shape(0)?;
                let (start, end) =
                    (attr_int(node, "start", 0) as usize, attr_int(node, "end", s.len() as i64) as usize);
                vec![Known::Ints(s[start..end.min(s.len())].to_vec())]
            }
            "Mod" | "Sub" => {
                let (a, b) = (ints(0)?, ints(1)?);
                let f = |x: i64, y: i64| if node.op_type == "Mod" { x.rem_euclid(y) } else { x - y };
                vec![Known::Ints(a.iter().zip(b.iter().cycle()).map(|(&x, &y)| f(x, y)).collect())]
            }
            "Concat" => match get(0)? {
                Known::Ints(_) => {
                    let mut all = Vec::new();
                    for i in 0..node.input.len() {
                        all.extend(ints(i)?);
                    }
                    vec![Known::Ints(all)]
                }
                Known::Shape(first) => {
                    let axis = attr_int(node, "axis", 1) as usize;
                    let mut s = first.clone();
                    s[axis] = (0..node.input.len()).map(|i| shape(i).map(|t| t[axis])).sum::<Result<i64, _>>()?;
                    vec![Known::Shape(s)]
                }
            },
            "Cast" | "Relu" | "LeakyRelu" | "PRelu" | "Sigmoid" | "BatchNormalization" | "Identity" => {
                vec![get(0)?]
            }
            "Add" | "Mul" => {
                let (a, b) = (shape(0)?, shape(1)?);
                vec![Known::Shape(if a.len() >= b.len() { a } else { b })]
            }
            "Pad" => {
                let (s, pads) = (shape(0)?, ints(1)?);
                let r = s.len();
                vec![Known::Shape((0..r).map(|i| s[i] + pads[i] + pads[r + i]).collect())]
            }
            "Slice" => {
                let (mut s, starts, ends) = (shape(0)?, ints(1)?, ints(2)?);
                let axes = if node.input.len() > 3 { ints(3)? } else { (0..starts.len() as i64).collect() };
                for ((&axis, &start), &end) in axes.iter().zip(&starts).zip(&ends) {
                    let d = &mut s[axis as usize];
                    *d = end.min(*d) - start;
                }
                vec![Known::Shape(s)]
            }
            "Conv" | "ConvTranspose" | "MaxPool" | "AveragePool" => {
                let s = shape(0)?;
                let kernel = match node.op_type.as_str() {
                    "Conv" | "ConvTranspose" => {
                        let w = shape(1)?;
                        attr_ints(node, "kernel_shape").unwrap_or_else(|| w[2..].to_vec())
                    }
                    _ => attr_ints(node, "kernel_shape").ok_or_else(|| unsupported("kernel_shape"))?,
                };
                let strides = attr_ints(node, "strides").unwrap_or(vec![1, 1]);
                let dilations = attr_ints(node, "dilations").unwrap_or(vec![1, 1]);
                let pads = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
                let transposed = node.op_type == "ConvTranspose";
                let output_padding = attr_ints(node, "output_padding").unwrap_or(vec![0, 0]);
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
                let channels = match node.op_type.as_str() {
                    "Conv" => {
                        let w = shape(1)?;
                        macs += w[0] * w[1] * kernel[0] * kernel[1] * spatial[0] * spatial[1] * s[0];
                        w[0]
                    }
                    "ConvTranspose" => {
                        let w = shape(1)?;
                        let group = attr_int(node, "group", 1);
                        macs += w[0] * w[1] * kernel[0] * kernel[1] * s[2] * s[3] * s[0];
                        w[1] * group
                    }
                    _ => s[1],
                };
                let shape = vec![s[0], channels, spatial[0], spatial[1]];
                vec![Known::Shape(shape); node.output.len()]
            }
            "MaxUnpool" => vec![Known::Shape(ints(2)?)],
            "GlobalAveragePool" => {
                let s = shape(0)?;
                vec![Known::Shape(vec![s[0], s[1], 1, 1])]
            }
            "Resize" => {
                let s = shape(0)?;
                let sizes = node.input.get(3).filter(|n| !n.is_empty()).map(|_| ints(3)).transpose()?;
                let out = match sizes {
                    Some(sizes) => sizes,
                    None => {
                        let name = node.input.get(2).cloned().unwrap_or_default();
                        let scales = float_constants.get(&name).ok_or_else(|| unsupported(&name))?;
                        s.iter().zip(scales).map(|(&d, &f)| (d as f64 * f as f64).floor() as i64).collect()
                    }
                };
                vec![Known::Shape(out)]
            }
            _ => return Err(unsupported(node.input.first().map_or("", String::as_str))),
        };
        for (name, value) in node.output.iter().zip(out) {
            known.insert(name.clone(), value);
        }
    }
    Ok(GraphCost { params, gflops: 2.0 * macs as f64 / 1e9 })
}
