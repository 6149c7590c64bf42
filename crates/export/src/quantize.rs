//! `export --int8`: static quantisation in QDQ form, which ONNX Runtime turns into its int8
//! kernels. Every (transposed) convolution's weights become int8, and either every activation
//! before the logits with them (see [`activation_tensors`]) or none ([`Activations`]):
//!
//! - activations: unsigned 8-bit, asymmetric, one scale per tensor, from the minimum and maximum
//!   seen on calibration slices (the run's training sites, never its target site); an operator
//!   that only moves values (MaxPool, Pad) keeps its input's scale;
//! - weights: signed 8-bit, symmetric, one scale per output channel;
//! - biases: 32-bit integers at the scale input × weight, as the int8 kernels expect, where the
//!   input is quantised; float32 where it is not.
//!
//! The last convolution's output (the logits) stays float32: the argmax between two classes is
//! decided there, and an 8-bit step would move the boundary.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, TensorProto};
use ort::value::TensorRef;
use relkd_infer::graph::{attr_int as int_attribute, floats_of};
use relkd_infer::runtime::{Provider, runtime};

use crate::onnx::{attr_int, float_tensor_info};
use crate::{ExportError, Probe};

/// Minimum and maximum of each tensor whose quantisation needs them.
pub type Ranges = HashMap<String, (f32, f32)>;

/// Where an int8 file computes: on int8 activations, or on float32 activations with int8 weights
/// that ONNX Runtime dequantises as the graph runs. The second is a quarter of the float32 size
/// too, and where a network's operators have no int8 kernel (ESPNet's per-channel PReLU) the
/// quantise and dequantise passes around them cost more than the int8 convolutions save (README,
/// "`export --int8`").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    Int8,
    Float,
}

impl Activations {
    pub fn describe(self) -> &'static str {
        match self {
            Activations::Int8 => "int8 activations",
            Activations::Float => "float32 activations (int8 weights)",
        }
    }
}

/// A (transposed) convolution: its weights become int8 (and its bias int32).
fn is_conv(node: &NodeProto) -> bool {
    node.op_type == "Conv" || node.op_type == "ConvTranspose"
}

/// Operators that only move or select their input's values (or add zeros): their output keeps
/// the input's scale and zero point, which is what ONNX Runtime needs to run them on the uint8
/// values directly (MaxPool, Pad) instead of between a dequantise and a quantise.
fn passes_values_through(node: &NodeProto) -> bool {
    matches!(node.op_type.as_str(), "MaxPool" | "MaxUnpool" | "Pad" | "Slice")
}

/// Operators ONNX Runtime runs on uint8 values when their inputs and output are quantised
/// (QLinearAdd, QLinearConcat, QLinearLeakyRelu, its channels-last MaxPool; a Relu folds into the
/// quantisation, Pad and MaxUnpool move values). Not AveragePool: ESPNet's, on the one-channel
/// image, was no faster in int8.
fn keeps_int8(node: &NodeProto) -> bool {
    matches!(node.op_type.as_str(), "Add" | "Concat" | "LeakyRelu" | "Relu" | "MaxPool" | "MaxUnpool" | "Pad")
}

/// The tensors that get an activation scale, before the logits (the last convolution's output,
/// which stays float32 with what follows it): the image, every convolution's input and output,
/// and the output of every operator of [`keeps_int8`] whose float inputs are all quantised. The
/// last is what ONNX Runtime's own quantiser adds: a residual Add or a Concat between quantised
/// convolutions, left float, sits between a dequantise and a quantise and keeps ONNX Runtime
/// from running the block in its int8 channels-last layout, with transposes around each such
/// island (issue #32: ERFNet's int8 graph had 40 where ONNX Runtime's quantiser's has 12).
/// Operators with no int8 kernel (ESPNet's PReLU as Mul and Max) are not quantised after, only
/// where a convolution reads them: each quantisation is a pass over the tensor, and around a
/// float operator it buys nothing (ONNX Runtime's quantiser, which quantises after every
/// operator, makes ESPNet's file 1.4× its float32).
///
/// A tensor read by one Relu alone is quantised after the Relu only, whose range starts at 0: the
/// quantisation itself clamps and ONNX Runtime drops the Relu, folding it into the convolution or
/// Add before it, as its quantiser does (a quantise, dequantise and float Relu less each time).
fn activation_tensors(graph: &GraphProto) -> Vec<String> {
    let floats = float_tensors(graph);
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let logits = graph.node.iter().rposition(is_conv).unwrap_or(graph.node.len());
    let only_a_relu_reads = |tensor: &String| {
        let mut readers = graph.node.iter().filter(|n| n.input.contains(tensor));
        readers.next().is_some_and(|n| n.op_type == "Relu") && readers.next().is_none()
    };
    // Tensors in int8 (quantised, or quantised by the Relu that alone reads them), in graph order.
    let mut int8: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).filter(|n| floats.contains(n)).collect();
    let mut quantised: Vec<String> = int8.iter().cloned().collect();
    for node in &graph.node[..logits] {
        let float_inputs = || node.input.iter().filter(|t| floats.contains(*t) && !initializers.contains(t.as_str()));
        let output = &node.output[0];
        if !floats.contains(output) {
            continue; // shape arithmetic
        } else if is_conv(node) {
            let input = float_inputs().next().expect("a convolution reads a float tensor");
            if !quantised.contains(input) {
                quantised.push(input.clone());
            }
        } else if !(keeps_int8(node) && float_inputs().all(|t| int8.contains(t))) {
            continue;
        }
        int8.insert(output.clone());
        if !only_a_relu_reads(output) {
            quantised.push(output.clone());
        }
    }
    quantised
}

/// The float32 tensors of the graph: its float inputs and initializers, and the outputs of every
/// node whose first input is one, but for `Shape` (and MaxPool's indices, a second output).
fn float_tensors(graph: &GraphProto) -> HashSet<String> {
    let float = DataType::FLOAT as i32;
    let mut floats: HashSet<String> = graph
        .input
        .iter()
        .filter(|i| i.type_.tensor_type().elem_type == float)
        .map(|i| i.name.clone())
        .chain(graph.initializer.iter().filter(|t| t.data_type == float).map(|t| t.name.clone()))
        .collect();
    for node in &graph.node {
        if node.op_type != "Shape" && node.input.first().is_some_and(|i| floats.contains(i)) {
            floats.insert(node.output[0].clone());
        }
    }
    floats
}

/// Runs the float32 `model` (ONNX Runtime, CPU) on the calibration inputs, every tensor to be
/// quantised exposed as an output, and returns their ranges. `scratch` is a file it may write;
/// the caller removes it.
pub fn calibrate(model: &ModelProto, inputs: &[Probe], scratch: &Path) -> Result<Ranges, ExportError> {
    let mut probed = model.clone();
    let graph = probed.graph.as_mut().expect("a graph");
    let names = activation_tensors(graph);
    graph.output.extend(names.iter().map(|n| float_tensor_info(n, None)));
    let io = |message: String| ExportError::Io { path: scratch.into(), message };
    let bytes = probed.write_to_bytes().map_err(|e| io(e.to_string()))?;
    std::fs::write(scratch, bytes).map_err(|e| io(e.to_string()))?;
    let mut ranges = observe_ranges(scratch, &names, inputs)?;
    for node in model.graph.node.iter().filter(|n| passes_values_through(n)) {
        if let Some(&range) = ranges.get(&node.input[0]) {
            ranges.insert(node.output[0].clone(), range);
        }
    }
    Ok(ranges)
}

/// The minimum and maximum of each of `names` over the runs of the model in `path` on `inputs`.
fn observe_ranges(path: &Path, names: &[String], inputs: &[Probe]) -> Result<Ranges, ExportError> {
    let fail = |e: ort::Error| ExportError::Runtime(e.to_string());
    let rt = runtime().map_err(|e| ExportError::Runtime(e.to_string()))?;
    let (mut session, _) = rt.session(path, Provider::Cpu, 2).map_err(|e| ExportError::Runtime(e.to_string()))?;
    let mut ranges: Ranges = HashMap::new();
    for input in inputs {
        let tensor = TensorRef::from_array_view((input.shape, input.data.as_slice())).map_err(fail)?;
        let outputs = session.run(ort::inputs!["image" => tensor]).map_err(fail)?;
        for name in names {
            let (_, values) = outputs[name.as_str()].try_extract_tensor::<f32>().map_err(fail)?;
            let (lo, hi) =
                values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let range = ranges.entry(name.clone()).or_insert((lo, hi));
            *range = (range.0.min(lo), range.1.max(hi));
        }
    }
    Ok(ranges)
}

/// Scale and zero point of an unsigned 8-bit tensor covering `[lo, hi]` (and 0, exactly).
fn activation_scale((lo, hi): (f32, f32)) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    (scale, (-lo / scale).round().clamp(0.0, 255.0) as u8)
}

/// Builds the quantised graph; the float32 `model` is left as it is.
pub struct Quantizer<'a> {
    initializers: HashMap<&'a str, &'a TensorProto>,
    nodes: Vec<NodeProto>,
    added: Vec<TensorProto>,
    /// Activation scale of each quantised tensor.
    scales: HashMap<String, f32>,
    counter: usize,
}

impl<'a> Quantizer<'a> {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    fn tensor(&mut self, prefix: &str, dims: &[i64], data_type: DataType, raw: Vec<u8>) -> String {
        let mut t = TensorProto::new();
        t.name = self.fresh(prefix);
        t.dims = dims.to_vec();
        t.data_type = data_type as i32;
        t.raw_data = raw;
        let name = t.name.clone();
        self.added.push(t);
        name
    }

    fn node(&mut self, op: &str, inputs: &[&str], axis: Option<i64>) -> String {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        let out = self.fresh("q");
        n.output = vec![out.clone()];
        if let Some(axis) = axis {
            n.attribute.push(attr_int("axis", axis));
        }
        self.nodes.push(n);
        out
    }

    /// `Q` then `DQ` of an activation: returns the dequantised tensor's name.
    fn fake_quantize(&mut self, tensor: &str, range: (f32, f32)) -> String {
        let (scale, zero) = activation_scale(range);
        self.scales.insert(tensor.into(), scale);
        let s = self.tensor("s", &[], DataType::FLOAT, scale.to_le_bytes().to_vec());
        let z = self.tensor("z", &[], DataType::UINT8, vec![zero]);
        let q = self.node("QuantizeLinear", &[tensor, &s, &z], None);
        self.node("DequantizeLinear", &[&q, &s, &z], None)
    }

    /// A convolution's weights as int8 per output channel behind a `DequantizeLinear`, and its bias
    /// as int32 the same way where its input is quantised (at `input_scale`); returns the new
    /// weight and bias names (a float bias: none).
    fn quantize_weights(&mut self, conv: &NodeProto, input_scale: Option<f32>) -> (String, Option<String>) {
        let w = self.initializers[conv.input[1].as_str()];
        let values = floats_of(w).expect("float32 weights");
        let transposed = conv.op_type == "ConvTranspose";
        // Output channels: axis 0 of a convolution's weight, axis 1 of a transposed one's (with
        // one group; otherwise one scale for the whole tensor).
        let per_channel = !transposed || int_attribute(conv, "group", 1) == 1;
        let axis = usize::from(transposed);
        let dims: Vec<usize> = w.dims.iter().map(|&d| d as usize).collect();
        let channels = if per_channel { dims[axis] } else { 1 };
        let inner: usize = dims[axis + 1..].iter().product();
        let channel_of = |i: usize| if per_channel { (i / inner) % dims[axis] } else { 0 };
        let mut max_abs = vec![0f32; channels];
        for (i, v) in values.iter().enumerate() {
            let c = channel_of(i);
            max_abs[c] = max_abs[c].max(v.abs());
        }
        let scales: Vec<f32> = max_abs.iter().map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 }).collect();
        let q: Vec<u8> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8 as u8)
            .collect();
        let scale_dims: &[i64] = if per_channel { &[channels as i64] } else { &[] };
        let raw_scales: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        // Zero points are left out: they default to 0, which symmetric weights and biases use.
        let wq = self.tensor("wq", &w.dims, DataType::INT8, q);
        let ws = self.tensor("ws", scale_dims, DataType::FLOAT, raw_scales);
        let axis_attr = per_channel.then_some(axis as i64);
        let weight = self.node("DequantizeLinear", &[&wq, &ws], axis_attr);
        let bias = conv.input.get(2).filter(|b| !b.is_empty()).zip(input_scale).map(|(b, input_scale)| {
            let values = floats_of(self.initializers[b.as_str()]).expect("float32 biases");
            let n = values.len();
            let bias_scales: Vec<f32> = (0..n).map(|c| input_scale * scales[if per_channel { c } else { 0 }]).collect();
            let q: Vec<u8> = values
                .iter()
                .zip(&bias_scales)
                .flat_map(|(v, s)| ((v / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes())
                .collect();
            let raw_scales: Vec<u8> = bias_scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let bq = self.tensor("bq", &[n as i64], DataType::INT32, q);
            let bs = self.tensor("bs", &[n as i64], DataType::FLOAT, raw_scales);
            self.node("DequantizeLinear", &[&bq, &bs], Some(0))
        });
        (weight, bias)
    }

    /// The QDQ model of the float32 `model` with calibrated `ranges`; with no ranges, the weights
    /// alone are quantised ([`Activations::Float`]).
    pub fn quantize(model: &'a ModelProto, ranges: &Ranges) -> ModelProto {
        let graph = model.graph.as_ref().expect("a graph");
        let initializers = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut q =
            Quantizer { initializers, nodes: Vec::new(), added: Vec::new(), scales: HashMap::new(), counter: 0 };
        // Tensors read by quantised weights' Dequantize nodes no longer need their float copies.
        let mut replaced_weights = HashSet::new();
        // Each quantised tensor's dequantised name, which every consumer reads instead.
        let mut dequantized: HashMap<String, String> = HashMap::new();
        let graph_inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
        for name in &graph_inputs {
            if let Some(&range) = ranges.get(name) {
                let dq = q.fake_quantize(name, range);
                dequantized.insert(name.clone(), dq);
            }
        }
        for node in &graph.node {
            let mut node = node.clone();
            if is_conv(&node) && q.initializers.contains_key(node.input[1].as_str()) {
                let input_scale = q.scales.get(&node.input[0]).copied();
                let (weight, bias) = q.quantize_weights(&node, input_scale);
                replaced_weights.insert(node.input[1].clone());
                node.input[1] = weight;
                if let Some(bias) = bias {
                    replaced_weights.insert(node.input[2].clone());
                    node.input[2] = bias;
                }
            }
            for input in node.input.iter_mut() {
                if let Some(dq) = dequantized.get(input.as_str()) {
                    *input = dq.clone();
                }
            }
            let outputs = node.output.clone();
            q.nodes.push(node);
            for output in outputs {
                if let Some(&range) = ranges.get(&output) {
                    let dq = q.fake_quantize(&output, range);
                    dequantized.insert(output, dq);
                }
            }
        }
        let mut out = model.clone();
        let g = out.graph.as_mut().expect("a graph");
        g.node = q.nodes;
        g.initializer.retain(|t| !replaced_weights.contains(&t.name));
        g.initializer.extend(q.added);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = outputs.iter().map(|s| s.to_string()).collect();
        node
    }

    #[test]
    fn every_float_activation_before_the_logits_gets_a_scale() {
        let mut graph = GraphProto::new();
        graph.input.push(float_tensor_info("image", None));
        let mut pads = TensorProto::new();
        (pads.name, pads.data_type) = ("pads".into(), DataType::INT64 as i32);
        graph.initializer.push(pads);
        graph.node = vec![
            node("Shape", &["image"], &["shape"]), // integers: no scale
            node("Concat", &["pads", "shape"], &["more_pads"]),
            node("Pad", &["image", "pads"], &["padded"]),
            node("Conv", &["padded", "w1"], &["c1"]),
            node("Relu", &["c1"], &["r1"]), // c1 is read by this Relu alone: quantised after it
            node("MaxPool", &["r1"], &["pooled", "indices"]), // the indices are integers
            node("Add", &["pooled", "r1"], &["sum"]),
            node("Relu", &["sum"], &["r2"]), // an Add's output read by a Relu alone, too
            node("Conv", &["r2", "w2"], &["logits"]), // the logits stay float32
            node("Slice", &["logits", "shape"], &["out"]),
        ];
        let expected = ["image", "padded", "r1", "pooled", "r2"];
        assert_eq!(activation_tensors(&graph), expected.map(String::from));
        let through: Vec<&str> =
            graph.node.iter().filter(|n| passes_values_through(n)).map(|n| n.op_type.as_str()).collect();
        assert_eq!(through, ["Pad", "MaxPool", "Slice"]);
    }

    #[test]
    fn activation_scales_by_hand() {
        // [−1, 3]: 4 / 255 a step, zero at 1 / (4 / 255) = 63.75 → 64.
        let (scale, zero) = activation_scale((-1.0, 3.0));
        assert_eq!((scale, zero), (4.0 / 255.0, 64));
        // All positive: the range is widened to hold 0 exactly, at zero point 0.
        assert_eq!(activation_scale((0.5, 255.0)), (1.0, 0));
        // Constant zero: any scale, 0 at 0.
        assert_eq!(activation_scale((0.0, 0.0)), (1.0, 0));
    }
}
