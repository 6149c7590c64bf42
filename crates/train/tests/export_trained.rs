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
    runs_from_an_onnx_teacher(dir.path(), &run_dir);
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
    // int8 export is held to its float32 predictions in the export crate's parity tests.) The
    // form is fixed: `auto` would choose it by timing.
    let int8 = dir.join("student-int8.onnx");
    let args = [
        "export".as_ref(),
        "--run".as_ref(),
        run_dir.as_os_str(),
        "--out".as_ref(),
        int8.as_os_str(),
        "--int8".as_ref(),
        "--int8-activations".as_ref(),
        "int8".as_ref(),
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

/// The run's teacher given back to `train` as a plain ONNX file (`export --model teacher`,
/// logits only, as any framework's export): named by its inner tap tensor it trains the same
/// student, bit for bit, as the run that trained it (which distilled from the same graph on ONNX
/// Runtime) and scores the same, as does relkd's own export with features, which needs no name;
/// a plain file without a name distils through the logit terms only. A file
/// whose relkd metadata contradicts the run is refused before a run folder exists.
fn runs_from_an_onnx_teacher(dir: &std::path::Path, run_dir: &std::path::Path) {
    use onnx_protobuf::Message;

    let plain = dir.join("teacher-plain.onnx");
    let args = ["export", "--run", run_dir.to_str().unwrap(), "--model", "teacher", "--out", plain.to_str().unwrap()];
    relkd_export::cli::run(relkd_export::cli::Cli::try_parse_from(args).unwrap()).unwrap();
    let with_features = std::fs::read(run_dir.join("teacher-features.onnx")).unwrap();
    let with_features = onnx_protobuf::ModelProto::parse_from_bytes(&with_features).unwrap();
    let tap = with_features.graph.node.iter().find(|n| n.output == ["features"]).unwrap().input[0].clone();

    let request = |out: &str, features: Option<&str>| RunRequest {
        config: Some(dir.join("tiny.yaml")),
        out: Some(dir.join(out)),
        teacher_onnx: Some(plain.clone()),
        teacher_features: features.map(str::to_string),
        ..RunRequest::default()
    };
    let rows = |run: &std::path::Path, model: &str| -> Vec<String> {
        let csv = std::fs::read_to_string(run.join("scores.csv")).unwrap();
        csv.lines()
            .filter(|l| l.starts_with(&format!("{model},")))
            .map(|l| l.split_once(',').unwrap().1.to_string())
            .collect()
    };
    let named = run(&request("onnx-named", Some(&tap))).unwrap();
    assert_eq!(rows(&named, "student"), rows(run_dir, "student"), "the same student from the same graph");
    let dice =
        |rows: Vec<String>| -> Vec<String> { rows.iter().map(|r| r.split(',').nth(3).unwrap().to_string()).collect() };
    assert_eq!(dice(rows(&named, "teacher")), dice(rows(run_dir, "teacher")), "ONNX Runtime scores it as Burn did");
    assert!(rows(&named, "teacher")[0].starts_with("teacher-plain,"), "{:?}", rows(&named, "teacher"));
    let report = std::fs::read_to_string(named.join("report.md")).unwrap();
    assert!(
        report.contains(&format!("distilling from its tensor '{tap}'"))
            && report.contains("| teacher teacher-plain.onnx |"),
        "{report}"
    );
    assert!(!named.join("teacher.bpk").exists(), "nothing of the teacher is trained or copied");

    // relkd's own export with its tap as an output needs no name: its metadata says so.
    let own = RunRequest { teacher_onnx: Some(run_dir.join("teacher-features.onnx")), ..request("onnx-own", None) };
    let own = run(&own).unwrap();
    assert_eq!(rows(&own, "student"), rows(run_dir, "student"));
    assert!(std::fs::read_to_string(own.join("report.md")).unwrap().contains("distilling from its tensor 'features'"));

    let logits_only = run(&request("onnx-logits", None)).unwrap();
    let report = std::fs::read_to_string(logits_only.join("report.md")).unwrap();
    assert!(report.contains("distilled through its logits only"), "{report}");
    let card = std::fs::read_to_string(logits_only.join("student.yaml")).unwrap();
    assert!(card.contains("LM λ=") && card.contains("AAM λ=") && !card.contains("KMM"), "{card}");

    // relkd metadata that contradicts the run: the teacher takes 32-px slices, this run 48.
    std::fs::write(dir.join("tiny-48.yaml"), TINY.replace("size: 32, context: 0", "size: 48, context: 0")).unwrap();
    let mismatched = RunRequest { config: Some(dir.join("tiny-48.yaml")), ..request("onnx-48", Some(&tap)) };
    let refused = run(&mismatched).unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("teacher-plain.onnx") && message.contains("32×32 px slices"), "{message}");
    assert!(!dir.join("onnx-48").exists(), "refused before the run folder exists");

    // Seeds (a grid) train a teacher per seed; a file cannot be one.
    let seeds = relkd_train::run::run_seeds(&request("onnx-seeds", Some(&tap)), &[0, 1]).unwrap_err();
    assert!(format!("{seeds:#}").contains("for single runs"), "{seeds:#}");
    assert!(!dir.join("onnx-seeds").exists());
}
