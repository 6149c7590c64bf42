//! The cost read from an ONNX graph, against counts made elsewhere: by hand for the tiny
//! fixture, by PyTorch's forward hooks for PyTorch's own exports of a small UNet++
//! (tests/fixtures/make_torch_models.py); relkd's exports are checked against the models' own
//! count in the export crate's parity tests.

use std::path::PathBuf;

use relkd_infer::graph::{GraphError, cost};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

#[test]
fn a_strided_convolution_by_hand() {
    // 3×3, 1 → 2 channels, stride 2, pads 1: a 32×40 input gives 16×20 outputs, each 2 × 9 MACs.
    let c = cost(&fixture("tiny_strided.onnx"), 1, 32, 40).unwrap();
    assert_eq!(c.params, 2 * 9 + 2);
    assert_eq!(c.gflops, Ok(2.0 * (16 * 20 * 2 * 9) as f64 / 1e9));
}

#[test]
fn pytorch_exports_give_pytorchs_own_mac_count() {
    let expected = std::fs::read_to_string(fixture("torch_models.json")).unwrap();
    let macs: u64 = expected
        .split("\"conv_macs\":")
        .nth(1)
        .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .expect("conv_macs in torch_models.json");
    for file in ["torch_unetpp_torchscript.onnx", "torch_unetpp_dynamo.onnx"] {
        // The fixture's input: 1×1×64×48.
        let c = cost(&fixture(file), 1, 64, 48).unwrap_or_else(|e| panic!("{file}: {e}"));
        let counted = c.gflops.unwrap_or_else(|e| panic!("{file}: {e}")) * 1e9 / 2.0;
        assert_eq!(counted.round() as u64, macs, "{file}");
        assert!(c.params > 30_000, "{file}: {} parameters", c.params);
    }
}

#[test]
fn an_operator_it_cannot_follow_leaves_params_known_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.onnx");
    // The tiny model with its convolution renamed to an operator no exporter writes.
    let mut bytes = std::fs::read(fixture("tiny_conv.onnx")).unwrap();
    let at = bytes.windows(4).position(|w| w == b"Conv").expect("the Conv node");
    bytes[at..at + 4].copy_from_slice(b"Cnv9");
    std::fs::write(&path, bytes).unwrap();
    let c = cost(&path, 1, 8, 8).unwrap();
    assert_eq!(c.params, 2 * 9 + 2);
    match c.gflops {
        Err(GraphError::Unsupported { op, .. }) => assert_eq!(op, "Cnv9"),
        other => panic!("{other:?}"),
    }
}
