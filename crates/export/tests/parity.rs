//! Every network lowered to ONNX and run by ONNX Runtime gives Burn's logits.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use onnx_protobuf::Message;
use relkd_core::transforms::Preprocessing;
use relkd_export::{
    Acceptance, Activations, FP32_TOLERANCE, INT8_MASK_DISAGREEMENT, Int8Export, Int8Options, OnnxPredictor, Options,
    Outputs, Precision, Probe, export, export_int8, to_onnx,
};
use relkd_models::{Architecture, Network, NetworkConfig, Segmenter, trainable_params};
use relkd_runs::card::ModelCard;

/// The flex device's random stream is shared by the tests of this binary, which run in
/// parallel: a test that needs the same draws every run holds this while it seeds and draws.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock_device_rng() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A network whose parameters and batch-norm statistics are all away from their initial
/// values (one Adam step on random data), so that folding is really exercised.
fn trained(architecture: Architecture, width: f64, in_channels: usize) -> Network {
    let _draws = lock_device_rng();
    let device = Device::flex().autodiff();
    device.seed(7);
    let net = NetworkConfig::new(architecture).with_width(width).with_in_channels(in_channels).init(&device);
    let x = Tensor::<4>::random([2, in_channels, 32, 32], Distribution::Normal(0.5, 2.0), &device);
    let loss = net.forward(x).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    let net = AdamConfig::new().init().step(0.01, net, grads);
    net.valid()
}

fn card(net: &Network, architecture: Architecture, width: f64, in_channels: usize) -> ModelCard {
    ModelCard {
        model: "student".into(),
        architecture,
        width,
        in_channels,
        classes: 2,
        preprocessing: Preprocessing { size: 32, context: (in_channels - 1) / 2 },
        live_params: trainable_params(net),
        trained_sites: vec!["RUNMC".into(), "BMC".into()],
        target_site: "HK".into(),
        distillation: vec!["LM λ=0.2".into()],
        run_id: "test".into(),
        config_hash: "0123456789abcdef".into(),
        epochs: 1,
        best_epoch: Some(1),
        best_val_dice: Some(0.5),
        history: vec![],
    }
}

/// Exports `net`, checks it against Burn and its metadata, and returns the graph's operators.
fn check_network(net: Network, architecture: Architecture, width: f64, in_channels: usize) -> Vec<String> {
    let card = card(&net, architecture, width, in_channels);
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    // An aligned size, and one the graph must pad to the stride and crop back.
    let probes = [Probe::random([2, in_channels, 32, 48], &device), Probe::random([1, in_channels, 37, 45], &device)];
    let checks =
        export(&net, &card, &out, &Options::fp32(), &probes, &device).unwrap_or_else(|e| panic!("{architecture}: {e}"));
    for c in &checks {
        assert!(c.max_abs_diff <= FP32_TOLERANCE && c.beyond_tolerance == 0, "{architecture}: {c:?}");
    }
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&out).unwrap()).unwrap();
    let meta = |k: &str| model.metadata_props.iter().find(|e| e.key == k).map(|e| e.value.clone());
    assert_eq!(meta("relkd.architecture").as_deref(), Some(architecture.name()));
    assert_eq!(meta("relkd.live_params"), Some(card.live_params.to_string()));
    assert_eq!(meta("relkd.normalization").as_deref(), Some("z-score per volume"));
    assert_eq!(meta("relkd.context"), Some(((in_channels - 1) / 2).to_string()));
    // The file's cost as `infer bench` reads it from the graph (shapes followed through the
    // padding arithmetic) is the one the network counts on its own lowering, plus the batch
    // norms that follow no convolution: the file holds them as depthwise 1×1 convolutions
    // (c·h·w MACs each), the network's count leaves normalisation out. None in UNet++ and
    // DeepLabV3+; under 2% in the students.
    let macs = |gflops: f64| (gflops * 1e9 / 2.0).round() as u64;
    let from_graph = macs(relkd_infer::graph::cost(&out, in_channels, 37, 45).unwrap().gflops.unwrap());
    let counted = macs(net.gflops(37, 45));
    assert!(from_graph >= counted && from_graph - counted <= counted / 50, "{architecture}: {from_graph} vs {counted}");
    if matches!(architecture, Architecture::Unetpp | Architecture::Deeplabv3plus) {
        assert_eq!(from_graph, counted, "{architecture}");
    }
    let graph = model.graph.as_ref().unwrap();
    // No training-only parts: no dropout, no KMM adapter, and batch norms folded or affine.
    assert!(graph.node.iter().all(|n| n.op_type != "Dropout" && n.op_type != "BatchNormalization"));
    graph.node.iter().map(|n| n.op_type.clone()).collect()
}

fn check(architecture: Architecture, width: f64, in_channels: usize) -> Vec<String> {
    check_network(trained(architecture, width, in_channels), architecture, width, in_channels)
}

/// Gives every PReLU the slopes −0.5, 1.5, 0.3, −0.5, … (trained slopes may leave [0, 1]).
struct SpreadSlopes {
    in_prelu: bool,
}

impl ModuleMapper for SpreadSlopes {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.in_prelu = container_type == "Struct:PRelu";
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.in_prelu = false;
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !self.in_prelu {
            return param;
        }
        param.map(|alpha| {
            let values: Vec<f32> = (0..alpha.shape().num_elements()).map(|i| [-0.5, 1.5, 0.3][i % 3]).collect();
            Tensor::from_data(TensorData::new(values, alpha.shape()), &alpha.device())
        })
    }
}

#[test]
fn enet_matches_burn() {
    check(Architecture::Enet, 0.25, 1);
}

#[test]
fn espnet_matches_burn() {
    let ops = check(Architecture::Espnet, 0.5, 1);
    // Per-channel slopes in [0, 1] become Max(x, a·x), which ONNX Runtime keeps in its
    // blocked layout; a PRelu node would not be.
    assert!(ops.iter().any(|op| op == "Max") && !ops.iter().any(|op| op == "PRelu"), "{ops:?}");
}

#[test]
fn espnet_with_slopes_outside_0_1_matches_burn() {
    let net = trained(Architecture::Espnet, 0.5, 1).map(&mut SpreadSlopes { in_prelu: false });
    let ops = check_network(net, Architecture::Espnet, 0.5, 1);
    // relu(x) − a·relu(−x) for these, Max(x, a·x) for none.
    assert!(ops.iter().any(|op| op == "Neg") && !ops.iter().any(|op| op == "Max"), "{ops:?}");
}

#[test]
fn erfnet_matches_burn_with_three_context_slices() {
    check(Architecture::Erfnet, 0.25, 3);
}

#[test]
fn unetpp_matches_burn() {
    check(Architecture::Unetpp, 0.125, 1);
}

#[test]
fn deeplabv3plus_matches_burn() {
    check(Architecture::Deeplabv3plus, 0.125, 1);
}

/// `Outputs::LogitsAndFeatures`: the tap as a second output `features`, which `export` checks
/// against Burn's `forward_features` (within 1e-4) before writing; its shape is the tap's
/// channels at the padded size over the tap's stride.
#[test]
fn teachers_export_their_tap_as_a_second_output() {
    for architecture in [Architecture::Unetpp, Architecture::Deeplabv3plus] {
        let net = trained(architecture, 0.125, 1);
        let card = card(&net, architecture, 0.125, 1);
        let device = Device::flex();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("teacher.onnx");
        let probes = [Probe::random([2, 1, 32, 48], &device), Probe::random([1, 1, 37, 45], &device)];
        let options = Options { outputs: Outputs::LogitsAndFeatures, ..Options::fp32() };
        export(&net, &card, &out, &options, &probes, &device).unwrap_or_else(|e| panic!("{architecture}: {e}"));
        let model = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&out).unwrap()).unwrap();
        let names: Vec<&str> = model.graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["logits", "features"], "{architecture}");
        let tap = net.tap();
        let (shape, _) = relkd_export::OnnxPredictor::new(&out, 1)
            .unwrap()
            .output([1, 1, 37, 45], &probes[1].data, "features")
            .unwrap();
        let padded = |n: usize| n.next_multiple_of(net.total_stride());
        assert_eq!(shape, [1, tap.channels, padded(37) / tap.stride, padded(45) / tap.stride], "{architecture}");
    }
}

#[test]
fn half_precision_halves_the_file_and_stays_close() {
    let net = trained(Architecture::Enet, 0.5, 1);
    let card = card(&net, Architecture::Enet, 0.5, 1);
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let (full, half) = (dir.path().join("f32.onnx"), dir.path().join("f16.onnx"));
    let probes = [Probe::random([2, 1, 32, 32], &device)];
    export(&net, &card, &full, &Options::fp32(), &probes, &device).unwrap();
    let checks = export(
        &net,
        &card,
        &half,
        &Options {
            precision: Precision::F16,
            opset: 17,
            acceptance: Acceptance::Masks(0.01),
            outputs: Outputs::Logits,
        },
        &probes,
        &device,
    )
    .unwrap();
    let ratio = std::fs::metadata(&half).unwrap().len() as f64 / std::fs::metadata(&full).unwrap().len() as f64;
    assert!((0.45..0.6).contains(&ratio), "fp16 / fp32 size {ratio}");
    assert!(checks[0].max_abs_diff > 0.0 && checks[0].mask_disagreement <= 20, "{:?}", checks[0]);
}

#[test]
fn a_graph_that_disagrees_is_not_written() {
    let net = trained(Architecture::Espnet, 0.5, 1);
    let card = card(&net, Architecture::Espnet, 0.5, 1);
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    // Half-precision weights cannot meet the float32 bound: the export must refuse.
    let probe = Probe::random([1, 1, 32, 32], &device);
    let err = export(
        &net,
        &card,
        &out,
        &Options {
            precision: Precision::F16,
            opset: 17,
            acceptance: Acceptance::Logits(1e-7),
            outputs: Outputs::Logits,
        },
        &[probe],
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("disagrees with Burn"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written, no temporary left");
}

#[test]
fn paper_width_files_are_within_5_percent_of_4_bytes_per_live_parameter() {
    let device = Device::flex();
    for architecture in Architecture::ALL {
        let net = NetworkConfig::new(architecture).init(&device);
        let card = card(&net, architecture, 1.0, 1);
        let bytes = to_onnx(&net, &card, Precision::F32, 17, Outputs::Logits).write_to_bytes().unwrap().len() as f64;
        let raw = 4.0 * card.live_params as f64;
        assert!(bytes <= 1.05 * raw, "{architecture}: {bytes} bytes for {} live parameters", card.live_params);
        if architecture == Architecture::Enet {
            assert!(bytes <= 1.4e6, "ENet: {bytes} bytes");
        }
    }
}

/// `n` noisy 32×32 images of a bright disk somewhere, and the disk's mask.
fn disks(n: usize, device: &Device) -> (Tensor<4>, Vec<i64>) {
    let noise = Tensor::<4>::random([n, 1, 32, 32], Distribution::Normal(0.0, 0.3), device).into_data();
    let noise = noise.try_into_vec::<f32>().unwrap();
    let centres = Tensor::<2>::random([n, 3], Distribution::Uniform(0.0, 1.0), device).into_data();
    let centres = centres.try_into_vec::<f32>().unwrap();
    let mut labels = vec![0i64; n * 32 * 32];
    let mut image = noise;
    for i in 0..n {
        let (cy, cx, r) =
            (8.0 + 16.0 * centres[3 * i], 8.0 + 16.0 * centres[3 * i + 1], 4.0 + 5.0 * centres[3 * i + 2]);
        for p in 0..32 * 32 {
            let (y, x) = ((p / 32) as f32, (p % 32) as f32);
            if (y - cy).powi(2) + (x - cx).powi(2) < r * r {
                labels[i * 1024 + p] = 1;
                image[i * 1024 + p] += 1.0;
            }
        }
    }
    (Tensor::from_data(TensorData::new(image, [n, 1, 32, 32]), device), labels)
}

/// A network that has learned to find the disks (60 Adam steps), so that its logits have the
/// margins of a trained model rather than an initialisation's.
fn fitted(architecture: Architecture, width: f64) -> Network {
    let _draws = lock_device_rng();
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut net = NetworkConfig::new(architecture).with_width(width).init(&device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&device);
    for _ in 0..60 {
        let (x, labels) = disks(8, &device);
        let logits = net.forward(x).permute([0, 2, 3, 1]).reshape([8 * 32 * 32, 2]);
        let labels = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(labels, [8 * 32 * 32]), &device);
        let loss = loss_fn.forward(logits, labels);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optimizer.step(1e-2, net, grads);
    }
    net.valid()
}

fn disk_probe(n: usize, device: &Device) -> Probe {
    let data = disks(n, device).0.into_data().try_into_vec::<f32>().unwrap();
    Probe { what: format!("{n} disk images"), shape: [n, 1, 32, 32], data, unpool_ties: true }
}

/// Paper-width ENet fitted to disks, its float32 file and an int8 one with `activations`, both
/// checked on the same probe, in `dir`; returns the two paths and the int8 export.
fn int8_export(
    dir: &std::path::Path,
    activations: Option<Activations>,
) -> (std::path::PathBuf, std::path::PathBuf, Int8Export) {
    let net = fitted(Architecture::Enet, 1.0);
    let card = card(&net, Architecture::Enet, 1.0, 1);
    let device = Device::flex();
    let (full, int8) = (dir.join("f32.onnx"), dir.join("int8.onnx"));
    // Calibrated on some images, checked on others of the same kind.
    let (calibration, probes) = {
        let _draws = lock_device_rng();
        device.seed(11);
        let calibration: Vec<Probe> = (0..4).map(|_| disk_probe(8, &device)).collect();
        (calibration, [disk_probe(8, &device)])
    };
    export(&net, &card, &full, &Options::fp32(), &probes, &device).unwrap();
    let options = Int8Options {
        opset: 17,
        calibration: &calibration,
        acceptance: Acceptance::Masks(INT8_MASK_DISAGREEMENT),
        activations,
    };
    let written = export_int8(&net, &card, &int8, &options, &probes, &device).unwrap();
    let pixels = 8 * 32 * 32;
    let check = &written.checks[0];
    assert!(check.mask_disagreement as f64 <= INT8_MASK_DISAGREEMENT * pixels as f64, "{check:?}");
    // Paper-width ENet: 1.35 MB in float32, at most 0.45 MB in int8.
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&int8) <= 450_000, "int8: {} bytes (float32: {})", size(&int8), size(&full));
    // The same weights, counted from each graph: float32 elements = int8 and int32 elements.
    let cost = |p: &std::path::Path| relkd_infer::graph::cost(p, 1, 32, 32).unwrap();
    let (a, b) = (cost(&full), cost(&int8));
    assert_eq!((a.params, a.gflops.clone().unwrap()), (b.params, b.gflops.unwrap()));
    (full, int8, written)
}

/// Nodes of each kind in the file at `path`: (convolutions, QuantizeLinear, DequantizeLinear),
/// and whether it holds int8 initializers.
fn qdq_counts(path: &std::path::Path) -> (usize, usize, usize, bool) {
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
    let int8 = graph.initializer.iter().any(|t| t.data_type == onnx_protobuf::tensor_proto::DataType::INT8 as i32);
    (count("Conv") + count("ConvTranspose"), count("QuantizeLinear"), count("DequantizeLinear"), int8)
}

#[test]
fn int8_keeps_the_predictions_at_a_quarter_of_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let (_, int8, written) = int8_export(dir.path(), Some(Activations::Int8));
    assert_eq!((written.activations, written.timing), (Activations::Int8, None));
    let (convs, quantize, dequantize, int8_weights) = qdq_counts(&int8);
    // Weights of every convolution, and all but the last convolution's output.
    assert!(dequantize >= convs * 2, "{dequantize} DQ for {convs} convolutions");
    assert!(quantize >= convs - 1, "{quantize} Q for {convs} convolutions");
    assert!(int8_weights);
}

#[test]
fn int8_with_float_activations_dequantises_the_weights_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (full, int8, written) = int8_export(dir.path(), Some(Activations::Float));
    assert_eq!(written.activations, Activations::Float);
    let (convs, quantize, dequantize, int8_weights) = qdq_counts(&int8);
    // One Dequantize per convolution's weights (ENet's biases stay float), no activation quantised.
    assert_eq!((quantize, dequantize, int8_weights), (0, convs, true));
    // Only the weights' rounding differs: the logits stay near the float32 file's on average (not
    // at every pixel: a max-pool tie decided the other way moves ENet's unpooled values by order 1
    // in a 2×2 patch; one such pixel moved a logit by 6% of the largest in one run).
    let probe = {
        let _draws = lock_device_rng();
        let device = Device::flex();
        device.seed(12);
        disk_probe(4, &device)
    };
    let logits = |p: &std::path::Path| OnnxPredictor::new(p, 2).unwrap().run(probe.shape, &probe.data).unwrap().1;
    let (a, b) = (logits(&full), logits(&int8));
    let largest = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean_diff <= 0.01 * largest, "int8 weights move the logits by {mean_diff} on average (largest {largest})");
}

#[test]
fn int8_auto_writes_the_form_it_timed_faster() {
    let dir = tempfile::tempdir().unwrap();
    let (_, int8, written) = int8_export(dir.path(), None);
    let timing = written.timing.expect("timed");
    assert_eq!(written.activations, timing.faster());
    assert!(timing.runs >= 6 && timing.slices == 8, "{timing:?}");
    for ms in [timing.int8_activations_ms, timing.float_activations_ms, timing.float32_ms] {
        assert!(ms > 0.0 && ms.is_finite(), "{timing:?}");
    }
    let (_, quantize, _, _) = qdq_counts(&int8);
    assert_eq!(quantize > 0, written.activations == Activations::Int8);
    // Nothing of the timing is left beside the file.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
