//! What the teacher and the student of a run are: relkd's networks by architecture and width,
//! or, for the teacher, a trained model's ONNX file.

use std::path::PathBuf;

use relkd_models::Architecture;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub architecture: Architecture,
    /// Channel multiplier (UNet++: base filters = 64 × width); 1.0 is the paper's network.
    #[serde(default = "default_width")]
    pub width: f64,
    /// Where the frozen teacher runs while it distils (teachers only). How a teacher is run is
    /// not what it is: its training and cache key ignore this.
    #[serde(default, skip_serializing_if = "TeacherRuntime::is_auto")]
    pub runtime: TeacherRuntime,
}

/// The teacher of a run: a network relkd trains (and caches) itself, or a trained model from any
/// framework given as an ONNX file, which relkd runs frozen on ONNX Runtime and never trains.
/// In YAML either `teacher: {architecture: unetpp, width: 0.25}` or
/// `teacher: {onnx: teacher.onnx, features: NODE_OUTPUT}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TeacherFields", into = "TeacherFields")]
pub enum TeacherSpec {
    Relkd(ModelSpec),
    Onnx(OnnxTeacherSpec),
}

/// A teacher given as an ONNX file.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxTeacherSpec {
    /// Absolute once a run resolves it, so a run folder's config.yaml names it from anywhere.
    pub path: PathBuf,
    /// The tensor (a graph output or any node's output) that KMM and attention transfer distil
    /// from; without it the teacher distils through its logits only (LM, AAM, KD).
    pub features: Option<String>,
}

impl TeacherSpec {
    /// relkd's own teacher network of this architecture, at full width.
    pub fn relkd(architecture: Architecture) -> Self {
        Self::Relkd(ModelSpec { architecture, width: 1.0, runtime: TeacherRuntime::Auto })
    }

    /// relkd's `architecture` in place of this teacher, keeping its width and runtime.
    pub fn with_architecture(&self, architecture: Architecture) -> Self {
        match self {
            Self::Relkd(spec) => Self::Relkd(ModelSpec { architecture, ..*spec }),
            Self::Onnx(_) => Self::relkd(architecture),
        }
    }

    /// Where the frozen teacher runs while it distils.
    pub fn runtime(&self) -> TeacherRuntime {
        match self {
            Self::Relkd(spec) => spec.runtime,
            Self::Onnx(_) => TeacherRuntime::Onnx,
        }
    }

    /// The network relkd trains as the teacher; None for an ONNX teacher.
    pub fn network(&self) -> Option<&ModelSpec> {
        match self {
            Self::Relkd(spec) => Some(spec),
            Self::Onnx(_) => None,
        }
    }

    /// For reports and progress lines: the architecture's name, or the ONNX file's.
    pub fn display_name(&self) -> String {
        match self {
            Self::Relkd(spec) => spec.architecture.display_name().to_string(),
            Self::Onnx(onnx) => onnx.file_name(),
        }
    }

    /// For run folder names: the architecture's short name, or the ONNX file's stem.
    pub fn short_name(&self) -> String {
        match self {
            Self::Relkd(spec) => spec.architecture.name().to_string(),
            Self::Onnx(onnx) => onnx.path.file_stem().map_or("onnx".into(), |s| s.to_string_lossy().into_owned()),
        }
    }
}

impl OnnxTeacherSpec {
    pub fn file_name(&self) -> String {
        self.path.file_name().map_or_else(|| self.path.display().to_string(), |n| n.to_string_lossy().into_owned())
    }
}

/// `teacher:` as written in YAML: the fields of both kinds, checked into a [`TeacherSpec`] so
/// that a mix of the two is a clear error rather than serde's "no variant matched".
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeacherFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architecture: Option<Architecture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    width: Option<f64>,
    #[serde(default, skip_serializing_if = "TeacherRuntime::is_auto")]
    runtime: TeacherRuntime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    onnx: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    features: Option<String>,
}

impl TryFrom<TeacherFields> for TeacherSpec {
    type Error = String;

    fn try_from(f: TeacherFields) -> Result<Self, String> {
        match (f.architecture, f.onnx) {
            (Some(architecture), None) => {
                if f.features.is_some() {
                    return Err("teacher.features names a tensor of a teacher.onnx file; relkd's own \
                                teachers distil from their tap"
                        .into());
                }
                Ok(Self::Relkd(ModelSpec {
                    architecture,
                    width: f.width.unwrap_or_else(default_width),
                    runtime: f.runtime,
                }))
            }
            (None, Some(path)) => {
                if f.width.is_some() {
                    return Err(
                        "teacher.width sizes a network relkd trains; a teacher.onnx file is used as it is".into()
                    );
                }
                if f.runtime == TeacherRuntime::Burn {
                    return Err("a teacher.onnx file runs on ONNX Runtime; teacher.runtime: burn is for relkd's own \
                                teachers"
                        .into());
                }
                Ok(Self::Onnx(OnnxTeacherSpec { path, features: f.features }))
            }
            (Some(_), Some(_)) => Err("teacher: give architecture (a network relkd trains) or onnx (a trained \
                                       model's file), not both"
                .into()),
            (None, None) => Err("teacher: needs architecture (unetpp or deeplabv3plus, trained by relkd) or onnx \
                                 (a trained model's ONNX file)"
                .into()),
        }
    }
}

impl From<TeacherSpec> for TeacherFields {
    fn from(spec: TeacherSpec) -> Self {
        match spec {
            TeacherSpec::Relkd(m) => Self {
                architecture: Some(m.architecture),
                width: Some(m.width),
                runtime: m.runtime,
                onnx: None,
                features: None,
            },
            TeacherSpec::Onnx(o) => Self {
                architecture: None,
                width: None,
                runtime: TeacherRuntime::Auto,
                onnx: Some(o.path),
                features: o.features,
            },
        }
    }
}

/// What computes a frozen teacher's outputs during distillation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherRuntime {
    /// ONNX Runtime when training on the CPU and its library is found (the faster there, and
    /// equal within 1e-4), else Burn; the run says which.
    #[default]
    Auto,
    /// Burn, on the student's device.
    Burn,
    /// ONNX Runtime on the CPU, from the teacher's export with its tap as a second output
    /// (checked against Burn's logits and feature within 1e-4 when written); an error where
    /// its library is missing.
    Onnx,
}

impl TeacherRuntime {
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

fn default_width() -> f64 {
    1.0
}
