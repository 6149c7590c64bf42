//! Every network lowered to ONNX and run by ONNX Runtime gives Burn's logits.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use onnx_protobuf::Message;
use relkd_core::transforms::Preprocessing;
use relkd_export::{Acceptance, FP32_TOLERANCE, Options, Precision, Probe, export, to_onnx};
use relkd_models::{Architecture, Network, NetworkConfig, Segmenter, trainable_params};
use relkd_runs::card::ModelCard;

/// A network whose parameters and batch-norm statistics are all away from their initial
/// values (one Adam step on random data), so that folding is really exercised.
fn trained(architecture: Architecture, width: f64, in_channels: usize) -> Network {
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

fn check(architecture: Architecture, width: f64, in_channels: usize) {
    let net = trained(architecture, width, in_channels);
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
    let graph = model.graph.as_ref().unwrap();
    // No training-only parts: no dropout, no KMM adapter, and batch norms folded or affine.
    assert!(graph.node.iter().all(|n| n.op_type != "Dropout" && n.op_type != "BatchNormalization"));
}

#[test]
fn enet_matches_burn() {
    check(Architecture::Enet, 0.25, 1);
}

#[test]
fn espnet_matches_burn() {
    check(Architecture::Espnet, 0.5, 1);
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
        &Options { precision: Precision::F16, opset: 17, acceptance: Acceptance::Masks(0.01) },
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
        &Options { precision: Precision::F16, opset: 17, acceptance: Acceptance::Logits(1e-7) },
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
        let bytes = to_onnx(&net, &card, Precision::F32, 17).write_to_bytes().unwrap().len() as f64;
        let raw = 4.0 * card.live_params as f64;
        assert!(bytes <= 1.05 * raw, "{architecture}: {bytes} bytes for {} live parameters", card.live_params);
        if architecture == Architecture::Enet {
            assert!(bytes <= 1.4e6, "ENet: {bytes} bytes");
        }
    }
}
