//! `export`: a trained network to an ONNX file that ONNX Runtime runs exactly as Burn does.
//!
//! [`onnx`] builds the graph from the network's own lowering (`relkd_models::lower`);
//! [`export`] adds the metadata inference needs, writes the file atomically, and verifies it:
//! the file is run with ONNX Runtime on random inputs and on real slices, and its logits are
//! compared with Burn's. A file that disagrees is not written.

pub mod cli;
pub mod onnx;
pub mod quantize;
pub mod speed;
pub mod web;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use onnx_protobuf::Message;
use ort::session::Session;
use ort::value::TensorRef;
use relkd_core::files::{LATEST_EXPORT, Pending, remove_stale_partials, write_atomic};
use relkd_infer::runtime::{Provider, runtime};
use relkd_models::{Network, Segmenter};
use relkd_runs::card::ModelCard;

use crate::quantize::{Quantizer, Ranges};

pub use onnx::Precision;
pub use quantize::Activations;
pub use speed::Int8Timing;

/// The largest difference to Burn's logits an fp32 file may show.
pub const FP32_TOLERANCE: f32 = 1e-4;

/// The share of pixels whose predicted class an fp16 file may change on a probe.
pub const FP16_MASK_DISAGREEMENT: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("ONNX Runtime could not run the exported graph: {0}")]
    Runtime(String),
    #[error("the exported graph disagrees with Burn on {what}: {detail}; nothing was written")]
    Mismatch { what: String, detail: String },
    #[error("int8 activations need calibration slices, and none were given; nothing was written")]
    NoCalibration,
}

/// How a file is written and when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub precision: Precision,
    pub opset: i64,
    pub acceptance: Acceptance,
    pub outputs: Outputs,
}

impl Options {
    /// Float32 weights, opset 17, logits within [`FP32_TOLERANCE`].
    pub fn fp32() -> Self {
        Self {
            precision: Precision::F32,
            opset: 17,
            acceptance: Acceptance::Logits(FP32_TOLERANCE),
            outputs: Outputs::Logits,
        }
    }
}

/// When a probe passes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Acceptance {
    /// Every logit within this of Burn's (float32 weights).
    Logits(f32),
    /// Predicted classes agree on all but this share of pixels: for half-precision weights,
    /// whose logits drift by far more than float32 rounding. The logit difference is reported.
    Masks(f64),
}

/// One input the exported graph is checked on, and how it is described.
pub struct Probe {
    pub what: String,
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
    pub data: Vec<f32>,
    /// Real images may hold runs of equal values. Where a max-pool window's candidates are
    /// equal up to float rounding, Burn and ONNX Runtime may pick different winners, and a
    /// max-unpooling network (ENet) then places that value at a different pixel: a difference
    /// of order 1 in a 2×2 patch that is no error of the graph. Such probes accept logits
    /// beyond the tolerance when the predicted masks still agree on all but
    /// [`MASK_DISAGREEMENT`] of the pixels; the count is reported.
    pub unpool_ties: bool,
}

/// The share of pixels whose predicted class may differ on a probe with `unpool_ties`.
pub const MASK_DISAGREEMENT: f64 = 1e-3;

impl Probe {
    /// Normal noise of the given shape (z-scored images are roughly standard normal): no ties.
    pub fn random(shape: [usize; 4], device: &Device) -> Self {
        let t = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
        let data = t.into_data().try_into_vec::<f32>().expect("float");
        let what = format!("random {}×{}×{}×{}", shape[0], shape[1], shape[2], shape[3]);
        Self { what, shape, data, unpool_ties: false }
    }
}

/// What one probe showed.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub max_abs_diff: f32,
    /// Logits beyond the tolerance (only on probes with `unpool_ties`).
    pub beyond_tolerance: usize,
    pub logits: usize,
    /// Pixels whose predicted class differs.
    pub mask_disagreement: usize,
}

impl Check {
    fn compare(probe: &Probe, reference: &[f32], got: &[f32], acceptance: Acceptance) -> Result<Self, ExportError> {
        let mismatch = |detail: String| ExportError::Mismatch { what: probe.what.clone(), detail };
        if got.len() != reference.len() {
            return Err(mismatch(format!("{} logits, Burn gives {}", got.len(), reference.len())));
        }
        let diffs: Vec<f32> = reference.iter().zip(got).map(|(a, b)| (a - b).abs()).collect();
        let max_abs_diff = diffs.iter().copied().fold(0.0f32, f32::max);
        let [n, _, h, w] = probe.shape;
        let classes = reference.len() / (n * h * w);
        let argmax = |l: &[f32], i: usize, p: usize| {
            (0..classes).fold(0, |best, k| {
                if l[(i * classes + k) * h * w + p] > l[(i * classes + best) * h * w + p] { k } else { best }
            })
        };
        let mask_disagreement = (0..n)
            .flat_map(|i| (0..h * w).map(move |p| (i, p)))
            .filter(|&(i, p)| argmax(reference, i, p) != argmax(got, i, p))
            .count();
        let pixels = (n * h * w) as f64;
        let tolerance = match acceptance {
            Acceptance::Logits(t) => t,
            Acceptance::Masks(_) => f32::INFINITY,
        };
        let check = Self {
            what: probe.what.clone(),
            max_abs_diff,
            beyond_tolerance: diffs.iter().filter(|d| **d > tolerance).count(),
            logits: diffs.len(),
            mask_disagreement,
        };
        let masks_within = |share: f64| (mask_disagreement as f64) <= share * pixels;
        let passes = max_abs_diff.is_finite()
            && match acceptance {
                Acceptance::Logits(t) => max_abs_diff <= t || (probe.unpool_ties && masks_within(MASK_DISAGREEMENT)),
                Acceptance::Masks(share) => masks_within(share),
            };
        if passes {
            return Ok(check);
        }
        Err(mismatch(match acceptance {
            Acceptance::Logits(t) => format!("logits differ by up to {max_abs_diff:.3e} (tolerance {t:.0e})"),
            Acceptance::Masks(share) => format!(
                "predicted classes differ at {mask_disagreement} of {pixels} pixels (allowed {:.1}%)",
                share * 100.0
            ),
        }))
    }
}

/// What an exported graph outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// `logits`, what inference needs.
    Logits,
    /// `logits` and the distillation tap as `features` ([`onnx::FEATURES_OUTPUT`]): a teacher
    /// that distillation runs on ONNX Runtime.
    LogitsAndFeatures,
}

/// The ONNX model of `net` with the card's metadata.
pub fn to_onnx(
    net: &Network,
    card: &ModelCard,
    precision: Precision,
    opset: i64,
    outputs: Outputs,
) -> onnx_protobuf::ModelProto {
    let features = outputs == Outputs::LogitsAndFeatures;
    let mut model = onnx::OnnxGraph::model(net, card.in_channels, card.classes, precision, opset, features);
    let tap = net.tap();
    let p = &card.preprocessing;
    onnx::metadata(
        &mut model,
        &[
            ("relkd.model", card.architecture.display_name().to_string()),
            ("relkd.architecture", card.architecture.name().to_string()),
            ("relkd.role", card.model.clone()),
            ("relkd.classes", card.classes.to_string()),
            ("relkd.in_channels", card.in_channels.to_string()),
            ("relkd.context", p.context.to_string()),
            ("relkd.normalization", "z-score per volume".to_string()),
            ("relkd.input_size", p.size.to_string()),
            ("relkd.resize", "bilinear, half-pixel (align_corners = false)".to_string()),
            ("relkd.width", card.width.to_string()),
            ("relkd.live_params", card.live_params.to_string()),
            ("relkd.run_id", card.run_id.clone()),
            ("relkd.config_hash", card.config_hash.clone()),
            ("relkd.training_sites", card.trained_sites.join(",")),
            ("relkd.target_site", card.target_site.clone()),
            ("relkd.distillation", card.distillation.join(", ")),
            ("relkd.batch_norm", "folded into the preceding convolution where one precedes it".to_string()),
            (
                "relkd.weights",
                match precision {
                    Precision::F32 => "float32",
                    Precision::F16 => "float16 initializers, computed in float32",
                }
                .to_string(),
            ),
        ],
    );
    if features {
        let description = format!("{} ({} channels, stride {})", tap.name, tap.channels, tap.stride);
        onnx::metadata(&mut model, &[("relkd.features", description)]);
    }
    model
}

/// Burn's logits and tapped feature for a probe (`net` in inference mode), flat.
fn burn_outputs(net: &Network, probe: &Probe, device: &Device) -> (Vec<f32>, Vec<f32>) {
    let x = Tensor::<4>::from_data(TensorData::new(probe.data.clone(), probe.shape), device);
    let out = net.forward_features(x);
    let flat = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().expect("float outputs");
    (flat(out.logits), flat(out.feature))
}

/// One graph output: its shape and its values, flat.
pub type GraphOutput = (Vec<usize>, Vec<f32>);

/// An exported file opened with ONNX Runtime on the CPU, as a logits function.
pub struct OnnxPredictor {
    session: Mutex<Session>,
}

impl OnnxPredictor {
    pub fn new(model: &Path, threads: usize) -> Result<Self, ExportError> {
        let rt = runtime().map_err(|e| ExportError::Runtime(e.to_string()))?;
        let (session, _) =
            rt.session(model, Provider::Cpu, threads).map_err(|e| ExportError::Runtime(e.to_string()))?;
        Ok(Self { session: Mutex::new(session) })
    }

    /// Logits of `data` with shape `[n, c, h, w]`, flat, with their shape.
    pub fn run(&self, shape: [usize; 4], data: &[f32]) -> Result<GraphOutput, ExportError> {
        self.output(shape, data, "logits")
    }

    /// The graph output `name` for `data` with shape `[n, c, h, w]`, flat, with its shape.
    pub fn output(&self, shape: [usize; 4], data: &[f32], name: &str) -> Result<GraphOutput, ExportError> {
        Ok(self.outputs(shape, data, &[name])?.remove(0))
    }

    /// The graph outputs `names`, in that order, from one run on `data` (shape `[n, c, h, w]`).
    pub fn outputs(&self, shape: [usize; 4], data: &[f32], names: &[&str]) -> Result<Vec<GraphOutput>, ExportError> {
        let fail = |e: ort::Error| ExportError::Runtime(e.to_string());
        let input = TensorRef::from_array_view((shape, data)).map_err(fail)?;
        let mut session = self.session.lock().expect("no panic while running");
        let outputs = session.run(ort::inputs!["image" => input]).map_err(fail)?;
        names
            .iter()
            .map(|&name| {
                let (out_shape, values) = outputs[name].try_extract_tensor::<f32>().map_err(fail)?;
                Ok((out_shape.iter().map(|&d| d as usize).collect(), values.to_vec()))
            })
            .collect()
    }

    /// The same, tensor in, tensor out (on the input's device), to stand in for a Burn network.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<4> {
        let (shape, device) = (x.dims(), x.device());
        let data = x.into_data().try_into_vec::<f32>().expect("float input");
        let (dims, logits) = self.run(shape, &data).expect("the exported graph runs on inputs it was verified on");
        Tensor::from_data(TensorData::new(logits, [dims[0], dims[1], dims[2], dims[3]]), &device)
    }
}

/// The tapped feature of a file exported with [`Outputs::LogitsAndFeatures`] (`onnx`) against
/// Burn's (`burn`), on one probe: within [`FP32_TOLERANCE`] or a mismatch.
fn check_features(probe: &Probe, burn: &[f32], onnx: &[f32]) -> Result<(), ExportError> {
    let mismatch = |detail: String| ExportError::Mismatch { what: format!("{} (features)", probe.what), detail };
    if onnx.len() != burn.len() {
        return Err(mismatch(format!("{} feature values, Burn gives {}", onnx.len(), burn.len())));
    }
    let max = burn.iter().zip(onnx).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    if max.is_finite() && max <= FP32_TOLERANCE {
        return Ok(());
    }
    Err(mismatch(format!("features differ by up to {max:.3e} (tolerance {FP32_TOLERANCE:.0e})")))
}

/// Writes `net` to `out` as ONNX after checking, on every probe, that ONNX Runtime's logits
/// match Burn's as `acceptance` demands. The file is written beside `out` and renamed into place
/// only when every check passes.
pub fn export(
    net: &Network,
    card: &ModelCard,
    out: &Path,
    options: &Options,
    probes: &[Probe],
    device: &Device,
) -> Result<Vec<Check>, ExportError> {
    let net = net.valid();
    let model = to_onnx(&net, card, options.precision, options.opset, options.outputs);
    write_verified(&net, &model, out, options.acceptance, probes, device)
}

/// The share of pixels whose predicted class an int8 file may change on a probe of real slices.
pub const INT8_MASK_DISAGREEMENT: f64 = 0.02;

/// How an int8 file is made and when it is accepted.
#[derive(Clone, Copy)]
pub struct Int8Options<'a> {
    pub opset: i64,
    /// Inputs whose activation ranges set the scales (slices of the training sites).
    pub calibration: &'a [Probe],
    pub acceptance: Acceptance,
    /// Int8 or float32 activations; `None`: whichever ONNX Runtime runs faster on this CPU, timed
    /// on calibration slices ([`speed`]).
    pub activations: Option<Activations>,
}

/// What [`export_int8`] wrote.
pub struct Int8Export {
    /// The verification of each probe.
    pub checks: Vec<Check>,
    pub activations: Activations,
    /// The timings the form was chosen by (`None` where it was asked for).
    pub timing: Option<Int8Timing>,
}

/// Writes `net` to `out` as an int8 QDQ model ([`quantize`]): with int8 activations, their
/// ranges from the `calibration` inputs (slices of the training sites), or with float32 ones, or
/// the faster of the two here; then the same check as [`export`] on `probes` (real slices:
/// calibrated ranges mean little on noise), held to agreeing predictions (`export --int8` uses
/// [`INT8_MASK_DISAGREEMENT`]).
pub fn export_int8(
    net: &Network,
    card: &ModelCard,
    out: &Path,
    options: &Int8Options,
    probes: &[Probe],
    device: &Device,
) -> Result<Int8Export, ExportError> {
    let Int8Options { opset, calibration, acceptance, activations } = *options;
    if calibration.is_empty() && activations != Some(Activations::Float) {
        return Err(ExportError::NoCalibration);
    }
    let net = net.valid();
    let model = to_onnx(&net, card, Precision::F32, opset, Outputs::Logits);
    remove_stale_partials(out);
    let int8_activations = || -> Result<_, ExportError> {
        let ranges = quantize::calibrate(&model, calibration, &Pending::beside(out))?;
        Ok(Quantizer::quantize(&model, &ranges))
    };
    let float_activations = || Quantizer::quantize(&model, &Ranges::new());
    let (activations, timing, mut int8) = match activations {
        Some(Activations::Int8) => (Activations::Int8, None, int8_activations()?),
        Some(Activations::Float) => (Activations::Float, None, float_activations()),
        None => {
            let (with_int8, with_float) = (int8_activations()?, float_activations());
            let timing = speed::time_int8_forms(&model, [&with_int8, &with_float], &calibration[0], out)?;
            let chosen = timing.faster();
            (chosen, Some(timing), if chosen == Activations::Int8 { with_int8 } else { with_float })
        }
    };
    let slices: usize = calibration.iter().map(|p| p.shape[0]).sum();
    for entry in int8.metadata_props.iter_mut() {
        match entry.key.as_str() {
            "relkd.model" => entry.value.push_str(" int8"), // tables name it apart from float32
            "relkd.weights" => {
                entry.value = match activations {
                    Activations::Int8 => format!(
                        "int8 QDQ: weights per output channel, activations per tensor from {slices} calibration \
                         slices of the training sites; logits float32"
                    ),
                    Activations::Float => "int8 QDQ weights per output channel, dequantised as the graph runs; \
                                           activations float32"
                        .into(),
                }
            }
            _ => {}
        }
    }
    let checks = write_verified(&net, &int8, out, acceptance, probes, device)?;
    Ok(Int8Export { checks, activations, timing })
}

/// Writes `model` (the ONNX form of `net`) beside `out`, runs it with ONNX Runtime on every
/// probe and renames it into place only when each agrees with Burn as `acceptance` demands.
fn write_verified(
    net: &Network,
    model: &onnx_protobuf::ModelProto,
    out: &Path,
    acceptance: Acceptance,
    probes: &[Probe],
    device: &Device,
) -> Result<Vec<Check>, ExportError> {
    let bytes = model.write_to_bytes().map_err(|e| ExportError::Io { path: out.into(), message: e.to_string() })?;
    remove_stale_partials(out);
    let staging = Pending::beside(out);
    let io = |e: std::io::Error| ExportError::Io { path: out.into(), message: e.to_string() };
    std::fs::write(&staging, &bytes).map_err(io)?;
    let with_features = model.graph.output.iter().any(|o| o.name == onnx::FEATURES_OUTPUT);
    let names: &[&str] = if with_features { &["logits", onnx::FEATURES_OUTPUT] } else { &["logits"] };
    // One session for every probe, one run of each graph per probe (a failure drops `staging`).
    let predictor = OnnxPredictor::new(&staging, 2)?;
    let checks = probes
        .iter()
        .map(|probe| {
            let (burn_logits, burn_feature) = burn_outputs(net, probe, device);
            let onnx = predictor.outputs(probe.shape, &probe.data, names)?;
            let check = Check::compare(probe, &burn_logits, &onnx[0].1, acceptance)?;
            if with_features {
                check_features(probe, &burn_feature, &onnx[1].1)?;
            }
            Ok(check)
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::rename(&staging, out).map_err(io)?;
    Ok(checks)
}

/// Records `model` as the most recent export in a runs folder (read by `infer`).
pub fn record_latest(runs: &Path, model: &Path) -> std::io::Result<()> {
    let absolute = std::path::absolute(model)?;
    write_atomic(&runs.join(LATEST_EXPORT), absolute.to_string_lossy().as_bytes())
}
