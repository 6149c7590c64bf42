//! `train --teacher T --student S`: one experiment from data to report.
//!
//! The order: resolve the configuration (file or the built-in quick config, then the command
//! line), find the data (generating the phantom into the cache once), plan the sites, load and
//! split the cases, and check everything *before* the run folder is created, so bad input
//! never touches an earlier run. Then three models, each skipped when already final: the
//! teacher (reused from the cache or `--teacher-checkpoint` when one was trained with the same
//! settings), the baseline student (segmentation loss only) and the distilled student. Last,
//! every model is scored on the held-out cases of the target site and the report is written.
//!
//! Where to look: `relkd_runs::data` finds the dataset and splits its cases, `model_cache`
//! decides when a trained teacher is reused, `stage` trains one model into the run folder
//! (with its checkpoints and progress), `outputs` scores the models and writes the report and
//! overlays.

mod model_cache;
mod outputs;
mod stage;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use burn::module::Module;
use relkd_core::files::{LATEST_RUN, write_atomic};
use relkd_core::transforms::Preprocessing;
use relkd_infer::runtime::Provider;
use relkd_models::Architecture;
use relkd_models::device::DeviceChoice;

pub use outputs::score_cases;
pub use relkd_runs::data::{Cases, cache_dir, prepare};
pub(crate) use relkd_runs::data::{data_root, set_data_root};
pub(crate) use relkd_runs::progress::progress_bar;
pub use stage::{Devices, RunModel, Runtime, Stage, student_trainee};

use crate::checkpoint::{fingerprint, load_model};
use crate::config::{ExperimentConfig, OnnxTeacherSpec, TeacherSpec};
use crate::experiment::{GridSpec, Variant, run_spec};
use crate::teacher::{OnnxTeacher, Teacher};
use crate::trainer::Distillation;
use model_cache::check_teacher;
use outputs::evaluate_and_report;

/// The configuration used when `--config` is not given: CPU-sized, on the phantom.
pub const DEFAULT_CONFIG: &str = include_str!("../../../../configs/quick.yaml");

/// What the command line asks for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub teacher: Option<Architecture>,
    pub student: Option<Architecture>,
    pub config: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub target: Option<String>,
    /// The run folder; a new one under `runs/` when absent.
    pub out: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    /// Several devices: data-parallel training (overrides `device`).
    pub devices: Vec<DeviceChoice>,
    /// Continue the run in `out` (or the latest run) instead of starting a new one.
    pub resume: bool,
    pub teacher_checkpoint: Option<PathBuf>,
    /// A teacher given as an ONNX file (replaces the config's teacher).
    pub teacher_onnx: Option<PathBuf>,
    /// The ONNX teacher's tensor to distil features from.
    pub teacher_features: Option<String>,
}

/// Runs (or continues) an experiment and returns its folder.
pub fn run(request: &RunRequest) -> anyhow::Result<PathBuf> {
    let (mut config, run_dir) = resolve(request)?;
    let (root, cases) = prepare(&mut config)?;
    let target = config.target.clone();
    let plan = config.sites.clone().expect("planned");
    if let Some(path) = &request.teacher_checkpoint {
        check_teacher(path, &config)?;
    }
    let config_yaml = config.to_yaml();
    let devices = Devices::resolve(request.device.unwrap_or(DeviceChoice::Cpu), &request.devices)?;
    let device = &devices.main;
    let given_teacher = match &config.teacher {
        TeacherSpec::Onnx(spec) => {
            let provider = if devices.runtime == Runtime::Cuda { Provider::Cuda } else { Provider::Cpu };
            Some(open_onnx_teacher(spec, &config, provider)?)
        }
        TeacherSpec::Relkd(_) => None,
    };

    // Everything is checked; only now is the run folder touched.
    let run_dir = match run_dir {
        Some(dir) => {
            let saved = fs::read_to_string(dir.join("config.yaml")).with_context(|| format!("{}", dir.display()))?;
            ensure!(
                saved == config_yaml,
                "{} was started with another configuration (see its config.yaml); resume it without changing \
                 --config/--data/--target/--teacher/--student, or start a new run",
                dir.display()
            );
            println!("resuming {}", dir.display());
            dir
        }
        None => create_run_dir(request, &config)?,
    };
    let run_id = run_dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let config_hash = fingerprint(&config_yaml);
    if let Some(parent) = run_dir.parent() {
        write_atomic(&parent.join(LATEST_RUN), run_id.as_bytes()).with_context(|| format!("{}", parent.display()))?;
    }

    let teacher_where = match given_teacher {
        Some(_) => "(an ONNX file)".to_string(),
        None => format!("on {}", plan.teacher_sites.join(", ")),
    };
    println!(
        "run {run_id} on {}: teacher {} {teacher_where}, students {} on {}, tested on {} case(s) of {target}",
        devices.description,
        config.teacher.display_name(),
        config.student.architecture.display_name(),
        plan.student_sites.join(", "),
        cases.test.len(),
    );

    let stage =
        Stage { config: &config, run_dir: &run_dir, run_id: &run_id, config_hash: &config_hash, devices: &devices };
    let mut timings = Vec::new();

    // Teacher: relkd's own, trained (or reused) and frozen, or the ONNX file given. relkd's own
    // is scored by Burn whichever runtime it distils on.
    let (frozen, scored, teacher_card) = match given_teacher {
        Some(onnx) => {
            let frozen = Teacher::Onnx(Arc::new(onnx));
            (frozen.clone(), frozen, None)
        }
        None => {
            let started = Instant::now();
            let how = stage.teacher("teacher", &root, &cases, request.teacher_checkpoint.as_deref())?;
            timings.push(("teacher".to_string(), started.elapsed().as_secs_f64(), how));
            let (teacher, card) = load_model(&run_dir.join("teacher.bpk"), device)?;
            let teacher = teacher.valid();
            let onnx_path = run_dir.join("teacher-features.onnx");
            let frozen =
                Teacher::of_network(&teacher, &card, config.teacher.runtime(), devices.runtime.is_flex(), &onnx_path)?;
            (frozen, Teacher::Burn(teacher), Some(card))
        }
    };

    // Baseline student: the segmentation loss alone.
    let started = Instant::now();
    stage.train("baseline", RunModel::Baseline, &student_trainee(&config, None), &cases, None)?;
    timings.push(("baseline".to_string(), started.elapsed().as_secs_f64(), String::new()));

    // Distilled student: eq. 8 with the frozen teacher.
    let started = Instant::now();
    let distillation = Distillation::new(frozen, &config.losses);
    stage.train(
        "student",
        RunModel::Student,
        &student_trainee(&config, Some(&distillation.teacher)),
        &cases,
        Some(&distillation),
    )?;
    let how = match (&distillation.teacher, &config.teacher) {
        (Teacher::Burn(_), _) => String::new(),
        (Teacher::Onnx(_), TeacherSpec::Relkd(_)) => "(teacher on ONNX Runtime: teacher-features.onnx)".to_string(),
        (Teacher::Onnx(_), TeacherSpec::Onnx(spec)) => format!("(teacher on ONNX Runtime: {})", spec.file_name()),
    };
    timings.push(("student".to_string(), started.elapsed().as_secs_f64(), how));
    let _ = fs::remove_dir(run_dir.join("checkpoints")); // only when empty: every model is final

    evaluate_and_report(&stage, &root, &cases, &scored, teacher_card.as_ref(), timings)?;
    Ok(run_dir)
}

/// The teacher given as an ONNX file on `provider`, checked to take the students' batches.
/// What relkd assumes about its preprocessing is printed; relkd metadata that contradicts the
/// run's preprocessing is an error.
fn open_onnx_teacher(
    spec: &OnnxTeacherSpec,
    config: &ExperimentConfig,
    provider: Provider,
) -> anyhow::Result<OnnxTeacher> {
    let prep = config.preprocessing;
    let input = [config.training.batch_size, prep.channels(), prep.size, prep.size];
    let teacher = OnnxTeacher::from_file(&spec.path, spec.features.as_deref(), input, provider)?;
    let name = spec.file_name();
    let slices = |p: Preprocessing| {
        format!("{0}×{0} px slices with context {1} ({2} channel(s))", p.size, p.context, p.channels())
    };
    match teacher.info.preprocessing {
        Some(own) => {
            ensure!(
                own == prep,
                "teacher {}: its relkd metadata says it takes {}, but this run's students take {}; set \
                 preprocessing in the config to the teacher's",
                spec.path.display(),
                slices(own),
                slices(prep)
            );
            println!("teacher {name}: {}, each volume z-scored (from its relkd metadata)", slices(own));
        }
        None => println!(
            "teacher {name}: no relkd metadata, so it is assumed to take what the students take: {}, each volume \
             z-scored over all its voxels, resized bilinearly with half-pixel centres",
            slices(prep)
        ),
    }
    match teacher.feature_name().zip(teacher.feature_channels) {
        Some((feature, channels)) => println!("teacher {name}: distilling from '{feature}' ({channels} channels)"),
        None => println!(
            "teacher {name}: no feature named (--teacher-features), so it distils through its logits only \
             (KMM and attention transfer off)"
        ),
    }
    Ok(teacher)
}

/// `train --seeds 0,1,2`: the run's teacher, baseline and distilled student once per training
/// seed, as a grid (one split for every seed, so w/ and w/o pair up seed by seed) in `--out` or
/// `experiments/TEACHER-STUDENT-TARGET-seeds/`, with its report of means, spreads and paired
/// differences. Rerunning the command continues it.
pub fn run_seeds(request: &RunRequest, seeds: &[u64]) -> anyhow::Result<PathBuf> {
    ensure!(!request.resume, "--seeds continues by itself when rerun; drop --resume");
    ensure!(request.teacher_checkpoint.is_none(), "--seeds trains a teacher per seed; drop --teacher-checkpoint");
    let mut unique = seeds.to_vec();
    unique.sort_unstable();
    unique.dedup();
    ensure!(unique.len() == seeds.len(), "--seeds lists a seed twice");
    let (config, _) = resolve(request)?;
    let Some(teacher) = config.teacher.network() else {
        bail!("--seeds trains a teacher per seed; an ONNX teacher is for single runs");
    };
    let base_name =
        request.config.as_ref().map_or("the built-in configs/quick.yaml".to_string(), |p| p.display().to_string());
    let spec = GridSpec {
        base: PathBuf::from(&base_name),
        teachers: vec![teacher.architecture],
        students: vec![config.student.architecture],
        targets: vec![config.target.clone()],
        distillers: vec![Variant::ALL_THREE],
        seeds: seeds.to_vec(),
        overrides: serde_yaml::Value::Null,
    };
    let stem =
        format!("{}-{}-{}-seeds", teacher.architecture.name(), config.student.architecture.name(), config.target);
    let out = request.out.clone().unwrap_or_else(|| Path::new("experiments").join(&stem));
    let devices = Devices::resolve(request.device.unwrap_or(DeviceChoice::Cpu), &request.devices)?;
    run_spec(&spec, &config, &base_name, &stem, &out, &devices)
}

/// The configuration and, when resuming, the run folder to continue.
fn resolve(request: &RunRequest) -> anyhow::Result<(ExperimentConfig, Option<PathBuf>)> {
    let resume_dir = if request.resume {
        let dir = match &request.out {
            Some(dir) => dir.clone(),
            None => {
                let latest = Path::new("runs").join(LATEST_RUN);
                let id = fs::read_to_string(&latest).with_context(|| {
                    format!("--resume without --out continues the latest run, but {} is missing", latest.display())
                })?;
                Path::new("runs").join(id.trim())
            }
        };
        ensure!(
            dir.join("config.yaml").exists(),
            "{} is not a run folder (no config.yaml); nothing to resume",
            dir.display()
        );
        Some(dir)
    } else {
        None
    };
    let mut config = match (&resume_dir, &request.config) {
        (Some(dir), None) => ExperimentConfig::load(&dir.join("config.yaml"))?,
        (_, Some(path)) => ExperimentConfig::load(path)?,
        (None, None) => ExperimentConfig::parse(DEFAULT_CONFIG, Path::new("configs/quick.yaml (built in)"))?,
    };
    if let Some(t) = request.teacher {
        config.teacher = config.teacher.with_architecture(t);
    }
    if let Some(path) = &request.teacher_onnx {
        config.teacher = TeacherSpec::Onnx(OnnxTeacherSpec { path: path.clone(), features: None });
    }
    if let Some(name) = &request.teacher_features {
        let TeacherSpec::Onnx(spec) = &mut config.teacher else {
            bail!(
                "--teacher-features names a tensor of an ONNX teacher; give --teacher-onnx FILE (or teacher.onnx in \
                 the config)"
            );
        };
        spec.features = Some(name.clone());
    }
    // Absolute, so that the run folder's config.yaml names the file from anywhere.
    if let TeacherSpec::Onnx(spec) = &mut config.teacher {
        spec.path = spec.path.canonicalize().with_context(|| format!("teacher {}", spec.path.display()))?;
    }
    if let Some(s) = request.student {
        config.student.architecture = s;
    }
    if let Some(target) = &request.target {
        config.target = target.clone();
    }
    set_data_root(&mut config.data, request.data.as_deref())?;
    use relkd_models::Role;
    let teacher = config.teacher.network().map(|spec| (spec, "--teacher", Role::Teacher));
    for (spec, flag, expected) in teacher.into_iter().chain([(&config.student, "--student", Role::Student)]) {
        if spec.architecture.role() != expected {
            eprintln!(
                "note: {flag} {} is a {} in the paper",
                spec.architecture.display_name(),
                spec.architecture.role()
            );
        }
    }
    Ok((config, resume_dir))
}

/// A new run folder: `--out` (which must not hold anything yet) or `runs/DATE-TIME-T-S-TARGET`.
fn create_run_dir(request: &RunRequest, config: &ExperimentConfig) -> anyhow::Result<PathBuf> {
    let dir = match &request.out {
        Some(dir) => {
            if dir.exists() && fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
                bail!(
                    "{} already exists and is not empty; choose another --out, or add --resume to continue it",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            let stem = format!(
                "{}-{}-{}-{}",
                timestamp(),
                config.teacher.short_name(),
                config.student.architecture.name(),
                config.target
            );
            let mut dir = Path::new("runs").join(&stem);
            let mut n = 2;
            while dir.exists() {
                dir = Path::new("runs").join(format!("{stem}-{n}"));
                n += 1;
            }
            dir
        }
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating the run folder {}", dir.display()))?;
    write_atomic(&dir.join("config.yaml"), config.to_yaml().as_bytes())
        .with_context(|| format!("{}", dir.display()))?;
    Ok(dir)
}

/// UTC `YYYYMMDD-HHMMSS` from the system clock (civil-from-days, Howard Hinnant's algorithm).
fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
