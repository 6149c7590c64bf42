//! The frozen teacher of a distillation: a relkd network run by Burn, or an ONNX graph with a
//! feature output run by ONNX Runtime (no gradient ever reaches the teacher, so nothing ties
//! it to Burn; on the CPU ONNX Runtime runs it several times faster).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ort::session::Session;
use ort::value::{Outlet, TensorRef};
use relkd_export::onnx::FEATURES_OUTPUT;
use relkd_export::{Options, Outputs, Probe, export};
use relkd_infer::runtime::{Provider, runtime};
use relkd_models::{Network, SegOutput, Segmenter};
use relkd_runs::card::ModelCard;
use relkd_runs::config::TeacherRuntime;

/// A frozen teacher.
// One per distillation, so the size of the Burn variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Teacher {
    /// A validation snapshot (`Module::valid`) run by Burn on the student's device.
    Burn(Network),
    /// An ONNX graph run by ONNX Runtime on the CPU.
    Onnx(Arc<OnnxTeacher>),
}

impl Teacher {
    /// relkd's trained `net` (with its `card`) as the distillation's teacher on `runtime`, for
    /// students training on the CPU or not (`on_cpu`); for ONNX Runtime it is exported to
    /// `onnx_path` first (replacing an earlier export there). Says which runtime it chose.
    pub fn of_network(
        net: &Network,
        card: &ModelCard,
        runtime: TeacherRuntime,
        on_cpu: bool,
        onnx_path: &Path,
    ) -> anyhow::Result<Self> {
        let onnx = || -> anyhow::Result<Self> {
            let onnx = OnnxTeacher::export(net, card, onnx_path)?;
            println!(
                "teacher on ONNX Runtime: {} (logits and {} checked against Burn's within 1e-4)",
                onnx_path.display(),
                net.tap().name
            );
            Ok(Self::Onnx(Arc::new(onnx)))
        };
        match runtime {
            TeacherRuntime::Burn => Ok(Self::Burn(net.clone())),
            TeacherRuntime::Onnx => onnx(),
            // On a GPU Burn runs the teacher beside the student; ONNX Runtime would add a copy
            // to the host and back each step.
            TeacherRuntime::Auto if !on_cpu => Ok(Self::Burn(net.clone())),
            TeacherRuntime::Auto => match runtime_library() {
                Ok(()) => onnx(),
                Err(e) => {
                    println!("teacher on Burn: {e} (teacher.runtime: burn silences this note)");
                    Ok(Self::Burn(net.clone()))
                }
            },
        }
    }

    /// Logits `[b, k, h, w]` and tapped feature of `images` (on a device without autodiff),
    /// on the images' device.
    pub fn forward_features(&self, images: Tensor<4>) -> SegOutput {
        match self {
            Self::Burn(net) => net.forward_features(images),
            Self::Onnx(onnx) => onnx.forward_features(images),
        }
    }

    /// Channels of the tapped feature, which the KMM adapter is sized by.
    pub fn feature_channels(&self) -> usize {
        match self {
            Self::Burn(net) => net.tap().channels,
            Self::Onnx(onnx) => onnx.feature_channels,
        }
    }

    /// The teacher for a step on `device` (data-parallel training): Burn's weights are copied
    /// there; ONNX Runtime's session is shared.
    pub fn fork(&self, device: &Device) -> Self {
        match self {
            Self::Burn(net) => Self::Burn(net.clone().fork(device)),
            Self::Onnx(onnx) => Self::Onnx(onnx.clone()),
        }
    }
}

/// Whether ONNX Runtime's library loads, for `teacher.runtime: auto`.
fn runtime_library() -> anyhow::Result<()> {
    runtime().map(drop).map_err(|e| anyhow::anyhow!("{}", e.to_string().lines().next().unwrap_or_default()))
}

/// An ONNX graph with an image input, logits and a feature output, in one ONNX Runtime session.
pub struct OnnxTeacher {
    /// Where the graph was read from, for messages.
    pub path: PathBuf,
    session: Mutex<Session>,
    input: String,
    logits: String,
    feature: String,
    pub feature_channels: usize,
}

impl std::fmt::Debug for OnnxTeacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxTeacher").field("path", &self.path).field("feature", &self.feature).finish()
    }
}

impl OnnxTeacher {
    /// relkd's own trained `net` (with its `card`), exported to `path` with its tap as a
    /// second output and opened. The export checks logits and feature against Burn's within
    /// 1e-4 on a random input at the training size before anything is written.
    pub fn export(net: &Network, card: &ModelCard, path: &Path) -> anyhow::Result<Self> {
        let device = Device::flex();
        let (c, s) = (card.in_channels, card.preprocessing.size);
        let probes = [Probe::random([2, c, s, s], &device)];
        let options = Options { outputs: Outputs::LogitsAndFeatures, ..Options::fp32() };
        export(net, card, path, &options, &probes, &device)
            .with_context(|| format!("exporting the teacher to {} for ONNX Runtime", path.display()))?;
        Self::open(path, FEATURES_OUTPUT, [1, c, s, s])
    }

    /// Opens the graph in `path` on the CPU provider, with `feature` the output (or inner
    /// tensor) to distil from; `probe_shape` is an input it must accept, run once to learn the
    /// feature's channels.
    pub fn open(path: &Path, feature: &str, probe_shape: [usize; 4]) -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (session, _) = runtime()?.session(path, Provider::Cpu, threads)?;
        let name = |i: &Outlet| i.name().to_string();
        let input = session.inputs().first().map(name).context("the graph has no input")?;
        let logits = session.outputs().first().map(name).context("the graph has no output")?;
        let mut teacher = Self {
            path: path.to_path_buf(),
            session: Mutex::new(session),
            input,
            logits,
            feature: feature.to_string(),
            feature_channels: 0,
        };
        let probe = Tensor::<4>::zeros(probe_shape, &Device::flex());
        let [_, channels, _, _] = teacher.run(probe).map_err(anyhow::Error::msg)?.feature.dims();
        teacher.feature_channels = channels;
        Ok(teacher)
    }

    fn forward_features(&self, images: Tensor<4>) -> SegOutput {
        self.run(images).unwrap_or_else(|e| {
            panic!("{}: ONNX Runtime failed on a batch it had run before: {e}", self.path.display())
        })
    }

    fn run(&self, images: Tensor<4>) -> Result<SegOutput, String> {
        let (shape, device) = (images.dims(), images.device());
        let data = images.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        let input = TensorRef::from_array_view((shape, data.as_slice())).map_err(|e| e.to_string())?;
        let mut session = self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outputs = session.run(ort::inputs![self.input.as_str() => input]).map_err(|e| e.to_string())?;
        let tensor = |name: &str| -> Result<Tensor<4>, String> {
            let value = outputs.get(name).ok_or_else(|| format!("the graph has no output '{name}'"))?;
            let (dims, values) = value.try_extract_tensor::<f32>().map_err(|e| format!("output '{name}': {e}"))?;
            let dims: [usize; 4] = dims
                .iter()
                .map(|&d| d as usize)
                .collect::<Vec<_>>()
                .try_into()
                .map_err(|d: Vec<usize>| format!("output '{name}' has shape {d:?}, not [N, C, H, W]"))?;
            Ok(Tensor::from_data(TensorData::new(values.to_vec(), dims), &device))
        };
        Ok(SegOutput { logits: tensor(&self.logits)?, feature: tensor(&self.feature)? })
    }
}
