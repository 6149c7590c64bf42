//! An exported model opened for inference: its session and what its metadata says about the
//! input it expects.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::TensorRef;
use relkd_core::nifti_io::Volume;
use relkd_core::segment::{Segmentation, segment_volume};
use relkd_core::transforms::Preprocessing;

use crate::runtime::{Provider, RuntimeError, runtime};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(
        "{path} carries no relkd preprocessing metadata (relkd.input_size); give --size and --context \
         (the training input size and 2.5D context slices) to run it anyway"
    )]
    NoPreprocessing { path: PathBuf },
    #[error("{path}: metadata {key} = '{value}' is not a number")]
    BadMetadata { path: PathBuf, key: String, value: String },
    #[error("{path}: metadata {key} = '{value}' is not a number; give --size and --context to run it anyway")]
    BadPreprocessing { path: PathBuf, key: String, value: String },
    #[error(
        "{path} expects {expected} input channel(s) ({context} context slice(s) each side), \
         but {source_of_context} {given} makes {}", 2 * given + 1
    )]
    Channels { path: PathBuf, expected: usize, context: usize, given: usize, source_of_context: &'static str },
    #[error(
        "{path} contradicts itself: its graph takes {graph} input channel(s) but its metadata \
         (relkd.in_channels) says {metadata}; re-export it"
    )]
    ChannelMetadata { path: PathBuf, graph: usize, metadata: usize },
    #[error("{path}: ONNX Runtime failed: {message}")]
    Run { path: PathBuf, message: String },
    #[error(
        "{path} is not a segmentation model infer can run: {problem}; infer needs an input \
         [N, C, H, W] and logits [N, K, H, W] with K ≥ 2 classes at the input's height and width"
    )]
    Contract { path: PathBuf, problem: String },
}

/// What a relkd ONNX file says about itself (metadata keys `relkd.*`, written by `export`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub role: String,
    pub in_channels: Option<usize>,
    pub preprocessing: Option<Preprocessing>,
    /// A `relkd.input_size` or `relkd.context` that is not a number, as (key, value): the model
    /// runs only with `--size`.
    pub bad_preprocessing: Option<(String, String)>,
    pub live_params: Option<usize>,
    pub training_sites: String,
    pub target_site: String,
}

impl ModelInfo {
    /// Where the model comes from, as far as its metadata says: `student, trained on A, B`, or
    /// what is missing.
    pub fn provenance(&self) -> String {
        match (self.role.is_empty(), self.training_sites.is_empty(), self.preprocessing.is_some()) {
            (false, false, _) => format!("{}, trained on {}", self.role, self.training_sites),
            (false, true, _) => format!("{}, training sites not recorded", self.role),
            (true, false, _) => format!("role not recorded, trained on {}", self.training_sites),
            (true, true, true) => "relkd preprocessing metadata only; role and training sites not recorded".into(),
            (true, true, false) => "no relkd metadata".into(),
        }
    }
}

/// A session with its metadata.
pub struct Model {
    pub path: PathBuf,
    pub session: Session,
    /// The provider actually running it (with `auto`, CUDA or the CPU).
    pub provider: Provider,
    pub info: ModelInfo,
    /// Time spent inside ONNX Runtime's `run` so far (for the overhead figure).
    pub session_time: Duration,
}

impl Model {
    pub fn open(path: &Path, provider: Provider, threads: usize) -> Result<Self, ModelError> {
        let (session, provider) = runtime()?.session(path, provider, threads)?;
        let run = |e: ort::Error| ModelError::Run { path: path.into(), message: e.to_string() };
        let meta = session.metadata().map_err(run)?;
        let get = |key: &str| meta.custom(key);
        let number = |key: &str| -> Result<Option<usize>, ModelError> {
            get(key)
                .map(|v| {
                    v.trim().parse().map_err(|_| ModelError::BadMetadata {
                        path: path.into(),
                        key: key.into(),
                        value: v,
                    })
                })
                .transpose()
        };
        // A malformed size or context is an error only when no --size overrides it.
        let (size, context, bad_preprocessing) = match (number("relkd.input_size"), number("relkd.context")) {
            (Ok(size), Ok(context)) => (size, context, None),
            (Err(ModelError::BadMetadata { key, value, .. }), _)
            | (_, Err(ModelError::BadMetadata { key, value, .. })) => (None, None, Some((key, value))),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let preprocessing = size.map(|size| Preprocessing { size, context: context.unwrap_or(0) });
        let info = ModelInfo {
            name: get("relkd.model")
                .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
            role: get("relkd.role").unwrap_or_default(),
            in_channels: number("relkd.in_channels")?,
            preprocessing,
            bad_preprocessing,
            live_params: number("relkd.live_params")?,
            training_sites: get("relkd.training_sites").unwrap_or_default(),
            target_site: get("relkd.target_site").unwrap_or_default(),
        };
        drop(meta);
        let model = Self { path: path.into(), session, provider, info, session_time: Duration::ZERO };
        model.check_declared_shapes()?;
        Ok(model)
    }

    /// What the graph declares about its input and output: rank 4 each, and at least two
    /// classes when the class count is fixed. Symbolic sizes are checked on every run.
    fn check_declared_shapes(&self) -> Result<(), ModelError> {
        let contract = |problem: String| ModelError::Contract { path: self.path.clone(), problem };
        let declared = |value: Option<&ort::value::Outlet>| match value.map(|v| v.dtype()) {
            Some(ort::value::ValueType::Tensor { shape, .. }) => Some(shape.to_vec()),
            _ => None,
        };
        let (input, output) = (declared(self.session.inputs().first()), declared(self.session.outputs().first()));
        if let Some(shape) = input.filter(|s| s.len() != 4) {
            return Err(contract(format!("its input has shape {shape:?}")));
        }
        match output {
            None => Err(contract("it declares no tensor output".into())),
            Some(shape) if shape.len() != 4 => Err(contract(format!("its output has shape {shape:?}"))),
            Some(shape) if (0..2).contains(&shape[1]) => {
                Err(contract(format!("its output has {} class(es)", shape[1])))
            }
            Some(_) => Ok(()),
        }
    }

    /// The preprocessing to use: the model's own, or the user's `--size`/`--context` for a
    /// model without metadata. A given value that contradicts the model's input is an error.
    pub fn preprocessing(&self, size: Option<usize>, context: Option<usize>) -> Result<Preprocessing, ModelError> {
        if let (Some((key, value)), None) = (&self.info.bad_preprocessing, size) {
            return Err(ModelError::BadPreprocessing {
                path: self.path.clone(),
                key: key.clone(),
                value: value.clone(),
            });
        }
        let prep = match (self.info.preprocessing, size) {
            (Some(p), None) => Preprocessing { context: context.unwrap_or(p.context), ..p },
            (Some(p), Some(size)) => Preprocessing { size, context: context.unwrap_or(p.context) },
            (None, Some(size)) => Preprocessing { size, context: context.unwrap_or(0) },
            (None, None) => return Err(ModelError::NoPreprocessing { path: self.path.clone() }),
        };
        let graph = self.input_channels();
        if let (Some(graph), Some(metadata)) = (graph, self.info.in_channels)
            && graph != metadata
        {
            return Err(ModelError::ChannelMetadata { path: self.path.clone(), graph, metadata });
        }
        if let Some(expected) = self.info.in_channels.or(graph).filter(|&c| c != prep.channels()) {
            return Err(ModelError::Channels {
                path: self.path.clone(),
                expected,
                context: expected.saturating_sub(1) / 2,
                given: prep.context,
                source_of_context: match (context, self.info.preprocessing) {
                    (Some(_), _) => "--context",
                    (None, Some(_)) => "its metadata's relkd.context",
                    (None, None) => "the default context",
                },
            });
        }
        Ok(prep)
    }

    /// The fixed channel count of the graph's input, when it declares one.
    fn input_channels(&self) -> Option<usize> {
        let input = self.session.inputs().first()?;
        match input.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.get(1).filter(|&&c| c > 0).map(|&c| c as usize),
            _ => None,
        }
    }

    /// Logits for a batch `[n, c, h, w]`. The time spent in ONNX Runtime is added to
    /// [`Model::session_time`].
    pub fn logits(&mut self, shape: [usize; 4], input: &[f32]) -> Result<Vec<f32>, ModelError> {
        let path = self.path.clone();
        let run = |e: ort::Error| ModelError::Run { path: path.clone(), message: e.to_string() };
        let start = Instant::now();
        let tensor = TensorRef::from_array_view((shape, input)).map_err(run)?;
        let name = self.session.inputs()[0].name().to_string();
        let outputs = self.session.run(ort::inputs![name => tensor]).map_err(run)?;
        let (out_shape, logits) = outputs[0].try_extract_tensor::<f32>().map_err(run)?;
        let [n, _, h, w] = shape.map(|d| d as i64);
        if !matches!(**out_shape, [on, k, oh, ow] if on == n && k >= 2 && oh == h && ow == w) {
            return Err(ModelError::Contract {
                path: path.clone(),
                problem: format!("for an input of {shape:?} its logits are {:?}", &**out_shape),
            });
        }
        let logits = logits.to_vec();
        self.session_time += start.elapsed();
        Ok(logits)
    }

    /// Segments a volume, `batch` slices per run, with the foreground probability if asked.
    pub fn segment(
        &mut self,
        volume: &Volume,
        prep: &Preprocessing,
        batch: usize,
        probabilities: bool,
    ) -> Result<Segmentation, ModelError> {
        segment_volume(volume, prep, batch, probabilities, &mut |shape, input| self.logits(shape, &input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_says_what_the_metadata_holds_and_what_it_lacks() {
        let info = |role: &str, sites: &str, prep: bool| ModelInfo {
            name: "m".into(),
            role: role.into(),
            in_channels: None,
            preprocessing: prep.then_some(Preprocessing { size: 64, context: 0 }),
            bad_preprocessing: None,
            live_params: None,
            training_sites: sites.into(),
            target_site: String::new(),
        };
        assert_eq!(info("student", "BMC, UCL", true).provenance(), "student, trained on BMC, UCL");
        assert_eq!(
            info("", "", true).provenance(),
            "relkd preprocessing metadata only; role and training sites not recorded"
        );
        assert_eq!(info("", "", false).provenance(), "no relkd metadata");
        assert_eq!(info("teacher", "", true).provenance(), "teacher, training sites not recorded");
    }
}
