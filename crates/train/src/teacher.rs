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
use relkd_core::files::Pending;
use relkd_export::onnx::FEATURES_OUTPUT;
use relkd_export::{Options, Outputs, Probe, export};
use relkd_infer::model::{Model, ModelError, ModelInfo};
use relkd_infer::runtime::{Provider, runtime};
use relkd_models::{Network, Segmenter};
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
    /// students training on flex or not (`on_flex`); for ONNX Runtime it is exported to
    /// `onnx_path` first (replacing an earlier export there). Says which runtime it chose.
    pub fn of_network(
        net: &Network,
        card: &ModelCard,
        runtime: TeacherRuntime,
        on_flex: bool,
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
            // to the host and back each step (and on cubecl-cpu the teacher's kernels are the point).
            TeacherRuntime::Auto if !on_flex => Ok(Self::Burn(net.clone())),
            TeacherRuntime::Auto => match runtime_library() {
                Ok(()) => onnx(),
                Err(e) => {
                    println!("teacher on Burn: {e} (teacher.runtime: burn silences this note)");
                    Ok(Self::Burn(net.clone()))
                }
            },
        }
    }

    /// Logits `[b, k, h, w]` and, where the teacher has one, the feature distilled from, for
    /// `images` (on a device without autodiff), on the images' device.
    pub fn forward_features(&self, images: Tensor<4>) -> TeacherOutput {
        match self {
            Self::Burn(net) => {
                let out = net.forward_features(images);
                TeacherOutput { logits: out.logits, feature: Some(out.feature) }
            }
            Self::Onnx(onnx) => onnx.forward_features(images),
        }
    }

    /// Logits `[b, k, h, w]` of `images`, as [`Teacher::forward_features`].
    pub fn logits(&self, images: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Burn(net) => net.forward(images),
            Self::Onnx(onnx) => onnx.forward_features(images).logits,
        }
    }

    /// Channels of the feature distilled from (the KMM adapter is sized by them); None for a
    /// teacher that distils through its logits only.
    pub fn feature_channels(&self) -> Option<usize> {
        match self {
            Self::Burn(net) => Some(net.tap().channels),
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

/// What the frozen teacher gives for a batch.
#[derive(Debug, Clone)]
pub struct TeacherOutput {
    /// `[b, classes, h, w]`, the input's height and width.
    pub logits: Tensor<4>,
    /// `[b, channels, h', w']`: the tapped feature; None for a logits-only ONNX teacher.
    pub feature: Option<Tensor<4>>,
}

/// Classes of every label relkd trains on: background and prostate.
const CLASSES: usize = 2;

fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The model in `bytes`, checked to take slices of `channels` channels, and the feature it
/// distils from: `name`, else the tap a relkd export `--with-features` names in its metadata
/// (`relkd.features`), else none. A feature that is not a graph output yet is the node output
/// of that name, appended as one (float, shape left to ONNX Runtime).
fn checked_graph(bytes: &[u8], name: Option<&str>, channels: usize) -> Result<(Vec<u8>, Option<String>), String> {
    use onnx_protobuf::{Message, ModelProto, ValueInfoProto};

    let mut model = ModelProto::parse_from_bytes(bytes).map_err(|e| format!("not an ONNX model ({e})"))?;
    let relkd_tap = model.metadata_props.iter().any(|p| p.key == "relkd.features").then_some(FEATURES_OUTPUT);
    let feature = name.or(relkd_tap).map(str::to_string);
    let Some(graph) = model.graph.as_mut().filter(|g| !g.node.is_empty()) else {
        return Err("not an ONNX model (no graph)".into());
    };
    let input = graph.input.first().and_then(declared_dims).unwrap_or_default();
    if !input.is_empty() && input.len() != 4 {
        return Err(format!(
            "its input has rank {} (a 3D model?); a teacher must take slices [N, C, H, W], as the students do",
            input.len()
        ));
    }
    if let Some(&declared) = input.get(1).filter(|&&c| c > 0 && c as usize != channels) {
        return Err(format!(
            "its input takes {declared} channel(s), the students' slices have {channels} (2 × preprocessing.context + 1)"
        ));
    }
    if let Some(name) = feature.as_deref()
        && !graph.output.iter().any(|o| o.name == name)
    {
        if !graph.node.iter().any(|n| n.output.iter().any(|o| o == name)) {
            let some: Vec<&str> = graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).take(8).collect();
            return Err(format!(
                "it has no tensor named '{name}' to distil from; its node outputs include {}",
                some.join(", ")
            ));
        }
        let mut output = ValueInfoProto::new();
        output.name = name.to_string();
        graph.output.push(output);
    }
    Ok((model.write_to_bytes().map_err(|e| e.to_string())?, feature))
}

/// The dimensions a graph input declares (0 where symbolic), when it declares a shape.
fn declared_dims(value: &onnx_protobuf::ValueInfoProto) -> Option<Vec<i64>> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;

    match value.type_.as_ref()?.value.as_ref()? {
        onnx_protobuf::type_proto::Value::TensorType(tensor) => Some(
            tensor
                .shape
                .as_ref()?
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(v)) => v,
                    _ => 0,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// infer's contract error reworded for a teacher; other errors as they are.
fn contract_message(e: ModelError) -> String {
    match e {
        ModelError::Contract { problem, .. } => {
            format!("{problem}; a teacher must take [N, C, H, W] and give logits [N, {CLASSES}, H, W]")
        }
        other => other.to_string(),
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
    feature: Option<String>,
    pub feature_channels: Option<usize>,
    /// What it was given as metadata about its input (`relkd.*` keys), if anything.
    pub info: ModelInfo,
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
        let opened = Model::open(path, Provider::Cpu, cpu_threads())?;
        Self::with_model(path, opened, Some(FEATURES_OUTPUT), [1, c, s, s])
    }

    /// Any ONNX segmentation model as a teacher: `feature` names the tensor to distil from (a
    /// graph output or any node's output, which is then exposed as an output; none: the tap of
    /// a relkd export `--with-features`, else the logits only). Checked before any training: an
    /// ONNX file, the named tensor present, an input `[N, C, H, W]` that takes `input` (the
    /// students' batches), logits `[N, 2, H, W]` at the input's height and width, a feature of
    /// rank 4. The edited graph is staged in the temporary folder while ONNX Runtime reads it;
    /// `provider` runs it (CUDA for students on a GPU, never silently the CPU instead).
    pub fn from_file(
        source: &Path,
        feature: Option<&str>,
        input: [usize; 4],
        provider: Provider,
    ) -> anyhow::Result<Self> {
        let bytes = std::fs::read(source).with_context(|| format!("reading the teacher {}", source.display()))?;
        let (model, feature) = checked_graph(&bytes, feature, input[1])
            .map_err(|e| anyhow::anyhow!("teacher {}: {e}", source.display()))?;
        let name = source.file_name().unwrap_or_default();
        let staged = Pending::beside(&std::env::temp_dir().join(name));
        relkd_core::files::write_atomic(&staged, &model).with_context(|| format!("{}", staged.display()))?;
        let opened = Model::open(&staged, provider, cpu_threads())
            .map_err(|e| anyhow::anyhow!("teacher {}: {}", source.display(), contract_message(e)))?;
        Self::with_model(source, opened, feature.as_deref(), input)
            .map_err(|e| anyhow::anyhow!("teacher {}: {e:#}", source.display()))
    }

    /// `model` as a teacher distilling from its output `feature` (or its logits alone);
    /// `probe_shape` is an input it must accept, run once to check the outputs and learn the
    /// feature's channels.
    fn with_model(path: &Path, model: Model, feature: Option<&str>, probe_shape: [usize; 4]) -> anyhow::Result<Self> {
        let Model { session, info, .. } = model;
        let name = |i: &Outlet| i.name().to_string();
        let input = session.inputs().first().map(name).context("the graph has no input")?;
        let logits = session.outputs().first().map(name).context("the graph has no output")?;
        let mut teacher = Self {
            path: path.to_path_buf(),
            session: Mutex::new(session),
            input,
            logits,
            feature: feature.map(str::to_string),
            feature_channels: None,
            info,
        };
        let probe = Tensor::<4>::zeros(probe_shape, &Device::flex());
        let out = teacher.run(probe).map_err(anyhow::Error::msg)?;
        let [n, _, h, w] = probe_shape;
        let [ln, classes, lh, lw] = out.logits.dims();
        anyhow::ensure!(
            [ln, lh, lw] == [n, h, w] && classes == CLASSES,
            "for an input {probe_shape:?} its logits ('{}') are {:?}; a teacher must give [N, {CLASSES}, H, W] at \
             the input's height and width (background and prostate, as the labels)",
            teacher.logits,
            out.logits.dims()
        );
        teacher.feature_channels = out.feature.map(|f| f.dims()[1]);
        Ok(teacher)
    }

    /// The tensor it distils features from, if any.
    pub fn feature_name(&self) -> Option<&str> {
        self.feature.as_deref()
    }

    fn forward_features(&self, images: Tensor<4>) -> TeacherOutput {
        self.run(images).unwrap_or_else(|e| {
            panic!("{}: ONNX Runtime failed on a batch it had run before: {e}", self.path.display())
        })
    }

    fn run(&self, images: Tensor<4>) -> Result<TeacherOutput, String> {
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
        let feature = self.feature.as_deref().map(tensor).transpose()?;
        Ok(TeacherOutput { logits: tensor(&self.logits)?, feature })
    }
}
