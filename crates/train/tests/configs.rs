//! The shipped configs parse and carry the paper's values; bad configs fail with the file named.

use std::path::{Path, PathBuf};

use relkd_models::Architecture;
use relkd_train::config::{ConfigError, ExperimentConfig};
use relkd_train::experiment::{GridSpec, Variant, load_base};
use relkd_train::protocol::Protocol;

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

/// Every run configuration under configs/ (the grids in configs/experiments/ are not runs).
fn shipped() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![configs_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "experiments") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn every_shipped_config_loads_and_round_trips() {
    let files = shipped();
    assert!(files.len() >= 3, "{files:?}");
    for path in files {
        let config = ExperimentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let again: ExperimentConfig = serde_yaml::from_str(&config.to_yaml()).unwrap();
        assert_eq!(again, config, "{}", path.display());
    }
}

#[test]
fn shipped_grids_load_with_their_base_configs() {
    let dir = configs_dir().join("experiments");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let grid = GridSpec::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let base =
            load_base(&dir.join(&grid.base), &grid.overrides).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name.starts_with("table3") {
            // Table 3: the baseline and every combination of the three modules.
            let mut subsets: Vec<String> = grid.distillers.iter().map(|v| v.name()).collect();
            subsets.sort();
            assert_eq!(subsets, ["aam", "kmm", "kmm+aam", "lm", "lm+aam", "lm+kmm", "lm+kmm+aam"], "{name}");
            assert_eq!(
                (grid.teachers.as_slice(), grid.students.as_slice()),
                (&[Architecture::Deeplabv3plus][..], &[Architecture::Enet][..])
            );
        }
        if name.starts_with("table2") {
            assert_eq!(grid.teachers.len() * grid.students.len(), 6, "{name}");
            assert_eq!(grid.distillers, [Variant::ALL_THREE], "{name}");
        }
        if name.starts_with("table") && !name.ends_with("-quick") {
            assert_eq!(grid.targets, ["all"], "{name}: the paper's tables cover every site");
        }
        if name.ends_with("-seeds") {
            // Claims rest on several seeds, on the quick setting's own target.
            assert_eq!((grid.seeds.len(), grid.targets.as_slice()), (3, &["HK".to_string()][..]), "{name}");
        }
        if name.starts_with("select-") {
            // A candidate of the quick defaults: the quick configuration, its losses alone changed.
            let quick = ExperimentConfig::load(&configs_dir().join("quick.yaml")).unwrap();
            let mut candidate = base.clone();
            candidate.losses = quick.losses.clone();
            assert_eq!(candidate.to_yaml(), quick.to_yaml(), "{name}");
            assert_ne!(base.losses, quick.losses, "{name}");
            assert_eq!((grid.seeds.len(), grid.targets.as_slice()), (3, &["HK".to_string()][..]), "{name}");
        }
        if name.starts_with("evidence-") {
            // Table 2 quick on the evaluation pool, seeds enough for a ±0.03 interval.
            assert_eq!(grid.teachers.len() * grid.students.len(), 6, "{name}");
            assert_eq!((grid.distillers.as_slice(), grid.seeds.len()), (&[Variant::ALL_THREE][..], 8), "{name}");
            assert_eq!(base.data.phantom.eval_cases, 40, "{name}");
            let quick = if name.ends_with("-loso") { "quick-loso.yaml" } else { "quick.yaml" };
            let mut plain = base.clone();
            plain.data.phantom.eval_cases = 0;
            plain.teacher_augmentation = None;
            let quick = ExperimentConfig::load(&configs_dir().join(quick)).unwrap();
            assert_eq!(plain.to_yaml(), quick.to_yaml(), "{name}: the quick configuration and the pool");
            assert_eq!(base.teacher_augmentation.is_some(), name.ends_with("-teacher-aug"), "{name}");
        }
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "evidence-table2",
            "evidence-table2-loso",
            "evidence-table2-teacher-aug",
            "pool-quick",
            "quick-loso-seeds",
            "quick-seeds",
            "select-balanced",
            "select-gate",
            "select-kd-at-0.01",
            "select-kd-at-0.03",
            "select-kd-at-0.1",
            "select-kd-at-1",
            "select-lambda-0.1",
            "select-lambda-paper",
            "table2",
            "table2-quick",
            "table3",
            "table3-quick",
            "table4-quick"
        ]
    );
}

#[test]
fn paper_configs_carry_the_papers_hyper_parameters() {
    for (file, protocol) in [("paper/cross.yaml", Protocol::Cross), ("paper/loso.yaml", Protocol::Loso)] {
        let c = ExperimentConfig::load(&configs_dir().join(file)).unwrap();
        assert_eq!(c.protocol, protocol);
        assert_eq!((c.preprocessing.size, c.training.batch_size, c.training.epochs), (384, 16, 100));
        assert_eq!((c.training.lr.max_lr, c.training.lr.base_lr, c.training.lr.step_size), (0.01, 1e-6, 2000));
        assert_eq!((c.losses.lambda.lm, c.losses.lambda.kmm, c.losses.lambda.aam), (0.2, 0.9, 0.9));
        assert_eq!((c.losses.segmentation.dice_weight, c.losses.segmentation.gamma), (0.5, 2.0));
        assert_eq!((c.losses.aam.dilations.clone(), c.losses.aam.margin), (vec![1, 2, 3], 3.0));
        assert_eq!((c.teacher.network().unwrap().width, c.student.width), (1.0, 1.0));
    }
    let quick = ExperimentConfig::load(&configs_dir().join("quick.yaml")).unwrap();
    let teacher = quick.teacher.network().unwrap().architecture;
    assert_eq!((teacher, quick.student.architecture), (Architecture::Unetpp, Architecture::Enet));
    assert!(quick.data.root.is_none(), "quick runs on the phantom");
}

#[test]
fn the_quick_loso_twin_differs_from_the_quick_run_in_its_protocol_only() {
    // The two must not drift apart (its λ once lagged behind quick.yaml's re-chosen ones).
    let quick = ExperimentConfig::load(&configs_dir().join("quick.yaml")).unwrap();
    let mut loso = ExperimentConfig::load(&configs_dir().join("quick-loso.yaml")).unwrap();
    assert_eq!(loso.protocol, Protocol::Loso);
    // Under LOSO the teacher sees the students' five sites (no extra epochs) and the target is tested whole.
    loso.protocol = quick.protocol;
    loso.training.teacher_epochs = quick.training.teacher_epochs;
    loso.test_fraction = quick.test_fraction;
    assert_eq!(loso.to_yaml(), quick.to_yaml());
}

fn load_text(text: &str) -> Result<ExperimentConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    ExperimentConfig::load(&path)
}

const MINIMAL: &str = "target: HK
preprocessing: { size: 64, context: 0 }
teacher: { architecture: unetpp }
student: { architecture: enet }
training: { epochs: 1, batch_size: 2 }
";

#[test]
fn minimal_config_takes_the_specs_defaults() {
    let c = load_text(MINIMAL).unwrap();
    assert_eq!(c.protocol, Protocol::Cross);
    assert_eq!((c.losses.lambda.lm, c.losses.lambda.kmm, c.losses.lambda.aam), (0.2, 0.9, 0.9));
    assert_eq!(c.training.lr.max_lr, 0.01);
    assert!(c.foreground_only);
}

#[test]
fn unknown_keys_and_bad_values_are_errors_that_name_the_file() {
    let typo = load_text(&format!("{MINIMAL}lossses: {{}}\n")).unwrap_err();
    let msg = typo.to_string();
    assert!(msg.contains("bad.yaml") && msg.contains("lossses"), "{msg}");

    let nested = load_text(&MINIMAL.replace("epochs: 1", "epochs: 1, epoch: 3")).unwrap_err();
    assert!(nested.to_string().contains("epoch"), "{nested}");

    let network = load_text(&MINIMAL.replace("architecture: enet", "architecture: segnet")).unwrap_err();
    assert!(network.to_string().contains("segnet"), "{network}");

    let zero = load_text(&MINIMAL.replace("batch_size: 2", "batch_size: 0")).unwrap_err();
    assert!(zero.to_string().contains("batch_size must be at least 1"), "{zero}");

    let missing = ExperimentConfig::load(Path::new("/nowhere/quick.yaml")).unwrap_err();
    assert!(missing.to_string().contains("/nowhere/quick.yaml"), "{missing}");
}

#[test]
fn a_teacher_is_a_network_relkd_trains_or_an_onnx_file_never_both() {
    use relkd_train::config::{OnnxTeacherSpec, TeacherSpec};

    let onnx = load_text(&MINIMAL.replace("{ architecture: unetpp }", "{ onnx: t.onnx, features: x3_0 }")).unwrap();
    let spec = OnnxTeacherSpec { path: "t.onnx".into(), features: Some("x3_0".into()) };
    assert_eq!(onnx.teacher, TeacherSpec::Onnx(spec));
    assert!(onnx.teacher_network().is_none());
    assert_eq!(ExperimentConfig::parse(&onnx.to_yaml(), Path::new("again")).unwrap(), onnx);

    // relkd's own teacher is written as before the ONNX teacher existed: run folders and cache
    // keys of earlier runs keep their configuration.
    let own = load_text(MINIMAL).unwrap();
    assert!(own.to_yaml().contains("teacher:\n  architecture: unetpp\n  width: 1.0\nstudent:"), "{}", own.to_yaml());

    for (teacher, cause) in [
        ("{ architecture: unetpp, onnx: t.onnx }", "not both"),
        ("{ width: 0.5 }", "needs architecture"),
        ("{ onnx: t.onnx, width: 0.5 }", "teacher.width sizes a network relkd trains"),
        ("{ onnx: t.onnx, runtime: burn }", "teacher.runtime: burn is for relkd's own teachers"),
        ("{ architecture: unetpp, features: x3_0 }", "teacher.features names a tensor of a teacher.onnx file"),
        ("{ onnx: t.onnx, feature: x3_0 }", "feature"),
    ] {
        let err = load_text(&MINIMAL.replace("{ architecture: unetpp }", teacher)).unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && err.contains(cause), "{teacher}: {err}");
    }
}
