//! An ONNX graph built from a network's lowering ([`relkd_models::lower::Graph`]).
//!
//! Choices that matter for what ONNX Runtime runs: every batch norm that follows a
//! convolution is folded into that convolution's weights and bias (the others become a
//! depthwise 1×1 convolution), weights are raw little-endian initializers, and height and width stay
//! symbolic: padding to the network's stride and cropping back are computed from the input's
//! shape inside the graph.

use burn::module::Param;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, PRelu, PaddingConfig2d};
use burn::tensor::Tensor;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto::{self, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
};
use relkd_models::Segmenter;
use relkd_models::lower::{Graph, Value};

/// The graph output holding the distillation tap's feature, in files exported with features.
pub const FEATURES_OUTPUT: &str = "features";

/// How weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// Half-precision initializers, cast back to float32 inside the graph: inputs, outputs and
    /// arithmetic stay float32, the file halves.
    F16,
}

/// Builds one graph; implements the networks' [`Graph`] vocabulary.
pub struct OnnxGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    precision: Precision,
    counter: usize,
}

pub(crate) fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

pub(crate) fn attr_int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

fn attr_string(name: &str, value: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = value.as_bytes().to_vec();
    a
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().try_into_vec::<f32>().expect("float tensor")
}

fn param<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    values(p.val())
}

/// The per-channel affine map `y = a·x + b` of a batch norm in inference mode.
fn bn_affine(bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let (gamma, beta) = (param(&bn.gamma), param(&bn.beta));
    let (mean, var) = (values(bn.running_mean.value()), values(bn.running_var.value()));
    let a: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + bn.epsilon as f32).sqrt()).collect();
    let b = beta.iter().zip(&mean).zip(&a).map(|((beta, m), a)| beta - a * m).collect();
    (a, b)
}

/// A symbolic or fixed dimension for a graph input or output.
fn dim(d: &str) -> Dimension {
    let mut dimension = Dimension::new();
    dimension.value = Some(match d.parse::<i64>() {
        Ok(v) => dimension::Value::DimValue(v),
        Err(_) => dimension::Value::DimParam(d.into()),
    });
    dimension
}

/// A float32 graph input or output, of the given shape or of any.
pub(crate) fn float_tensor_info(name: &str, dims: Option<[&str; 4]>) -> ValueInfoProto {
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    if let Some(dims) = dims {
        let mut shape = TensorShapeProto::new();
        shape.dim = dims.iter().map(|d| dim(d)).collect();
        tensor.shape = Some(shape).into();
    }
    let mut ty = TypeProto::new();
    ty.value = Some(TypeValue::TensorType(tensor));
    let mut info = ValueInfoProto::new();
    info.name = name.into();
    info.type_ = Some(ty).into();
    info
}

impl OnnxGraph {
    pub fn new(precision: Precision) -> Self {
        Self { nodes: Vec::new(), initializers: Vec::new(), precision, counter: 0 }
    }

    /// A new value name. Names are short on purpose: they are stored once per tensor and per
    /// node, and at student sizes they would otherwise add a few percent to the file.
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// Adds a node with fresh output names and returns its outputs.
    fn node(&mut self, op: &str, inputs: &[&str], outputs: usize, attributes: Vec<AttributeProto>) -> Vec<Value> {
        let names = (0..outputs).map(|_| self.fresh("t")).collect();
        self.named_node(op, inputs, names, attributes)
    }

    fn named_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: Vec<String>,
        attributes: Vec<AttributeProto>,
    ) -> Vec<Value> {
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.input = inputs.iter().map(|s| s.to_string()).collect();
        node.output = outputs;
        node.attribute = attributes;
        let out = node.output.iter().map(|o| Value(o.clone())).collect();
        self.nodes.push(node);
        out
    }

    fn node1(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> Value {
        self.node(op, inputs, 1, attributes).remove(0)
    }

    /// A float weight, stored at the graph's precision (half precision goes through a Cast).
    fn weight(&mut self, prefix: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "weight shape and data disagree");
        let name = self.fresh(prefix);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        match self.precision {
            Precision::F32 => {
                t.data_type = DataType::FLOAT as i32;
                t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.initializers.push(t);
                name
            }
            Precision::F16 => {
                t.data_type = DataType::FLOAT16 as i32;
                t.raw_data = data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
                self.initializers.push(t);
                self.node1("Cast", &[&name], vec![attr_int("to", DataType::FLOAT as i64)]).0
            }
        }
    }

    /// An int64 constant (shapes, pads, indices).
    fn ints(&mut self, prefix: &str, data: &[i64]) -> String {
        let name = self.fresh(prefix);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = vec![data.len() as i64];
        t.data_type = DataType::INT64 as i32;
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(t);
        name
    }

    /// A float constant kept at float32 whatever the precision (scales of Resize, factors).
    fn floats(&mut self, prefix: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(prefix);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.data_type = DataType::FLOAT as i32;
        t.raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(t);
        name
    }

    /// `Shape(x)[start..end]` as int64.
    fn shape_slice(&mut self, x: &Value, start: i64, end: i64) -> Value {
        self.node1("Shape", &[&x.0], vec![attr_int("start", start), attr_int("end", end)])
    }

    /// The whole model: `image [N, C, H, W]` → `logits [N, K, H, W]`, padded to `net`'s stride
    /// inside and cropped back; with `features`, also the distillation tap as a second output
    /// `features [N, C_tap, H_pad / stride, W_pad / stride]` (at the padded size, as Burn's
    /// `forward_features` gives it).
    pub fn model(
        net: &dyn Segmenter,
        in_channels: usize,
        classes: usize,
        precision: Precision,
        opset: i64,
        features: bool,
    ) -> ModelProto {
        let mut g = Self::new(precision);
        let image = Value("image".into());
        // Pad bottom and right to a multiple of the stride: pad = (s − hw mod s) mod s.
        let hw = g.shape_slice(&image, 2, 4);
        let stride = net.total_stride() as i64;
        let s = g.ints("stride", &[stride, stride]);
        let rem = g.node1("Mod", &[&hw.0, &s], vec![]);
        let up = g.node1("Sub", &[&s, &rem.0], vec![]);
        let pad_hw = g.node1("Mod", &[&up.0, &s], vec![]);
        let zeros = g.ints("pad_begin", &[0, 0, 0, 0, 0, 0]);
        let pads = g.node1("Concat", &[&zeros, &pad_hw.0], vec![attr_int("axis", 0)]);
        let padded = g.node1("Pad", &[&image.0, &pads.0], vec![attr_string("mode", "constant")]);
        let lowered = net.lower_aligned(&mut g, &padded);
        let starts = g.ints("crop_start", &[0, 0]);
        let axes = g.ints("crop_axes", &[2, 3]);
        g.named_node("Slice", &[&lowered.logits.0, &starts, &hw.0, &axes], vec!["logits".into()], vec![]);
        if features {
            g.named_node("Identity", &[&lowered.feature.0], vec![FEATURES_OUTPUT.into()], vec![]);
        }

        let mut graph = GraphProto::new();
        graph.name = "relkd".into();
        graph.node = g.nodes;
        graph.initializer = g.initializers;
        graph.input = vec![float_tensor_info("image", Some(["N", &in_channels.to_string(), "H", "W"]))];
        graph.output = vec![float_tensor_info("logits", Some(["N", &classes.to_string(), "H", "W"]))];
        if features {
            let channels = net.tap().channels.to_string();
            graph.output.push(float_tensor_info(FEATURES_OUTPUT, Some(["N", &channels, "h_tap", "w_tap"])));
        }
        let mut model = ModelProto::new();
        model.ir_version = 8; // ONNX 1.10+, what opset 17 pairs with
        let mut op = OperatorSetIdProto::new();
        op.version = opset;
        model.opset_import = vec![op];
        model.producer_name = "relkd".into();
        model.producer_version = env!("CARGO_PKG_VERSION").into();
        model.graph = Some(graph).into();
        model
    }

    fn conv_node(&mut self, x: &Value, conv: &Conv2d, weight: &[f32], bias: Option<&[f32]>) -> Value {
        let dims = conv.weight.val().dims();
        let mut inputs = vec![x.0.clone(), self.weight("w", &dims, weight)];
        if let Some(bias) = bias {
            inputs.push(self.weight("w", &[dims[0]], bias));
        }
        let pads = match conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Same => panic!("'same' padding is not used by the relkd networks"),
        };
        let attributes = vec![
            attr_ints("kernel_shape", &conv.kernel_size.map(|k| k as i64)),
            attr_ints("strides", &conv.stride.map(|s| s as i64)),
            attr_ints("dilations", &conv.dilation.map(|d| d as i64)),
            attr_ints("pads", &pads.map(|p| p as i64)),
            attr_int("group", conv.groups as i64),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node1("Conv", &inputs, attributes)
    }
}

/// Metadata entries.
pub fn metadata(model: &mut ModelProto, entries: &[(&str, String)]) {
    for (key, value) in entries {
        let mut e = StringStringEntryProto::new();
        e.key = key.to_string();
        e.value = value.clone();
        model.metadata_props.push(e);
    }
}

impl Graph for OnnxGraph {
    fn conv(&mut self, x: &Value, conv: &Conv2d, bn: Option<&BatchNorm>) -> Value {
        let [cout, per_out, kh, kw] = conv.weight.val().dims();
        let mut weight = param(&conv.weight);
        let mut bias = conv.bias.as_ref().map(param);
        if let Some(bn) = bn {
            let (a, b) = bn_affine(bn);
            let bias = bias.get_or_insert_with(|| vec![0.0; cout]);
            for o in 0..cout {
                weight[o * per_out * kh * kw..][..per_out * kh * kw].iter_mut().for_each(|w| *w *= a[o]);
                bias[o] = a[o] * bias[o] + b[o];
            }
        }
        self.conv_node(x, conv, &weight, bias.as_deref())
    }

    fn conv_transpose(&mut self, x: &Value, conv: &ConvTranspose2d, bn: Option<&BatchNorm>) -> Value {
        // Weight [in, out / groups, kh, kw]; output channel o = group · (out/groups) + j.
        let dims = conv.weight.val().dims();
        let [cin, per_group_out, kh, kw] = dims;
        let groups = conv.groups;
        let cout = per_group_out * groups;
        let mut weight = param(&conv.weight);
        let mut bias = conv.bias.as_ref().map(param);
        if let Some(bn) = bn {
            let (a, b) = bn_affine(bn);
            let bias = bias.get_or_insert_with(|| vec![0.0; cout]);
            for i in 0..cin {
                let group = i / (cin / groups);
                for j in 0..per_group_out {
                    let o = group * per_group_out + j;
                    weight[(i * per_group_out + j) * kh * kw..][..kh * kw].iter_mut().for_each(|w| *w *= a[o]);
                }
            }
            for o in 0..cout {
                bias[o] = a[o] * bias[o] + b[o];
            }
        }
        let mut inputs = vec![x.0.clone(), self.weight("w", &dims, &weight)];
        if let Some(bias) = &bias {
            inputs.push(self.weight("w", &[cout], bias));
        }
        let [ph, pw] = conv.padding.map(|p| p as i64);
        let attributes = vec![
            attr_ints("kernel_shape", &conv.kernel_size.map(|k| k as i64)),
            attr_ints("strides", &conv.stride.map(|s| s as i64)),
            attr_ints("dilations", &conv.dilation.map(|d| d as i64)),
            attr_ints("pads", &[ph, pw, ph, pw]),
            attr_ints("output_padding", &conv.padding_out.map(|p| p as i64)),
            attr_int("group", groups as i64),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node1("ConvTranspose", &inputs, attributes)
    }

    fn batch_norm(&mut self, x: &Value, bn: &BatchNorm) -> Value {
        // The affine map it is at inference, as a depthwise 1×1 convolution: two values per
        // channel (as many as its live parameters), and a node ONNX Runtime keeps in its
        // blocked NCHWc layout, where a Mul/Add pair or a BatchNormalization would force
        // layout conversions around every residual sum downstream.
        let (a, b) = bn_affine(bn);
        let c = a.len();
        let inputs = [x.0.clone(), self.weight("w", &[c, 1, 1, 1], &a), self.weight("w", &[c], &b)];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node1("Conv", &inputs, vec![attr_ints("kernel_shape", &[1, 1]), attr_int("group", c as i64)])
    }

    fn relu(&mut self, x: &Value) -> Value {
        self.node1("Relu", &[&x.0], vec![])
    }

    fn prelu(&mut self, x: &Value, prelu: &PRelu) -> Value {
        let alpha = param(&prelu.alpha);
        if let [slope] = alpha[..] {
            // One shared slope is exactly LeakyRelu, which ONNX Runtime fuses into the
            // preceding convolution; a PRelu node would run on its own, in the plain layout.
            let mut a = AttributeProto::new();
            a.name = "alpha".into();
            a.type_ = AttributeType::FLOAT.into();
            a.f = slope;
            return self.node1("LeakyRelu", &[&x.0], vec![a]);
        }
        // ONNX Runtime runs a per-channel PRelu node unfused and outside its blocked layout
        // (half of ESPNet's time at 384×384). Elementwise Mul and Max stay in that layout;
        // with every slope in [0, 1], max(x, a·x) is PReLU exactly (a·x is the same product
        // PRelu forms, so the output is bit-identical). Otherwise relu(x) − a·relu(−x), the
        // models' own formulation.
        let slope = self.weight("w", &[alpha.len(), 1, 1], &alpha); // broadcasts per channel
        if alpha.iter().all(|a| (0.0..=1.0).contains(a)) {
            let scaled = self.node1("Mul", &[&x.0, &slope], vec![]);
            return self.node1("Max", &[&x.0, &scaled.0], vec![]);
        }
        let positive = self.node1("Relu", &[&x.0], vec![]);
        let flipped = self.node1("Neg", &[&x.0], vec![]);
        let negative = self.node1("Relu", &[&flipped.0], vec![]);
        let scaled = self.node1("Mul", &[&negative.0, &slope], vec![]);
        self.node1("Sub", &[&positive.0, &scaled.0], vec![])
    }

    fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.node1("Add", &[&a.0, &b.0], vec![])
    }

    fn concat(&mut self, xs: &[Value]) -> Value {
        let names: Vec<&str> = xs.iter().map(|v| v.0.as_str()).collect();
        self.node1("Concat", &names, vec![attr_int("axis", 1)])
    }

    fn max_pool_2x2(&mut self, x: &Value) -> Value {
        self.node1("MaxPool", &[&x.0], vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])])
    }

    fn max_pool_2x2_with_indices(&mut self, x: &Value) -> (Value, Value) {
        let mut out =
            self.node("MaxPool", &[&x.0], 2, vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])]);
        let indices = out.pop().expect("two outputs");
        (out.pop().expect("two outputs"), indices)
    }

    fn max_unpool_2x2(&mut self, x: &Value, indices: &Value, like: &Value) -> Value {
        // Output shape: x's batch and channels, like's height and width.
        let nc = self.shape_slice(x, 0, 2);
        let hw = self.shape_slice(like, 2, 4);
        let shape = self.node1("Concat", &[&nc.0, &hw.0], vec![attr_int("axis", 0)]);
        self.node1(
            "MaxUnpool",
            &[&x.0, &indices.0, &shape.0],
            vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
        )
    }

    fn avg_pool(&mut self, x: &Value, k: usize, stride: usize, pad: usize) -> Value {
        let (k, s, p) = (k as i64, stride as i64, pad as i64);
        self.node1(
            "AveragePool",
            &[&x.0],
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[p, p, p, p]),
                attr_int("count_include_pad", 1),
            ],
        )
    }

    fn global_avg_pool(&mut self, x: &Value) -> Value {
        self.node1("GlobalAveragePool", &[&x.0], vec![])
    }

    fn resize_bilinear_like(&mut self, x: &Value, like: &Value) -> Value {
        let nc = self.shape_slice(x, 0, 2);
        let hw = self.shape_slice(like, 2, 4);
        let sizes = self.node1("Concat", &[&nc.0, &hw.0], vec![attr_int("axis", 0)]);
        self.node1("Resize", &[&x.0, "", "", &sizes.0], resize_attributes())
    }

    fn resize_bilinear_by(&mut self, x: &Value, factor: usize) -> Value {
        let f = factor as f32;
        let scales = self.floats("c", &[4], &[1.0, 1.0, f, f]);
        self.node1("Resize", &[&x.0, "", &scales], resize_attributes())
    }
}

/// Linear interpolation with aligned corners: Burn's (and the reference networks') in-network
/// resize (see ARCHITECTURE.md, "two resize conventions").
fn resize_attributes() -> Vec<AttributeProto> {
    vec![attr_string("mode", "linear"), attr_string("coordinate_transformation_mode", "align_corners")]
}
