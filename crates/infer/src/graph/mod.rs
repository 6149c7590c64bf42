//! What an ONNX file costs, read from the graph itself: parameters (initializer elements) and
//! the multiply-accumulates of its convolutions and matrix products at a given input size,
//! found by propagating shapes through the graph. The shape arithmetic exporters put around
//! pads and resizes (Shape, Gather, Concat, Constant, Cast, …) is evaluated on the way, so
//! models from other exporters (PyTorch's) are measured as relkd's own are.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{AttributeProto, Message, ModelProto, NodeProto, TensorProto};

use node::Node;

mod node;
mod spatial;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: cannot follow shapes through {op} node (input {input}); GFLOPs unavailable")]
    Unsupported { path: PathBuf, op: String, input: String },
}

/// Parameters and GFLOPs of one model at one input size.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphCost {
    /// Elements of the weight initializers (weights and biases, after batch-norm folding; in a
    /// quantised graph the integer ones, without scales and zero points).
    pub params: usize,
    /// 2 × multiply-accumulates of (transposed) convolutions and matrix products for one
    /// image; an error when the graph holds an operator whose output shape is not followed.
    pub gflops: Result<f64, GraphError>,
}

/// A value during propagation.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// A tensor of known shape and unknown contents (activations, weights).
    Shape(Vec<i64>),
    /// A small integer tensor of known contents (shapes, pads, indices), flattened: its rank
    /// does not matter to the shape arithmetic it takes part in.
    Ints(Vec<i64>),
    /// A small float tensor of known shape and contents (resize scales).
    Floats(Vec<i64>, Vec<f32>),
}

impl Known {
    fn dims(&self) -> Vec<i64> {
        match self {
            Known::Shape(s) | Known::Floats(s, _) => s.clone(),
            Known::Ints(v) => vec![v.len() as i64],
        }
    }

    /// A tensor's known contents, as numbers (integers exactly).
    fn numbers(&self) -> Option<Vec<f64>> {
        match self {
            Known::Shape(_) => None,
            Known::Ints(v) => Some(v.iter().map(|&i| i as f64).collect()),
            Known::Floats(_, v) => Some(v.iter().map(|&f| f as f64).collect()),
        }
    }
}

/// Float tensors with at most this many elements keep their contents (scales, scalars).
const SMALL: usize = 16;

/// A stored tensor's values when it has type `ty`, from its raw little-endian bytes or from its
/// typed field.
fn stored<T: Clone, const N: usize>(
    t: &TensorProto,
    ty: DataType,
    field: &[T],
    from_le: fn([u8; N]) -> T,
) -> Option<Vec<T>> {
    (t.data_type == ty as i32).then(|| {
        if t.raw_data.is_empty() {
            field.to_vec()
        } else {
            t.raw_data.chunks_exact(N).map(|b| from_le(b.try_into().expect("N bytes"))).collect()
        }
    })
}

fn ints_of(t: &TensorProto) -> Option<Vec<i64>> {
    stored(t, DataType::INT64, &t.int64_data, i64::from_le_bytes)
}

/// A float32 tensor's values (None for other types).
pub fn floats_of(t: &TensorProto) -> Option<Vec<f32>> {
    stored(t, DataType::FLOAT, &t.float_data, f32::from_le_bytes)
}

/// What a stored tensor (initializer or Constant) is known to be.
fn known_of(t: &TensorProto) -> Known {
    if let Some(ints) = ints_of(t) {
        return Known::Ints(ints);
    }
    let small = t.dims.iter().product::<i64>() <= SMALL as i64;
    match floats_of(t).filter(|_| small) {
        Some(values) => Known::Floats(t.dims.clone(), values),
        None => Known::Shape(t.dims.clone()),
    }
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// An integer-list attribute of `node` (a single integer as a list of one).
pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| if a.ints.is_empty() { vec![a.i] } else { a.ints.clone() })
}

/// An integer attribute of `node`, or `default`.
pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map_or(default, |a| a.i)
}

/// An axis that may count from the end, as an index.
fn axis(a: i64, rank: usize) -> usize {
    if a < 0 { (a + rank as i64).max(0) as usize } else { a as usize }
}

/// NumPy broadcasting of shapes.
fn broadcast(shapes: &[Vec<i64>]) -> Vec<i64> {
    let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
    (0..rank)
        .map(|i| {
            shapes
                .iter()
                .filter_map(|s| (i + s.len()).checked_sub(rank).map(|j| s[j]))
                .fold(1, |acc, d| if d == 1 { acc } else { d })
        })
        .collect()
}

/// Reads `path` and counts its cost for an input `[1, channels, h, w]`.
pub fn cost(path: &Path, channels: usize, h: usize, w: usize) -> Result<GraphCost, GraphError> {
    let read = |message: String| GraphError::Read { path: path.into(), message };
    let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| read(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.as_ref().ok_or_else(|| read("no graph".into()))?;

    // Parameters: float weights, and in a quantised (QDQ) graph the integers its Dequantize
    // nodes read, but not their scales and zero points.
    let quantization: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")
        .flat_map(|n| n.input.iter().skip(1).map(String::as_str))
        .collect();
    let dequantized: HashSet<&str> =
        graph.node.iter().filter(|n| n.op_type == "DequantizeLinear").map(|n| n.input[0].as_str()).collect();
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut params = 0;
    for t in &graph.initializer {
        let float = [DataType::FLOAT, DataType::FLOAT16].iter().any(|&d| t.data_type == d as i32);
        let name = t.name.as_str();
        if !quantization.contains(name) && (float || dequantized.contains(name)) {
            params += t.dims.iter().product::<i64>() as usize;
        }
        known.insert(t.name.clone(), known_of(t));
    }
    // The image: the first input that is not an initializer (older files list those too).
    let input = graph.input.iter().find(|i| !known.contains_key(&i.name)).ok_or_else(|| read("no input".into()))?;
    known.insert(input.name.clone(), Known::Shape(vec![1, channels as i64, h as i64, w as i64]));

    let mut macs = 0i64;
    let mut propagate = || {
        for node in &graph.node {
            let out = Node { node, known: &known, path }.outputs(&mut macs)?;
            for (name, value) in node.output.iter().zip(out) {
                known.insert(name.clone(), value);
            }
        }
        Ok(2.0 * macs as f64 / 1e9)
    };
    Ok(GraphCost { params, gflops: propagate() })
}
