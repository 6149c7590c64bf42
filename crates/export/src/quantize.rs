//! `export --int8`: static quantisation in QDQ form, which ONNX Runtime turns into its int8
//! kernels. Every (transposed) convolution reads a quantised input and quantised weights and
//! writes a quantised output:
//!
//! - activations: unsigned 8-bit, asymmetric, one scale per tensor, from the minimum and maximum
//!   seen on calibration slices (the run's training sites, never its target site);
//! - weights: signed 8-bit, symmetric, one scale per output channel;
//! - biases: 32-bit integers at the scale input × weight, as the int8 kernels expect.
//!
//! The last convolution's output (the logits) stays float32: the argmax between two classes is
//! decided there, and an 8-bit step would move the boundary. So do the depthwise 1×1
//! convolutions that stand for batch norms (see [`is_conv`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, TensorProto};
use ort::value::TensorRef;
use relkd_infer::graph::{attr_int as int_attribute, attr_ints, floats_of};
use relkd_infer::runtime::{Provider, runtime};

use crate::onnx::{attr_int, float_tensor_info};
use crate::{ExportError, Probe};

/// Minimum and maximum of each tensor whose quantisation needs them.
pub type Ranges = HashMap<String, (f32, f32)>;

/// A (transposed) convolution that gets int8 kernels. Depthwise 1×1 convolutions are left in
/// float32: `export` writes a batch norm that follows no convolution as one, a per-channel
/// affine map with nothing to gain from int8 and one more rounding to add.
fn is_conv(node: &NodeProto) -> bool {
    let per_channel_affine = node.op_type == "Conv"
        && int_attribute(node, "group", 1) > 1
        && attr_ints(node, "kernel_shape").is_some_and(|k| k == [1, 1]);
    (node.op_type == "Conv" || node.op_type == "ConvTranspose") && !per_channel_affine
}

/// The tensors that get an activation scale: every convolution's input and output, but the
/// last convolution's output.
fn activation_tensors(graph: &GraphProto) -> Vec<String> {
    let mut convs: Vec<&NodeProto> = graph.node.iter().filter(|n| is_conv(n)).collect();
    let last = convs.pop();
    let last_out = last.map(|n| n.output[0].clone());
    let mut seen = HashSet::new();
    convs
        .iter()
        .flat_map(|n| [n.input[0].clone(), n.output[0].clone()])
        .filter(|t| Some(t) != last_out.as_ref() && seen.insert(t.clone()))
        .collect()
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
    observe_ranges(scratch, &names, inputs)
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

    /// A convolution's weights as int8 per output channel (and its bias as int32), each behind
    /// a `DequantizeLinear`; returns the new weight and bias names.
    fn quantize_weights(&mut self, conv: &NodeProto, input_scale: f32) -> (String, Option<String>) {
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
        let bias = conv.input.get(2).filter(|b| !b.is_empty()).map(|b| {
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

    /// The QDQ model of the float32 `model` with calibrated `ranges`.
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
            if is_conv(&node)
                && q.initializers.contains_key(node.input[1].as_str())
                && let Some(&scale) = q.scales.get(&node.input[0])
            {
                let (weight, bias) = q.quantize_weights(&node, scale);
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

    fn conv(op: &str, group: i64, kernel: [i64; 2]) -> NodeProto {
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.attribute = vec![attr_int("group", group), crate::onnx::attr_ints("kernel_shape", &kernel)];
        node
    }

    #[test]
    fn batch_norms_written_as_depthwise_1x1_convolutions_stay_float() {
        assert!(is_conv(&conv("Conv", 1, [3, 3])));
        assert!(is_conv(&conv("Conv", 1, [1, 1])));
        assert!(is_conv(&conv("Conv", 16, [3, 3]))); // a grouped 3×3 convolution is real work
        assert!(is_conv(&conv("ConvTranspose", 1, [2, 2])));
        assert!(!is_conv(&conv("Conv", 16, [1, 1])));
        assert!(!is_conv(&conv("Add", 1, [1, 1])));
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
