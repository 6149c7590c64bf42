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

    int8_and_web_exports(dir.path(), &run_dir, case, &onnx_mask);
    teacher_with_features(dir.path(), &run_dir);
}

/// On the CPU with ONNX Runtime provisioned, `teacher.runtime: auto` ran the run's teacher on
/// ONNX Runtime (its export in the run folder, said in the report), and `export --model teacher
/// --with-features` writes the same two outputs.
fn teacher_with_features(dir: &std::path::Path, run_dir: &std::path::Path) {
    use onnx_protobuf::Message;

    let report = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    assert!(report.contains("teacher on ONNX Runtime"), "{report}");
    let outputs = |path: &std::path::Path| -> Vec<String> {
        let model = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
        model.graph.output.iter().map(|o| o.name.clone()).collect()
    };
    assert_eq!(outputs(&run_dir.join("teacher-features.onnx")), ["logits", "features"]);
    let out = dir.join("teacher.onnx");
    let args = ["export", "--run", run_dir.to_str().unwrap(), "--model", "teacher", "--with-features", "--out"];
    let cli = relkd_export::cli::Cli::try_parse_from(args.iter().copied().chain([out.to_str().unwrap()])).unwrap();
    relkd_export::cli::run(cli).unwrap();
    assert_eq!(outputs(&out), ["logits", "features"]);
}

/// `infer`'s mask of `case` with the model in `path`.
fn model_mask(path: &std::path::Path, case: &relkd_core::dataset::Case) -> Vec<u8> {
    let mut model = Model::open(path, Provider::Cpu, 2).unwrap();
    let prep = model.preprocessing(None, None).unwrap();
    model.segment(&case.image, &prep, 8, false).unwrap().mask
}

/// `export --int8` and `export --web` on the same run: int8 is refused for a model it would
/// change, the web folder holds the page, its runtime and the float32 model.
fn int8_and_web_exports(
    dir: &std::path::Path,
    run_dir: &std::path::Path,
    case: &relkd_core::dataset::Case,
    float_mask: &[u8],
) {
    // int8: calibrated on the training sites, checked on the real slices only. The tiny run's
    // student is barely trained (logits without margins), so 8-bit activations move more than
    // 2% of its predictions: the export must refuse and write nothing. (A trained network's
    // int8 export is held to its float32 predictions in the export crate's parity tests.)
    let int8 = dir.join("student-int8.onnx");
    let args = [
        "export".as_ref(),
        "--run".as_ref(),
        run_dir.as_os_str(),
        "--out".as_ref(),
        int8.as_os_str(),
        "--int8".as_ref(),
    ];
    let refused = relkd_export::cli::run(relkd_export::cli::Cli::try_parse_from(args).unwrap()).unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("predicted classes differ") && message.contains("nothing was written"), "{message}");
    assert!(!int8.exists());

    // The web page: the folder, its model, its runtime; an occupied folder needs --force.
    let site = dir.join("site");
    let web = || {
        let args = ["export".as_ref(), "--run".as_ref(), run_dir.as_os_str(), "--web".as_ref(), site.as_os_str()];
        relkd_export::cli::run(relkd_export::cli::Cli::try_parse_from(args).unwrap())
    };
    web().unwrap();
    for file in ["index.html", "relkd.js", "model.onnx", "ort.wasm.min.js", "ort-wasm-simd-threaded.wasm"] {
        assert!(site.join(file).is_file(), "{file}");
    }
    assert_eq!(model_mask(&site.join("model.onnx"), case), float_mask, "the page's model is the float32 export");
    let occupied = web().unwrap_err();
    assert!(format!("{occupied:#}").contains("--force"), "{occupied:#}");
}
