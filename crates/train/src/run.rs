//! `train --teacher T --student S`: one experiment from data to report.
//!
//! The order: resolve the configuration (file or the built-in quick config, then the command
//! line), find the data (generating the phantom into the cache once), plan the sites, load and
//! split the cases, and check everything *before* the run folder is created, so bad input
//! never touches an earlier run. Then three models, each skipped when already final: the
//! teacher (reused from the cache or `--teacher-checkpoint` when one was trained with the same
//! settings), the baseline student (segmentation loss only) and the distilled student. Last,
//! every model is scored on the held-out cases of the target site and the report is written.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use relkd_core::dataset::{Case, CaseFiles, Dataset, load_case, split_cases};
use relkd_core::files::{LATEST_RUN, write_atomic};
use relkd_core::phantom;
use relkd_core::png::Canvas;
use relkd_core::transforms::{NormalizedVolume, Slice2d, case_slices, resize_bilinear};
use relkd_models::device::DeviceChoice;
use relkd_models::{Architecture, Network, Segmenter, trainable_params};
use serde::Serialize;

use crate::checkpoint::{ModelCard, StageCheckpoints, copy_model, fingerprint, load_model, save_model};
use crate::config::{DataConfig, ExperimentConfig};
use crate::evaluate::{CaseScore, predict_volume, score};
use crate::losses::affinity::AffinityConfig;
use crate::losses::kernel_matrix::KernelMatrixConfig;
use crate::losses::{DistillationWeights, Term};
use crate::report::{Evaluated, RunSummary, loss_curves, metrics_csv, report_md, scores_csv};
use crate::trainer::{Distillation, TrainHooks, TrainOptions, TrainState, Trainee, train};

/// The configuration used when `--config` is not given: CPU-sized, on the phantom.
pub const DEFAULT_CONFIG: &str = include_str!("../../../configs/quick.yaml");

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
}

/// The folder for caches shared by runs (the phantom, trained teachers): `$RELKD_CACHE`, else
/// `$XDG_CACHE_HOME/relkd`, else `~/.cache/relkd`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("RELKD_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("relkd")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/relkd")))
        .unwrap_or_else(|| PathBuf::from(".cache/relkd"))
}

/// Cases of one experiment, split by role.
pub struct Cases {
    pub teacher_train: Vec<Case>,
    pub teacher_val: Vec<Case>,
    pub student_train: Vec<Case>,
    pub student_val: Vec<Case>,
    /// Held-out cases of the evaluation sites: what every model is scored on.
    pub test: Vec<Case>,
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

    println!(
        "run {run_id} on {}: teacher {} on {}, students {} on {}, tested on {} case(s) of {target}",
        devices.description,
        config.teacher.architecture.display_name(),
        plan.teacher_sites.join(", "),
        config.student.architecture.display_name(),
        plan.student_sites.join(", "),
        cases.test.len(),
    );

    let stage =
        Stage { config: &config, run_dir: &run_dir, run_id: &run_id, config_hash: &config_hash, devices: &devices };
    let mut timings = Vec::new();

    // Teacher.
    let started = Instant::now();
    let how = stage.teacher("teacher", &root, &cases, request.teacher_checkpoint.as_deref())?;
    timings.push(("teacher".to_string(), started.elapsed().as_secs_f64(), how));
    let (teacher, teacher_card) = load_model(&run_dir.join("teacher.bpk"), device)?;
    let teacher = teacher.valid();

    // Baseline student: the segmentation loss alone.
    let started = Instant::now();
    stage.train("baseline", Role::Baseline, &student_trainee(&config, None), &cases, None)?;
    timings.push(("baseline".to_string(), started.elapsed().as_secs_f64(), String::new()));

    // Distilled student: eq. 8 with the frozen teacher.
    let started = Instant::now();
    let distillation = Distillation::new(teacher.clone(), &config.losses);
    stage.train("student", Role::Student, &student_trainee(&config, Some(&teacher)), &cases, Some(&distillation))?;
    timings.push(("student".to_string(), started.elapsed().as_secs_f64(), String::new()));
    let _ = fs::remove_dir(run_dir.join("checkpoints")); // only when empty: every model is final

    // Evaluation and report.
    let plain = device.clone().without_autodiff();
    let mut models = Vec::new();
    let mut predictions = Vec::new();
    let bar = progress_bar((3 * cases.test.len()) as u64, "scoring");
    for name in ["teacher", "baseline", "student"] {
        let (net, card) = if name == "teacher" {
            (teacher.clone(), teacher_card.clone())
        } else {
            let (net, card) = load_model(&run_dir.join(format!("{name}.bpk")), device)?;
            (net.valid(), card)
        };
        let (scores, masks) = score_cases(&net, &cases.test, &config, &plain, &|| bar.inc(1));
        predictions.push(masks);
        models.push(Evaluated { history: card.history.clone(), card, scores });
    }
    bar.finish_and_clear();

    let histories: Vec<(&str, &[crate::trainer::EpochLog])> =
        models.iter().map(|m| (m.card.model.as_str(), m.history.as_slice())).collect();
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<String> {
        let path = run_dir.join(name);
        write_atomic(&path, bytes).with_context(|| format!("{}", path.display()))?;
        Ok(name.to_string())
    };
    let mut files = vec!["config.yaml".to_string()];
    files.extend(["teacher", "baseline", "student"].iter().flat_map(|m| [format!("{m}.bpk"), format!("{m}.yaml")]));
    files.push(write("metrics.csv", metrics_csv(&histories).as_bytes())?);
    files.push(write("scores.csv", scores_csv(&models).as_bytes())?);
    files.push(write("loss_curves.png", &loss_curves(&histories).to_png())?);
    files.extend(write_overlays(&run_dir, &cases.test, &predictions)?);
    files.push("report.md".to_string());
    let real_data = config.data.root.is_some();
    let summary = RunSummary {
        run_id: &run_id,
        data: if real_data { format!("{}", root.display()) } else { format!("phantom ({})", root.display()) },
        real_data,
        target: &target,
        teacher: config.teacher.architecture,
        teacher_sites: &plan.teacher_sites,
        student_sites: &plan.student_sites,
        test_cases: cases.test.len(),
        device: &devices.description,
        timings: &timings,
        files: &files,
    };
    let report = report_md(&summary, &models);
    write("report.md", report.as_bytes())?;
    let table_end = report.find("\n## Training").unwrap_or(report.len());
    println!("\n{}", &report[report.find("## Dice").unwrap_or(0)..table_end].trim_end());
    println!("\nwrote {}", run_dir.join("report.md").display());
    Ok(run_dir)
}

/// Finds the data (generating the phantom on first use), resolves the target site's name and
/// the site plan into `config`, and reads and splits the cases. Returns the data root.
pub fn prepare(config: &mut ExperimentConfig) -> anyhow::Result<(PathBuf, Cases)> {
    let root = data_root(&config.data)?;
    let dataset = Dataset::discover(&root)?;
    config.target = dataset.site(&config.target)?.name.clone();
    let plan = match &config.sites {
        Some(plan) => plan.clone(),
        None => config.protocol.plan(&dataset, &config.target)?,
    };
    for name in plan.teacher_sites.iter().chain(&plan.student_sites).chain(&plan.eval_sites) {
        dataset.site(name)?;
    }
    config.sites = Some(plan);
    let cases = load_cases(&dataset, config)?;
    Ok((root, cases))
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
        config.teacher.architecture = t;
    }
    if let Some(s) = request.student {
        config.student.architecture = s;
    }
    if let Some(target) = &request.target {
        config.target = target.clone();
    }
    set_data_root(&mut config.data, request.data.as_deref())?;
    use relkd_models::Role;
    for (spec, flag, expected) in
        [(&config.teacher, "--teacher", Role::Teacher), (&config.student, "--student", Role::Student)]
    {
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

/// Puts `--data` (when given) into the configuration and makes the root absolute, so a run
/// folder's config.yaml names its data wherever it is resumed from.
pub(crate) fn set_data_root(data: &mut DataConfig, given: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = given {
        data.root = Some(dir.to_path_buf());
    }
    if let Some(root) = &data.root {
        data.root = Some(root.canonicalize().with_context(|| format!("data folder {}", root.display()))?);
    }
    Ok(())
}

/// The dataset root: the configured folder, or the phantom, generated once into the cache.
pub(crate) fn data_root(data: &DataConfig) -> anyhow::Result<PathBuf> {
    if let Some(root) = &data.root {
        return Ok(root.clone());
    }
    let p = &data.phantom;
    let dir = cache_dir().join(p.cache_name());
    if dir.join(phantom::MANIFEST).exists() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("cache subfolder");
    fs::create_dir_all(parent).with_context(|| format!("creating the cache folder {}", parent.display()))?;
    // Generated beside its final name and renamed, so an interrupted generation is never used.
    let staging = relkd_core::files::partial_path(&dir);
    let bar = progress_bar((p.sites * p.cases) as u64, "phantom");
    phantom::generate(p, &staging, &phantom::Extras::default(), &|done, _| bar.set_position(done as u64))
        .with_context(|| format!("generating the phantom into {}", staging.display()))?;
    bar.finish_and_clear();
    if let Err(e) = fs::rename(&staging, &dir) {
        // Another process finished first; its copy is identical (same seed).
        let _ = fs::remove_dir_all(&staging);
        ensure!(dir.join(phantom::MANIFEST).exists(), "moving the phantom into {}: {e}", dir.display());
    }
    println!("phantom data: {}", dir.display());
    Ok(dir)
}

/// Reads every case the plan needs and splits them: the test cases of each evaluation site
/// (a share when the site is also trained on, else all), then validation cases of each
/// training site for choosing checkpoints.
fn load_cases(dataset: &Dataset, config: &ExperimentConfig) -> anyhow::Result<Cases> {
    let plan = config.sites.as_ref().expect("planned");
    let seed = config.training.seed;
    let mut names: Vec<&String> =
        plan.teacher_sites.iter().chain(&plan.student_sites).chain(&plan.eval_sites).collect();
    names.sort();
    names.dedup();
    let mut cases =
        Cases { teacher_train: vec![], teacher_val: vec![], student_train: vec![], student_val: vec![], test: vec![] };
    let total: usize = names.iter().map(|n| dataset.site(n).map_or(0, |s| s.cases.len())).sum();
    let bar = progress_bar(total as u64, "reading");
    let mut problems = Vec::new();
    for name in names {
        let site = dataset.site(name)?;
        problems.extend(site.problems.iter().map(|p| p.to_string()));
        let trained = plan.teacher_sites.contains(name) || plan.student_sites.contains(name);
        let (rest, test) = match (plan.eval_sites.contains(name), trained) {
            (true, true) => split_cases(&site.cases, config.test_fraction, seed),
            (true, false) => (vec![], site.cases.clone()),
            (false, _) => (site.cases.clone(), vec![]),
        };
        let (train, val) = split_cases(&rest, config.val_fraction, seed + 1);
        let mut read = |files: &[CaseFiles]| -> Vec<Case> {
            files
                .iter()
                .filter_map(|f| {
                    bar.inc(1);
                    load_case(name, f).map_err(|p| problems.push(p.to_string())).ok()
                })
                .collect()
        };
        let (train, val, test) = (read(&train), read(&val), read(&test));
        if plan.teacher_sites.contains(name) {
            cases.teacher_train.extend(train.iter().cloned());
            cases.teacher_val.extend(val.iter().cloned());
        }
        if plan.student_sites.contains(name) {
            cases.student_train.extend(train);
            cases.student_val.extend(val);
        }
        cases.test.extend(test);
    }
    bar.finish_and_clear();
    if !problems.is_empty() {
        bail!(
            "{} problem(s) in {}:\n  {}\n(`train data --root {}` lists every problem)",
            problems.len(),
            dataset.root.display(),
            problems.join("\n  "),
            dataset.root.display()
        );
    }
    ensure!(
        !cases.test.is_empty(),
        "no test cases on {}: the evaluation sites need at least two cases each",
        plan.eval_sites.join(", ")
    );
    ensure!(
        !cases.teacher_train.is_empty(),
        "no training cases on the teacher's sites {}",
        plan.teacher_sites.join(", ")
    );
    ensure!(
        !cases.student_train.is_empty(),
        "no training cases on the students' sites {}",
        plan.student_sites.join(", ")
    );
    Ok(cases)
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
                config.teacher.architecture.name(),
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

/// Everything that decides what a teacher learns; equal keys mean an interchangeable teacher.
fn teacher_key(config: &ExperimentConfig, root: &Path) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        data: String,
        sites: &'a [String],
        test_fraction: f32,
        val_fraction: f32,
        preprocessing: &'a relkd_core::transforms::Preprocessing,
        foreground_only: bool,
        augmentation: &'a relkd_core::transforms::Augmentation,
        teacher: &'a crate::config::ModelSpec,
        training: &'a crate::config::TrainingConfig,
        segmentation: &'a crate::losses::segmentation::SegmentationLoss,
        eval_sites: &'a [String],
    }
    let plan = config.sites.as_ref().expect("planned");
    let key = Key {
        data: match &config.data.root {
            Some(_) => root.display().to_string(),
            None => config.data.phantom.manifest(),
        },
        sites: &plan.teacher_sites,
        test_fraction: config.test_fraction,
        val_fraction: config.val_fraction,
        preprocessing: &config.preprocessing,
        foreground_only: config.foreground_only,
        augmentation: &config.augmentation,
        teacher: &config.teacher,
        training: &config.training,
        segmentation: &config.losses.segmentation,
        eval_sites: &plan.eval_sites,
    };
    format!("{}-{}", config.teacher.architecture.name(), fingerprint(&serde_yaml::to_string(&key).expect("serialises")))
}

/// Checks that a trained teacher's card describes the teacher this run asks for.
fn check_teacher(source: &Path, config: &ExperimentConfig) -> anyhow::Result<()> {
    let card_path = ModelCard::path_for(source);
    let card = ModelCard::load(&card_path)
        .with_context(|| format!("teacher checkpoint {}: its model card", source.display()))?;
    let want = &config.teacher;
    ensure!(
        card.architecture == want.architecture,
        "teacher checkpoint {} is a {} (see {}), but this run's teacher is a {}",
        source.display(),
        card.architecture.display_name(),
        card_path.display(),
        want.architecture.display_name()
    );
    ensure!(
        card.width == want.width && card.preprocessing == config.preprocessing,
        "teacher checkpoint {} has width {} and input {:?}; this run needs width {} and {:?}",
        source.display(),
        card.width,
        card.preprocessing,
        want.width,
        config.preprocessing
    );
    Ok(())
}

/// Copies a trained teacher into the run, byte for byte, after checking that it is the
/// teacher asked for and that its weights load.
fn adopt_teacher(source: &Path, weights: &Path, config: &ExperimentConfig, device: &Device) -> anyhow::Result<()> {
    check_teacher(source, config)?;
    load_model(source, device).with_context(|| format!("teacher checkpoint {}", source.display()))?;
    Ok(copy_model(source, weights)?)
}

/// What a trained model is for: it decides the sites, the epochs and the card's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Teacher,
    /// The student with the segmentation loss alone (w/o).
    Baseline,
    /// The student distilled from the teacher (w/).
    Student,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::Baseline => "baseline",
            Role::Student => "student",
        }
    }
}

/// The configured student, with the KMM adapter and the AAM weights when the distillation
/// from `teacher` uses them.
pub fn student_trainee(config: &ExperimentConfig, teacher: Option<&Network>) -> impl Fn(&Device) -> Trainee {
    let student = config.student_network();
    let weights = teacher.map_or_else(DistillationWeights::default, |_| config.losses.weights());
    let channels = teacher.map(|t| (student.init(&Device::flex()).tap().channels, t.tap().channels));
    let losses = config.losses.clone();
    move |d: &Device| Trainee {
        net: student.init(d),
        kmm: channels
            .filter(|_| weights.on(Term::Kmm))
            .map(|(s, t)| KernelMatrixConfig::new(s, t).with_mode(losses.kmm_gram).init(d)),
        aam: weights.on(Term::Aam).then(|| {
            AffinityConfig::new(2)
                .with_dilations(losses.aam.dilations.clone())
                .with_margin(losses.aam.margin)
                .with_adaptive(losses.aam.adaptive)
                .init(d)
        }),
    }
}

/// Segments every case with `net` and scores it; `tick` after each case.
pub fn score_cases(
    net: &Network,
    cases: &[Case],
    config: &ExperimentConfig,
    device: &Device,
    tick: &dyn Fn(),
) -> (Vec<CaseScore>, Vec<Vec<u8>>) {
    cases
        .iter()
        .map(|case| {
            let mask = predict_volume(&case.image, &config.preprocessing, config.training.batch_size, device, &|x| {
                net.forward(x)
            });
            tick();
            (score(case, &mask), mask)
        })
        .unzip()
}

/// Where a run computes: the main (autodiff) device and, for data-parallel training, every
/// device (the main one first).
pub struct Devices {
    pub main: Device,
    pub parallel: Vec<Device>,
    pub description: String,
}

impl Devices {
    /// `--devices` when given (every entry must work: no fallback), else `--device`.
    pub fn resolve(single: DeviceChoice, many: &[DeviceChoice]) -> anyhow::Result<Self> {
        if many.len() < 2 {
            let resolved = many.first().copied().unwrap_or(single).resolve()?;
            if let Some(reason) = &resolved.fallback {
                eprintln!("warning: --device auto falls back to the CPU: {reason}");
            }
            let main = resolved.device.autodiff();
            return Ok(Self { main, parallel: vec![], description: resolved.description });
        }
        ensure!(!many.contains(&DeviceChoice::Auto), "--devices takes cpu, cuda or cuda:N entries, not auto");
        let resolved = many.iter().map(|c| c.resolve()).collect::<Result<Vec<_>, _>>()?;
        let description = format!(
            "{} devices, data parallel ({})",
            resolved.len(),
            resolved.iter().map(|r| r.description.as_str()).collect::<Vec<_>>().join(", ")
        );
        let parallel: Vec<Device> = resolved.into_iter().map(|r| r.device.autodiff()).collect();
        Ok(Self { main: parallel[0].clone(), parallel, description })
    }
}

/// What every model's training shares within one run folder.
pub struct Stage<'a> {
    pub config: &'a ExperimentConfig,
    pub run_dir: &'a Path,
    pub run_id: &'a str,
    pub config_hash: &'a str,
    pub devices: &'a Devices,
}

impl Stage<'_> {
    /// Puts a trained teacher at `STEM.bpk` in the run folder: kept when already there, else
    /// the one `given`, else the cached teacher trained with the same data, sites and
    /// settings, else a new one (which is then cached). Says how it was obtained.
    pub fn teacher(&self, stem: &str, root: &Path, cases: &Cases, given: Option<&Path>) -> anyhow::Result<String> {
        let config = self.config;
        let weights = self.run_dir.join(format!("{stem}.bpk"));
        let cached = cache_dir().join("teachers").join(teacher_key(config, root)).join("teacher.bpk");
        if ModelCard::path_for(&weights).exists() {
            println!("{stem}: done earlier in this run");
            return Ok("(from this run)".to_string());
        }
        if let Some(path) = given {
            adopt_teacher(path, &weights, config, &self.devices.main)?;
            return Ok(format!("(given: {})", path.display()));
        }
        if ModelCard::path_for(&cached).exists() {
            adopt_teacher(&cached, &weights, config, &self.devices.main)?;
            println!("{stem}: reusing {} (same data, sites and settings)", cached.display());
            return Ok("(reused from the cache)".to_string());
        }
        let network = config.teacher_network();
        let trainee = |d: &Device| Trainee { net: network.init(d), kmm: None, aam: None };
        self.train(stem, Role::Teacher, &trainee, cases, None)?;
        if let Some(dir) = cached.parent() {
            fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
        copy_model(&weights, &cached)?;
        Ok("(trained)".to_string())
    }

    /// Trains model `stem` (or continues it from its checkpoint) and writes `STEM.bpk/.yaml`.
    /// A model whose card already exists is final and kept as it is.
    pub fn train(
        &self,
        stem: &str,
        role: Role,
        make: &dyn Fn(&Device) -> Trainee,
        cases: &Cases,
        distillation: Option<&Distillation>,
    ) -> anyhow::Result<()> {
        let weights = self.run_dir.join(format!("{stem}.bpk"));
        let card_path = ModelCard::path_for(&weights);
        if card_path.exists() {
            let card = ModelCard::load(&card_path)?;
            ensure!(
                card.config_hash == self.config_hash,
                "{} was trained with another configuration (config hash {} here, {} in the card); \
                 use a new output folder",
                card_path.display(),
                self.config_hash,
                card.config_hash
            );
            println!("{stem}: done earlier in this run");
            return Ok(());
        }
        let c = self.config;
        let plan = c.sites.as_ref().expect("planned");
        let (train_cases, val_cases, sites, spec, epochs) = match role {
            Role::Teacher => (
                &cases.teacher_train,
                &cases.teacher_val,
                &plan.teacher_sites,
                c.teacher,
                c.training.teacher_epochs.unwrap_or(c.training.epochs),
            ),
            Role::Baseline | Role::Student => {
                (&cases.student_train, &cases.student_val, &plan.student_sites, c.student, c.training.epochs)
            }
        };
        let samples: Vec<Slice2d> = train_cases
            .iter()
            .flat_map(|case| case_slices(&case.image, &case.mask, &c.preprocessing, c.foreground_only))
            .collect();
        ensure!(!samples.is_empty(), "{stem}: no training slices in {} case(s)", train_cases.len());
        let options = TrainOptions {
            prep: c.preprocessing,
            epochs,
            batch_size: c.training.batch_size,
            lr: c.training.lr,
            seed: c.training.seed,
            augmentation: c.augmentation,
            segmentation: c.losses.segmentation,
            devices: self.devices.parallel.clone(),
        };
        let checkpoints = StageCheckpoints::new(self.run_dir.join("checkpoints").join(stem));
        let (trainee, resume) = match checkpoints.load(make(&self.devices.main))? {
            Some((trainee, resume)) => {
                println!("{stem}: continuing after epoch {} of {}", resume.state.epoch, options.epochs);
                (trainee, Some(resume))
            }
            None => (make(&self.devices.main), None),
        };
        let steps = samples.len().div_ceil(options.batch_size);
        let bar = progress_bar((steps * options.epochs) as u64, stem);
        bar.set_position((resume.as_ref().map_or(0, |r| r.state.epoch) * steps) as u64);
        bar.reset_eta();
        println!(
            "{stem}: {} ({} parameters) on {} slices of {} case(s), {} epochs × {steps} steps",
            spec.architecture.display_name(),
            trainable_params(&trainee.net),
            samples.len(),
            train_cases.len(),
            options.epochs
        );
        let mut hooks = Hooks {
            name: stem,
            bar: &bar,
            checkpoints: &checkpoints,
            run_dir: self.run_dir,
            epochs: options.epochs,
            epoch_started: Instant::now(),
        };
        let (best, state) =
            train(trainee, resume, &samples, val_cases, &options, distillation, &self.devices.main, &mut hooks)?;
        bar.finish_and_clear();
        let weights_names = distillation.map_or(vec![], |d| {
            d.weights.iter().map(|(term, w)| format!("{} λ={w}", term.key().to_uppercase())).collect()
        });
        let card = ModelCard {
            model: role.name().to_string(),
            architecture: spec.architecture,
            width: spec.width,
            in_channels: c.preprocessing.channels(),
            classes: 2,
            preprocessing: c.preprocessing,
            live_params: trainable_params(&best.net),
            trained_sites: sites.to_vec(),
            target_site: c.target.clone(),
            distillation: weights_names,
            run_id: self.run_id.to_string(),
            config_hash: self.config_hash.to_string(),
            epochs: state.epoch,
            best_epoch: state.best_epoch,
            best_val_dice: state.best_val_dice,
            history: state.history,
        };
        save_model(&weights, &best.net, &card)?;
        checkpoints.remove()?;
        Ok(())
    }
}

/// Progress bar and checkpoints while a model trains.
struct Hooks<'a> {
    name: &'a str,
    bar: &'a ProgressBar,
    checkpoints: &'a StageCheckpoints,
    run_dir: &'a Path,
    epochs: usize,
    epoch_started: Instant,
}

impl TrainHooks for Hooks<'_> {
    fn step(&mut self, epoch: usize, _step: usize, _steps: usize, running_loss: f64) {
        self.bar.inc(1);
        self.bar.set_message(format!("{} epoch {}/{} loss {running_loss:.4}", self.name, epoch + 1, self.epochs));
    }

    fn epoch_end(
        &mut self,
        trainee: &Trainee,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
        improved: bool,
    ) -> std::io::Result<()> {
        self.checkpoints.save(trainee, optimizer, state, improved)?;
        let e = state.history.last().expect("an epoch just ended");
        let terms: String = e
            .terms
            .iter()
            .filter(|(term, _)| *term != Term::Segmentation)
            .map(|(term, v)| format!(" {} {v:.4}", term.key()))
            .collect();
        self.bar.suspend(|| {
            println!(
                "{} epoch {:>3}/{}  {:.1} s  loss {:.4} (seg {:.4}{terms})  lr {:.2e}  val Dice {:.3}{}",
                self.name,
                e.epoch,
                self.epochs,
                self.epoch_started.elapsed().as_secs_f64(),
                e.total,
                e.terms.get(Term::Segmentation).copied().unwrap_or(f64::NAN),
                e.lr,
                e.val_dice,
                if improved { "  *" } else { "" }
            )
        });
        self.epoch_started = Instant::now();
        // metrics.csv grows epoch by epoch, so an interrupted run still shows its curves.
        let path = self.run_dir.join("metrics.csv");
        let mut rows = fs::read_to_string(&path).unwrap_or_default();
        let prefix = format!("{},", self.name);
        let kept: Vec<&str> = rows.lines().skip(1).filter(|l| !l.starts_with(&prefix)).collect();
        let ours = metrics_csv(&[(self.name, &state.history)]);
        rows = std::iter::once(ours.lines().next().unwrap_or_default())
            .chain(kept)
            .chain(ours.lines().skip(1))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, rows.as_bytes())
    }
}

/// The progress bar every long step of `train` shows.
pub(crate) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg:<36} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// Fig. 3-style pictures: for the first two test cases, three slices across the gland, each
/// with the teacher's, the baseline's and the student's prediction (green) over the ground
/// truth (red).
fn write_overlays(run_dir: &Path, test: &[Case], predictions: &[Vec<Vec<u8>>]) -> anyhow::Result<Vec<String>> {
    let dir = run_dir.join("overlays");
    fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let mut written = Vec::new();
    for (c, case) in test.iter().enumerate().take(2) {
        let [nx, ny, nz] = case.image.dims;
        let plane = nx * ny;
        let gland: Vec<usize> = (0..nz).filter(|&z| case.mask[z * plane..][..plane].iter().any(|&v| v != 0)).collect();
        let (Some(&first), Some(&last)) = (gland.first(), gland.last()) else { continue };
        let norm = NormalizedVolume::new(&case.image);
        let zoom = (256 / nx.max(ny)).max(1);
        for z in [first + (last - first) / 4, (first + last) / 2, last - (last - first) / 4] {
            let image = norm.input(z, &relkd_core::transforms::Preprocessing { size: nx, context: 0 });
            // `input` resizes to a square; keep the source aspect by resizing back.
            let image = resize_bilinear(&image, nx, nx, ny, nx);
            let truth = &case.mask[z * plane..][..plane];
            let (label_h, gap) = (18, 6);
            let panel_w = (nx * zoom) as i64;
            let mut canvas =
                Canvas::new((3 * panel_w + 2 * gap) as usize, ny * zoom + label_h as usize, relkd_core::png::WHITE);
            for (m, label) in ["TEACHER", "W/O", "W/"].iter().enumerate() {
                let pred = &predictions[m][c][z * plane..][..plane];
                let panel = relkd_core::png::overlay(&image, Some(truth), pred, ny, nx, zoom);
                let x = m as i64 * (panel_w + gap);
                canvas.paste(&panel, x, label_h);
                canvas.text(x + 2, 2, label, 2, relkd_core::png::BLACK);
            }
            let name = format!("overlays/{}_{}_z{z:02}.png", case.site, case.id);
            canvas.save(&run_dir.join(&name)).with_context(|| name.clone())?;
            written.push(name);
        }
    }
    Ok(written)
}
