//! PyTorch's own ONNX exports of a small UNet++ as teachers: ci/torch_reference.py's network at
//! base width 2, written by `torch.onnx.export` with each of PyTorch's exporters
//! (tests/fixtures/make_torch_models.py; no PyTorch is needed to run this). Named by their own
//! node names, their x3_0 is the feature a tiny phantom run distils an ENet from end to end.

use std::sync::Arc;

use burn::tensor::{Device, Tensor};
use relkd_infer::runtime::Provider;
use relkd_train::run::{RunRequest, run};
use relkd_train::teacher::{OnnxTeacher, Teacher};

const TINY: &str = include_str!("../../../tests/fixtures/tiny-run.yaml");

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// The values of `column` in `model`'s rows of a run's metrics.csv.
fn metric(run: &std::path::Path, model: &str, column: &str) -> Vec<String> {
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let index = lines.next().unwrap().split(',').position(|c| c == column).unwrap();
    lines.filter(|l| l.starts_with(&format!("{model},"))).map(|l| l.split(',').nth(index).unwrap().into()).collect()
}

#[test]
fn pytorchs_unetpp_export_distils_an_enet_through_its_x3_0() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("RELKD_CACHE", dir.path().join("cache")) };
    std::fs::write(dir.path().join("tiny.yaml"), TINY).unwrap();
    // x3_0 as each exporter names it: TorchScript after the modules, dynamo by op count (the
    // 14th ReLU: two per node, x0_0, x1_0, x0_1, x2_0, x1_1, x0_2, then x3_0).
    let exports = [
        ("torch_unetpp_torchscript.onnx", "/nodes.3.0/nodes.3.0.5/Relu_output_0"),
        ("torch_unetpp_dynamo.onnx", "relu_13"),
    ];
    for (file, tap) in exports {
        // UNet++'s x3_0 at base width 2: 16 channels at an eighth of the input's size.
        let teacher = OnnxTeacher::from_file(&fixture(file), Some(tap), [2, 1, 32, 32], Provider::Cpu).unwrap();
        assert_eq!(teacher.feature_channels, Some(16), "{file}");
        let out = Teacher::Onnx(Arc::new(teacher)).forward_features(Tensor::zeros([1, 1, 32, 32], &Device::flex()));
        assert_eq!((out.logits.dims(), out.feature.unwrap().dims()), ([1, 2, 32, 32], [1, 16, 4, 4]), "{file}");

        let stem = file.trim_end_matches(".onnx");
        let request = RunRequest {
            config: Some(dir.path().join("tiny.yaml")),
            out: Some(dir.path().join(stem)),
            teacher_onnx: Some(fixture(file)),
            teacher_features: Some(tap.to_string()),
            ..RunRequest::default()
        };
        let run_dir = run(&request).unwrap();
        let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
        assert!(report.contains(&format!("| teacher {file} |")), "{report}");
        assert!(report.contains(&format!("distilling from its tensor '{tap}'")), "{report}");
        let kmm = metric(&run_dir, "student", "kmm");
        assert_eq!(kmm.len(), 3, "three epochs of the distilled student");
        assert!(kmm.iter().all(|v| v.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0)), "{kmm:?}");
        assert!(metric(&run_dir, "baseline", "kmm").iter().all(String::is_empty));
    }
}
