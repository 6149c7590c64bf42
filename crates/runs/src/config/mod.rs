//! Experiment configuration, read from YAML (`configs/`). Unknown keys are errors, so a typo
//! never silently falls back to a default; every value a run used is written back with it.

use std::path::{Path, PathBuf};

use relkd_core::phantom::PhantomConfig;
use relkd_core::transforms::{Augmentation, Preprocessing};
use relkd_models::NetworkConfig;
use serde::{Deserialize, Serialize};

use crate::losses::Gate;
use crate::losses::kernel_matrix::GramMode;
use crate::losses::segmentation::SegmentationLoss;
use crate::losses::{DistillationWeights, Term};
use crate::protocol::{Protocol, SitePlan};
use crate::schedule::CyclicLrConfig;

mod models;
pub use models::{ModelSpec, OnnxTeacherSpec, TeacherRuntime, TeacherSpec};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Yaml { path: PathBuf, source: serde_yaml::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One experiment: data, sites, preprocessing, the teacher/student pair and how they train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default)]
    pub data: DataConfig,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// The unseen site (folder name, canonical name or paper id such as `S6`).
    pub target: String,
    /// Explicit site lists; when absent, `protocol` fills them from `target`.
    #[serde(default)]
    pub sites: Option<SitePlan>,
    pub preprocessing: Preprocessing,
    /// Train on slices that contain prostate only (the reference practice).
    #[serde(default = "default_true")]
    pub foreground_only: bool,
    #[serde(default)]
    pub augmentation: Augmentation,
    /// The teacher's own augmentation when it differs from the students' (e.g. stronger zoom
    /// and contrast, so that a teacher trained on one site guides the students on theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_augmentation: Option<Augmentation>,
    /// Seeds the split of every site's cases into training, validation and test. Apart from
    /// `training.seed`, so that runs over several training seeds score the same test cases and
    /// their differences pair up.
    #[serde(default)]
    pub split_seed: u64,
    /// Fraction of each training site's cases held out to choose the checkpoint.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f32,
    /// Fraction of an evaluation site's cases kept for testing when the site is also a
    /// training site (the teacher's site under `cross`); a site nobody trains on is tested
    /// whole.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f32,
    pub teacher: TeacherSpec,
    pub student: ModelSpec,
    pub training: TrainingConfig,
    #[serde(default)]
    pub losses: LossConfig,
}

/// Where the data comes from: a dataset root, or (when absent) the phantom, generated once.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    #[serde(default)]
    pub root: Option<PathBuf>,
    #[serde(default)]
    pub phantom: PhantomConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub epochs: usize,
    /// The teacher's epochs when they differ from the students' (default: `epochs`). Under
    /// `cross` the teacher sees one site, a fifth of the students' slices, so a short CPU run
    /// gives it more epochs for a comparable number of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_epochs: Option<usize>,
    pub batch_size: usize,
    /// Adam with a cyclic learning rate (see [`crate::schedule`]).
    #[serde(default)]
    pub lr: CyclicLrConfig,
    /// Seeds the weights' initialisation, the slice order and the augmentation (not the split:
    /// see `split_seed`).
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub segmentation: SegmentationLoss,
    /// How the distilled student learns from the teacher besides `L_seg`.
    pub distiller: Distiller,
    /// λ1 (LM), λ2 (KMM), λ3 (AAM) of the relational distiller; 0 switches a module off.
    pub lambda: Lambda,
    /// Epochs over which every distillation weight ramps linearly from 0 to its value (step by
    /// step); 0 starts at full weight, as the paper does.
    pub ramp_epochs: f64,
    /// Where the pixel-wise terms (LM, AAM, KD) apply: `none` (every pixel, the paper) or
    /// `teacher_correct` (where the teacher's class equals the student image's ground truth).
    /// Left out of resolved configs when `none`, so runs from before it keep their hashes.
    #[serde(skip_serializing_if = "Gate::is_none")]
    pub gate: Gate,
    /// Softmax temperature of the logits module.
    pub temperature: f64,
    pub kmm_gram: GramMode,
    pub aam: AffinitySpec,
    pub hinton: HintonSpec,
    pub attention: AttentionSpec,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            segmentation: SegmentationLoss::default(),
            distiller: Distiller::Relational,
            lambda: Lambda::default(),
            ramp_epochs: 0.0,
            gate: Gate::None,
            temperature: 1.0,
            kmm_gram: GramMode::Batch,
            aam: AffinitySpec::default(),
            hinton: HintonSpec::default(),
            attention: AttentionSpec::default(),
        }
    }
}

impl LossConfig {
    /// The weight of every distillation term under the chosen distiller (0 = off).
    pub fn weights(&self) -> DistillationWeights {
        let weights = match self.distiller {
            Distiller::Relational => {
                vec![(Term::Lm, self.lambda.lm), (Term::Kmm, self.lambda.kmm), (Term::Aam, self.lambda.aam)]
            }
            Distiller::Hinton => vec![(Term::Kd, self.hinton.weight)],
            Distiller::Attention => vec![(Term::At, self.attention.beta / 2.0)],
        };
        weights.into_iter().filter(|(_, w)| *w > 0.0).collect()
    }
}

/// The distilled student's teacher signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distiller {
    /// The paper's LM + KMM + AAM (eq. 8), weighted by `lambda`.
    #[default]
    Relational,
    /// Logit KD: T² · KL(p_t ‖ p_s) on softened probabilities (Table 4's comparison).
    Hinton,
    /// Attention transfer on the distillation features (Table 4's comparison).
    Attention,
}

/// λ1, λ2, λ3 of eq. 8.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lambda {
    pub lm: f64,
    pub kmm: f64,
    pub aam: f64,
}

impl Default for Lambda {
    /// The paper's λ1 = 0.2, λ2 = 0.9, λ3 = 0.9.
    fn default() -> Self {
        let paper = DistillationWeights::paper();
        Self { lm: paper.weight(Term::Lm), kmm: paper.weight(Term::Kmm), aam: paper.weight(Term::Aam) }
    }
}

/// Hinton's logit KD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HintonSpec {
    pub temperature: f64,
    pub weight: f64,
}

impl Default for HintonSpec {
    /// T = 4 (Hinton et al. used 1–20; 4 is the common choice) with weight 1 beside `L_seg`.
    fn default() -> Self {
        Self { temperature: 4.0, weight: 1.0 }
    }
}

/// Attention transfer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionSpec {
    /// β of the AT paper; the term is weighted β/2.
    pub beta: f64,
}

impl Default for AttentionSpec {
    fn default() -> Self {
        Self { beta: 1000.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffinitySpec {
    pub dilations: Vec<usize>,
    pub margin: f64,
    pub adaptive: bool,
    /// `L_P+` averaged per class, so foreground pairs count (not the paper's pooled mean).
    pub per_class_positive: bool,
}

impl Default for AffinitySpec {
    /// SPEC §4: dilations 1, 2, 3, margin 3, equal weights, P+ pooled.
    fn default() -> Self {
        Self { dilations: vec![1, 2, 3], margin: 3.0, adaptive: false, per_class_positive: false }
    }
}

fn default_protocol() -> Protocol {
    Protocol::Cross
}

fn default_true() -> bool {
    true
}

fn default_val_fraction() -> f32 {
    0.2
}

fn default_test_fraction() -> f32 {
    0.25
}

impl ExperimentConfig {
    /// Reads and checks a YAML file; every error names the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Self =
            serde_yaml::from_str(text).map_err(|source| ConfigError::Yaml { path: origin.into(), source })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: origin.into(), message })?;
        Ok(config)
    }

    /// The augmentation the teacher trains with.
    pub fn teacher_augmentation(&self) -> Augmentation {
        self.teacher_augmentation.unwrap_or(self.augmentation)
    }

    /// The network relkd trains as the teacher; None when the teacher is an ONNX file.
    pub fn teacher_network(&self) -> Option<NetworkConfig> {
        self.teacher.network().map(|spec| self.network(spec))
    }

    pub fn student_network(&self) -> NetworkConfig {
        self.network(&self.student)
    }

    /// Two classes (background, prostate); input channels from the 2.5D context.
    fn network(&self, spec: &ModelSpec) -> NetworkConfig {
        NetworkConfig::new(spec.architecture).with_in_channels(self.preprocessing.channels()).with_width(spec.width)
    }

    /// The resolved configuration as YAML, written beside a run's outputs.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("configs serialise")
    }

    /// Ranges serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.training;
        let l = &self.losses.lambda;
        let checks = [
            (t.epochs > 0, "training.epochs must be at least 1".to_string()),
            (t.teacher_epochs != Some(0), "training.teacher_epochs must be at least 1".to_string()),
            (t.batch_size > 0, "training.batch_size must be at least 1".to_string()),
            (t.lr.step_size > 0, "training.lr.step_size must be at least 1".to_string()),
            (
                0.0 < t.lr.base_lr && t.lr.base_lr <= t.lr.max_lr,
                format!("training.lr needs 0 < base_lr ≤ max_lr, got {} and {}", t.lr.base_lr, t.lr.max_lr),
            ),
            (
                self.preprocessing.size >= 16,
                format!("preprocessing.size must be at least 16, got {}", self.preprocessing.size),
            ),
            (
                (0.0..1.0).contains(&self.val_fraction),
                format!("val_fraction must be in [0, 1), got {}", self.val_fraction),
            ),
            (
                0.0 < self.test_fraction && self.test_fraction < 1.0,
                format!("test_fraction must be in (0, 1), got {}", self.test_fraction),
            ),
            (
                self.teacher.network().is_none_or(|t| t.width > 0.0),
                format!("teacher.width must be positive, got {}", self.teacher.network().map_or(1.0, |t| t.width)),
            ),
            (self.student.width > 0.0, format!("student.width must be positive, got {}", self.student.width)),
            (
                self.student.runtime.is_auto(),
                "student.runtime: only the frozen teacher has a runtime (teacher.runtime)".to_string(),
            ),
            (
                self.losses.temperature > 0.0,
                format!("losses.temperature must be positive, got {}", self.losses.temperature),
            ),
            (!self.losses.aam.dilations.is_empty(), "losses.aam.dilations must not be empty".to_string()),
            (
                self.losses.ramp_epochs >= 0.0,
                format!("losses.ramp_epochs must not be negative, got {}", self.losses.ramp_epochs),
            ),
            (
                self.losses.hinton.temperature > 0.0,
                format!("losses.hinton.temperature must be positive, got {}", self.losses.hinton.temperature),
            ),
            (
                [l.lm, l.kmm, l.aam, self.losses.hinton.weight, self.losses.attention.beta].iter().all(|w| *w >= 0.0),
                "losses: weights (lambda, hinton.weight, attention.beta) must not be negative".to_string(),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(message),
            None => Ok(()),
        }
    }
}
