//! A student trained by `train` (tiny phantom run), exported by `export`'s command (through its
//! library, as the binary calls it), then run by ONNX Runtime on a whole phantom volume of the
//! unseen site. It lives with `train` because only `train` can make the run it needs: `export`
//! itself never depends on the training crate.

use clap::Parser;

use burn::module::Module;
use burn::tensor::Device;
use relkd_core::metrics::dice;
use relkd_core::nifti_io::{read_volume, write_mask};
use relkd_export::OnnxPredictor;
use relkd_infer::model::Model;
use relkd_infer::runtime::Provider;
use relkd_train::checkpoint::load_model;
use relkd_train::config::ExperimentConfig;
use relkd_train::evaluate::predict_volume;
use relkd_train::run::{RunRequest, prepare, run};

const TINY: &str = include_str!("../../../tests/fixtures/tiny-run.yaml");

#[test]
fn a_trained_student_exports_and_segments_a_phantom_volume() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("RELKD_CACHE", dir.path().join("cache")) };
    std::fs::write(dir.path().join("tiny.yaml"), TINY).unwrap();
    let request = RunRequest {
        config: Some(dir.path().join("tiny.yaml")),
        out: Some(dir.path().join("run")),
        ..RunRequest::default()
    };
    let run_dir = run(&request).unwrap();

    let onnx = dir.path().join("student.onnx");
    let export = || {
        let args = ["export".as_ref(), "--run".as_ref(), run_dir.as_os_str(), "--out".as_ref(), onnx.as_os_str()];
        relkd_export::cli::run(relkd_export::cli::Cli::try_parse_from(args).unwrap())
    };
    let checks = export().unwrap();
    let probes: Vec<&str> = checks.iter().map(|c| c.what.as_str()).collect();
    assert_eq!(checks.len(), 3, "random, odd-sized and real slices: {probes:?}");
    assert!(probes[2].contains("slices of HCRUDB/"), "{probes:?}");
    // The export is recorded for `infer`.
    let latest = std::fs::read_to_string(dir.path().join("latest-export")).unwrap();
    assert_eq!(std::path::Path::new(&latest), std::path::absolute(&onnx).unwrap());
    // A second export to the same file needs --force.
    let again = export().unwrap_err();
    assert!(format!("{again:#}").contains("--force"), "{again:#}");
    // Not even --force writes over the checkpoint it reads.
    let checkpoint = run_dir.join("student.bpk");
    let bytes = std::fs::read(&checkpoint).unwrap();
    let args = [
        "export".as_ref(),
        "--run".as_ref(),
        run_dir.as_os_str(),
        "--out".as_ref(),
        checkpoint.as_os_str(),
        "--force".as_ref(),
    ];
    let over = relkd_export::cli::run(relkd_export::cli::Cli::try_parse_from(args).unwrap()).unwrap_err();
    assert!(format!("{over:#}").contains("is the checkpoint"), "{over:#}");
    assert!(std::fs::read(&checkpoint).unwrap() == bytes);

    // ONNX Runtime segments a whole test volume as Burn does.
    let mut config = ExperimentConfig::load(&run_dir.join("config.yaml")).unwrap();
    let (_, cases) = prepare(&mut config).unwrap();
    let case = &cases.test[0];
    let device = Device::flex();
    let (student, card) = load_model(&run_dir.join("student.bpk"), &device).unwrap();
    let student = student.valid();
    let prep = card.preprocessing;
    let burn_mask = predict_volume(&case.image, &prep, 8, &device, &|x| {
        use relkd_models::Segmenter;
        student.forward(x)
    });
    let predictor = OnnxPredictor::new(&onnx, 2).unwrap();
    let onnx_mask = predict_volume(&case.image, &prep, 8, &device, &|x| predictor.logits(x));
    assert_eq!(onnx_mask.len(), case.mask.len());
    let agreement = dice(&onnx_mask, &burn_mask);
    assert!(
        agreement >= 0.99 || (burn_mask.iter().all(|&v| v == 0) && onnx_mask.iter().all(|&v| v == 0)),
        "ONNX Runtime and Burn masks agree to Dice {agreement}"
    );
    let (a, b) = (dice(&onnx_mask, &case.mask), dice(&burn_mask, &case.mask));
    assert!((a - b).abs() < 0.01, "Dice against the truth: ONNX {a}, Burn {b}");

    // `infer`'s library reads the preprocessing from the file's metadata and writes the mask
    // on the source grid.
    let mut model = Model::open(&onnx, Provider::Cpu, 2).unwrap();
    assert_eq!(model.info.preprocessing, Some(prep));
    let segmentation = model.segment(&case.image, &model.preprocessing(None, None).unwrap(), 8, false).unwrap();
    assert_eq!(segmentation.mask, onnx_mask);
    let written = dir.path().join("mask.nii.gz");
    write_mask(&written, &segmentation.mask, &case.image).unwrap();
    let back = read_volume(&written).unwrap();
    assert_eq!((back.dims, back.affine), (case.image.dims, case.image.affine));
    let back: Vec<u8> = back.data.iter().map(|&v| v as u8).collect();
    assert_eq!(dice(&back, &case.mask), a);
}
