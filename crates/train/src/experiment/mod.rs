//! `train experiment FILE.yaml`: the paper's tables as one grid of runs.
//!
//! A grid is teachers × students × target sites × distillers × training seeds, all from one
//! base run configuration. Per target site and seed the grid trains each teacher once, each
//! student's baseline once (it does not depend on the teacher), and one distilled student per
//! (teacher, distiller). The split of the cases follows the base configuration's `split_seed`,
//! never the training seed, so every seed is scored on the same test cases and w/ and w/o pair
//! up seed by seed. Every trained model is a cell: it is written with its card and its scores on
//! the target's held-out cases, and a rerun of the same command skips every finished cell and
//! continues an interrupted one from its last epoch.
//!
//! Layout of the output folder (default `experiments/FILE-STEM/`): per target and seed,
//! `TARGET/seed-N/config.yaml` (the base configuration resolved for them), `NAME.bpk` with
//! `NAME.yaml` per cell, `scores/NAME.yaml` and `metrics.csv`; then `report.md`, `scores.csv` and
//! `dice_TEACHER_STUDENT.png` for the whole grid.

mod compare;
mod evidence;
mod report;
mod tables;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use burn::module::Module;
use relkd_core::dataset::Dataset;
use relkd_core::files::write_atomic;
use relkd_models::device::DeviceChoice;
use relkd_models::{Architecture, Segmenter};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{ModelCard, fingerprint, load_model};
use crate::config::{Distiller, ExperimentConfig, LossConfig};
use crate::evaluate::CaseScore;
use crate::run::{
    Cases, Devices, RunModel, Stage, data_root, prepare, progress_bar, score_cases, set_data_root, student_trainee,
};
use crate::teacher::Teacher;
use crate::trainer::Distillation;

pub use compare::compare;
pub use tables::{Cell, CellKind};

/// An experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// The run configuration every cell starts from; a relative path is taken from the
    /// experiment file's folder.
    pub base: PathBuf,
    pub teachers: Vec<Architecture>,
    pub students: Vec<Architecture>,
    /// Target sites (folder names, canonical names or S1…S6), or `[all]`.
    pub targets: Vec<String>,
    /// The distilled students of each (teacher, student, target): `lm+kmm+aam` (the paper's),
    /// any subset of it, `hinton` or `attention`. The baseline (w/o) is always trained.
    pub distillers: Vec<Variant>,
    /// Training seeds (initialisation, slice order, augmentation); every cell is trained once per
    /// seed. Default: the base configuration's `training.seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Settings that replace the base configuration's, a YAML mapping merged into it key by key
    /// (`losses: { lambda: { aam: 0.9 } }` changes that one weight): a sweep over a setting
    /// without a copy of the base file. Unknown keys are errors, as in the base file.
    #[serde(default, skip_serializing_if = "serde_yaml::Value::is_null")]
    pub overrides: serde_yaml::Value,
}

/// How one distilled student learns from its teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Variant {
    /// The paper's modules, each on or off (Table 3); λ from the base configuration.
    Relational {
        lm: bool,
        kmm: bool,
        aam: bool,
    },
    Hinton,
    Attention,
}

impl Variant {
    pub const ALL_THREE: Variant = Variant::Relational { lm: true, kmm: true, aam: true };

    /// The name in experiment files and cell names: `lm+aam`, `hinton`, `attention`.
    pub fn name(self) -> String {
        match self {
            Variant::Relational { lm, kmm, aam } => {
                let on: Vec<&str> = [("lm", lm), ("kmm", kmm), ("aam", aam)]
                    .into_iter()
                    .filter_map(|(n, on)| on.then_some(n))
                    .collect();
                on.join("+")
            }
            Variant::Hinton => "hinton".to_string(),
            Variant::Attention => "attention".to_string(),
        }
    }

    /// The base configuration's losses with this variant's distiller and switches.
    pub fn losses(self, base: &LossConfig) -> LossConfig {
        let mut losses = base.clone();
        match self {
            Variant::Relational { lm, kmm, aam } => {
                losses.distiller = Distiller::Relational;
                let keep = |on: bool, w: f64| if on { w } else { 0.0 };
                losses.lambda.lm = keep(lm, base.lambda.lm);
                losses.lambda.kmm = keep(kmm, base.lambda.kmm);
                losses.lambda.aam = keep(aam, base.lambda.aam);
            }
            Variant::Hinton => losses.distiller = Distiller::Hinton,
            Variant::Attention => losses.distiller = Distiller::Attention,
        }
        losses
    }
}

impl TryFrom<String> for Variant {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let wrong = || {
            format!("unknown distiller `{text}`: use lm, kmm, aam joined by + (e.g. lm+kmm+aam), hinton or attention")
        };
        match text.trim() {
            "hinton" => return Ok(Variant::Hinton),
            "attention" | "at" => return Ok(Variant::Attention),
            _ => {}
        }
        let (mut lm, mut kmm, mut aam) = (false, false, false);
        for part in text.split('+').map(str::trim) {
            let flag = match part {
                "lm" => &mut lm,
                "kmm" => &mut kmm,
                "aam" => &mut aam,
                _ => return Err(wrong()),
            };
            if *flag {
                return Err(format!("distiller `{text}` names {part} twice"));
            }
            *flag = true;
        }
        Ok(Variant::Relational { lm, kmm, aam })
    }
}

impl From<Variant> for String {
    fn from(v: Variant) -> String {
        v.name()
    }
}

impl GridSpec {
    /// Reads an experiment file; every error names it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("experiment file {}", path.display()))?;
        let spec: Self = serde_yaml::from_str(&text).with_context(|| format!("experiment file {}", path.display()))?;
        for (list, key) in [
            (spec.teachers.is_empty(), "teachers"),
            (spec.students.is_empty(), "students"),
            (spec.targets.is_empty(), "targets"),
            (spec.distillers.is_empty(), "distillers"),
        ] {
            ensure!(!list, "experiment file {}: `{key}` must list at least one entry", path.display());
        }
        ensure!(
            spec.targets.len() == 1 || !spec.targets.iter().any(|t| t == "all"),
            "experiment file {}: `targets: [all]` stands alone; list sites or write all",
            path.display()
        );
        let mut seeds = spec.seeds.clone();
        seeds.sort_unstable();
        seeds.dedup();
        ensure!(seeds.len() == spec.seeds.len(), "experiment file {}: `seeds` lists a seed twice", path.display());
        Ok(spec)
    }
}

/// What `train experiment` is asked for.
#[derive(Debug, Clone)]
pub struct GridRequest {
    pub file: PathBuf,
    pub data: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub device: DeviceChoice,
    /// Several devices: data-parallel training.
    pub devices: Vec<DeviceChoice>,
}

/// Runs (or continues) the grid of `request.file` and returns its output folder.
pub fn run_grid(request: &GridRequest) -> anyhow::Result<PathBuf> {
    let spec = GridSpec::load(&request.file)?;
    let base_path = request.file.parent().unwrap_or(Path::new(".")).join(&spec.base);
    let mut base = load_base(&base_path, &spec.overrides)
        .with_context(|| format!("the base configuration of {}", request.file.display()))?;
    set_data_root(&mut base.data, request.data.as_deref())?;
    let stem = request.file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
    let out = request.out.clone().unwrap_or_else(|| Path::new("experiments").join(&stem));
    let devices = Devices::resolve(request.device, &request.devices)?;
    run_spec(&spec, &base, &base_path.display().to_string(), &stem, &out, &devices)
}

/// The run configuration in `path` with `overrides` merged into it.
pub fn load_base(path: &Path, overrides: &serde_yaml::Value) -> anyhow::Result<ExperimentConfig> {
    let text = fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    merge(&mut config, overrides);
    let merged = serde_yaml::to_string(&config).expect("YAML values serialise");
    Ok(ExperimentConfig::parse(&merged, path)?)
}

/// Merges `overrides` into `base`: mappings key by key, recursively; any other value replaces.
fn merge(base: &mut serde_yaml::Value, overrides: &serde_yaml::Value) {
    use serde_yaml::Value::Mapping;
    match (base, overrides) {
        (_, serde_yaml::Value::Null) => {}
        (Mapping(base), Mapping(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, value) => *base = value.clone(),
    }
}

/// Runs (or continues) `spec` from the configuration `base` (described as `base_name` in
/// errors) into `out`; `stem` names the grid in run ids and the report.
pub fn run_spec(
    spec: &GridSpec,
    base: &ExperimentConfig,
    base_name: &str,
    stem: &str,
    out: &Path,
    devices: &Devices,
) -> anyhow::Result<PathBuf> {
    ensure!(
        base.teacher.network().is_some(),
        "a grid trains its own teachers (its `teachers:` list); the ONNX teacher of {base_name} is for single runs \
         (train --teacher-onnx FILE)"
    );
    // Every target is resolved before anything is written.
    let root = data_root(&base.data)?;
    let dataset = Dataset::discover(&root)?;
    let targets: Vec<String> = if spec.targets.iter().any(|t| t == "all") {
        dataset.sites.iter().map(|s| s.name.clone()).collect()
    } else {
        spec.targets.iter().map(|t| Ok(dataset.site(t)?.name.clone())).collect::<anyhow::Result<_>>()?
    };
    let spec_yaml = serde_yaml::to_string(spec).expect("serialises");
    if out.exists() && !out.join("experiment.yaml").exists() && fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not an experiment folder (no experiment.yaml); choose another --out", out.display());
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("experiment.yaml"), spec_yaml.as_bytes()).with_context(|| format!("{}", out.display()))?;

    let seeds = if spec.seeds.is_empty() { vec![base.training.seed] } else { spec.seeds.clone() };
    let per_seed = spec.teachers.len() + spec.students.len() * (1 + spec.teachers.len() * spec.distillers.len());
    let total = targets.len() * seeds.len() * per_seed;
    println!(
        "experiment {stem}: {} target(s) × {} seed(s) × ({} teacher(s), {} baseline(s), {} distilled student(s)) \
         = {total} cells on {}",
        targets.len(),
        seeds.len(),
        spec.teachers.len(),
        spec.students.len(),
        spec.students.len() * spec.teachers.len() * spec.distillers.len(),
        devices.description
    );
    let mut cells = Vec::new();
    let mut done = 0;
    for target in &targets {
        let mut target_config = base.clone();
        target_config.target = target.clone();
        // One split for every seed: it depends on `split_seed` only.
        let (root, cases) = prepare(&mut target_config)?;
        for &seed in &seeds {
            let mut config = target_config.clone();
            config.training.seed = seed;
            let dir = out.join(&config.target).join(format!("seed-{seed}"));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let config_yaml = config.to_yaml();
            let saved = dir.join("config.yaml");
            match fs::read_to_string(&saved) {
                Ok(text) => ensure!(
                    text == config_yaml,
                    "{} was run with another base configuration; use a new --out or restore {base_name}",
                    dir.display(),
                ),
                Err(_) => {
                    write_atomic(&saved, config_yaml.as_bytes()).with_context(|| format!("{}", saved.display()))?
                }
            }
            let grid = TargetGrid { config: &config, cases: &cases, dir: &dir, devices, stem };
            let mut next = |what: &str| {
                done += 1;
                println!("--- cell {done}/{total}: {what} on {target}, seed {seed}");
            };
            let mut teachers = Vec::new();
            for &teacher in &spec.teachers {
                next(&format!("teacher {}", teacher.display_name()));
                cells.push(grid.teacher(teacher, &root)?);
                let stem = CellKind::Teacher { teacher }.stem();
                let (net, card) = load_model(&dir.join(&stem).with_extension("bpk"), &devices.main)?;
                let onnx_path = dir.join(format!("{stem}-features.onnx"));
                let frozen = Teacher::of_network(
                    &net.valid(),
                    &card,
                    config.teacher.runtime(),
                    devices.runtime.is_flex(),
                    &onnx_path,
                )?;
                teachers.push((teacher, frozen));
            }
            for &student in &spec.students {
                next(&format!("{} w/o", student.display_name()));
                cells.push(grid.baseline(student, &root)?);
                for (teacher, frozen) in &teachers {
                    for &variant in &spec.distillers {
                        next(&format!("{} w/ {} ({})", student.display_name(), teacher.display_name(), variant.name()));
                        cells.push(grid.distilled(student, *teacher, variant, frozen)?);
                    }
                }
            }
        }
    }
    let real_data = base.data.root.is_some();
    let data = if real_data { root.display().to_string() } else { format!("phantom ({})", root.display()) };
    let summary = report::write(out, stem, spec, &targets, &seeds, &cells, &data, real_data)?;
    println!("\n{}", summary.trim_end());
    println!("\nwrote {}", out.join("report.md").display());
    Ok(out.to_path_buf())
}

/// The cells of one target site.
struct TargetGrid<'a> {
    config: &'a ExperimentConfig,
    cases: &'a Cases,
    dir: &'a Path,
    devices: &'a Devices,
    stem: &'a str,
}

impl TargetGrid<'_> {
    fn teacher(&self, teacher: Architecture, root: &Path) -> anyhow::Result<Cell> {
        let mut config = self.config.clone();
        config.teacher = config.teacher.with_architecture(teacher);
        let kind = CellKind::Teacher { teacher };
        self.stage(&config, &kind.stem(), |stage| stage.teacher(&kind.stem(), root, self.cases, None).map(drop))?;
        self.score(&config, kind)
    }

    fn baseline(&self, student: Architecture, root: &Path) -> anyhow::Result<Cell> {
        let mut config = self.config.clone();
        config.student.architecture = student;
        let kind = CellKind::Baseline { student };
        let make = student_trainee(&config, None);
        self.stage(&config, &kind.stem(), |stage| stage.baseline(&kind.stem(), &make, root, self.cases))?;
        self.score(&config, kind)
    }

    fn distilled(
        &self,
        student: Architecture,
        teacher: Architecture,
        variant: Variant,
        frozen: &Teacher,
    ) -> anyhow::Result<Cell> {
        let mut config = self.config.clone();
        config.student.architecture = student;
        config.teacher = config.teacher.with_architecture(teacher);
        config.losses = variant.losses(&self.config.losses);
        let kind = CellKind::Distilled { student, teacher, variant };
        let make = student_trainee(&config, Some(frozen));
        let distillation = Distillation::new(frozen.clone(), &config.losses);
        self.stage(&config, &kind.stem(), |stage| {
            stage.train(&kind.stem(), RunModel::Student, &make, self.cases, Some(&distillation))
        })?;
        self.score(&config, kind)
    }

    /// Runs `work` on a stage whose cards carry this cell's configuration hash.
    fn stage(
        &self,
        config: &ExperimentConfig,
        stem: &str,
        work: impl FnOnce(&Stage) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let hash = fingerprint(&config.to_yaml());
        let run_id = format!("{}/{}/seed-{}", self.stem, config.target, config.training.seed);
        let stage = Stage { config, run_dir: self.dir, run_id: &run_id, config_hash: &hash, devices: self.devices };
        work(&stage).with_context(|| format!("cell {stem} of {}", self.dir.display()))?;
        let _ = fs::remove_dir(self.dir.join("checkpoints")); // only when empty
        Ok(())
    }

    /// The cell's scores on the target's held-out cases; a teacher's also on the students'
    /// validation cases (the quality of its guidance on their sites).
    fn score(&self, config: &ExperimentConfig, kind: CellKind) -> anyhow::Result<Cell> {
        let stem = kind.stem();
        let scores = self.scores(config, &stem, &stem, &self.cases.test)?;
        let guidance = match kind {
            CellKind::Teacher { .. } => {
                self.scores(config, &stem, &format!("{stem}-on-student-sites"), &self.cases.student_val)?
            }
            _ => vec![],
        };
        let card = ModelCard::load(&ModelCard::path_for(&self.dir.join(format!("{stem}.bpk"))))?;
        let val_dice = card.best_val_dice.unwrap_or(f64::NAN);
        Ok(Cell { target: config.target.clone(), seed: config.training.seed, kind, scores, guidance, val_dice })
    }

    /// Scores of model `stem` on `cases`, computed once and kept as `scores/NAME.yaml`.
    fn scores(
        &self,
        config: &ExperimentConfig,
        stem: &str,
        name: &str,
        cases: &[relkd_core::dataset::Case],
    ) -> anyhow::Result<Vec<CaseScore>> {
        let path = self.dir.join("scores").join(format!("{name}.yaml"));
        if let Ok(text) = fs::read_to_string(&path) {
            return serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()));
        }
        let (net, _) = load_model(&self.dir.join(format!("{stem}.bpk")), &self.devices.main)?;
        let bar = progress_bar(cases.len() as u64, &format!("scoring {name}"));
        let plain = self.devices.main.clone().without_autodiff();
        let net = net.valid();
        let (scores, _) = score_cases(&|x| net.forward(x), cases, config, &plain, &|| bar.inc(1));
        bar.finish_and_clear();
        fs::create_dir_all(path.parent().expect("scores folder"))?;
        write_atomic(&path, serde_yaml::to_string(&scores)?.as_bytes())
            .with_context(|| format!("{}", path.display()))?;
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn overrides_merge_mappings_key_by_key_and_replace_the_rest() {
        let mut base = yaml("a: { b: 1, c: [1, 2] }\nd: x");
        merge(&mut base, &yaml("a: { c: [3], e: 4 }"));
        assert_eq!(base, yaml("a: { b: 1, c: [3], e: 4 }\nd: x"));
        merge(&mut base, &serde_yaml::Value::Null);
        assert_eq!(base, yaml("a: { b: 1, c: [3], e: 4 }\nd: x"));
    }

    #[test]
    fn overrides_change_one_setting_of_the_base_and_typos_are_errors() {
        let quick = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quick.yaml");
        let plain = load_base(&quick, &serde_yaml::Value::Null).unwrap();
        let swept = load_base(&quick, &yaml("losses: { lambda: { aam: 0.9 }, ramp_epochs: 4 }")).unwrap();
        assert_eq!(swept.losses.lambda.aam, 0.9);
        assert_eq!(swept.losses.ramp_epochs, 4.0);
        let mut expected = plain.clone();
        expected.losses.lambda.aam = 0.9;
        expected.losses.ramp_epochs = 4.0;
        assert_eq!(swept.to_yaml(), expected.to_yaml());
        let typo = load_base(&quick, &yaml("losses: { lamda: { aam: 0.9 } }")).unwrap_err();
        assert!(format!("{typo:#}").contains("lamda"), "{typo:#}");
    }
}
