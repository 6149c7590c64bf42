//! `export` command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Parser, ValueEnum};
use relkd_core::dataset::Case;
use relkd_core::files::{LATEST_RUN, check_distinct_outputs};
use relkd_core::metrics::dice;
use relkd_core::transforms::NormalizedVolume;
use relkd_models::{Network, Segmenter};
use relkd_runs::card::{ModelCard, load_model};
use relkd_runs::config::ExperimentConfig;
use relkd_runs::data::Cases;
use relkd_runs::evaluate::predict_volume;

use crate::{
    Acceptance, Check, FP16_MASK_DISAGREEMENT, FP32_TOLERANCE, OnnxPredictor, Options, Precision, Probe, export,
    record_latest,
};

#[derive(Debug, Parser)]
#[command(
    name = "export",
    version,
    about = "Lower a trained relkd network to ONNX, verified against Burn with ONNX Runtime",
    long_about = "Lower a trained relkd network to ONNX, verified against Burn with ONNX Runtime.\n\n\
        Without --run or --checkpoint, exports the distilled student of the most recent `train` run \
        (runs/latest). The file is run with ONNX Runtime (CPU) on random inputs and on real slices of \
        the run's data, and written only when its logits match Burn's within 1e-4.",
    after_help = "Examples:\n  \
        export --out enet.onnx                                   # the latest run's distilled student\n  \
        export --model teacher --out unetpp.onnx\n  \
        export --run runs/20261130-104819-unetpp-enet-HK --model baseline --out baseline.onnx\n  \
        export --checkpoint runs/…/student.bpk --out enet-fp16.onnx --fp16"
)]
pub struct Cli {
    /// The ONNX file to write; default: MODEL.onnx in the run folder. An existing file is kept
    /// unless --force.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Run folder to export from (default: the latest run, runs/latest).
    #[arg(long, value_name = "DIR", conflicts_with = "checkpoint")]
    pub run: Option<PathBuf>,
    /// A model's weights (NAME.bpk with its NAME.yaml card), instead of a run's.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Which model of the run.
    #[arg(long, value_enum, default_value_t = Model::Student)]
    pub model: Model,
    /// ONNX opset.
    #[arg(long, default_value_t = 17)]
    pub opset: i64,
    /// Store weights in half precision (inputs, outputs and arithmetic stay float32).
    #[arg(long)]
    pub fp16: bool,
    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    Student,
    Baseline,
    Teacher,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Student => "student",
            Model::Baseline => "baseline",
            Model::Teacher => "teacher",
        }
    }
}

/// Exports, verifies and reports; returns the verification of each probe.
pub fn run(cli: Cli) -> anyhow::Result<Vec<Check>> {
    let weights = weights_path(&cli)?;
    let run_dir = weights.parent().unwrap_or(Path::new(".")).to_path_buf();
    let out = cli.out.clone().unwrap_or_else(|| run_dir.join(format!("{}.onnx", cli.model.name())));
    let card_path = ModelCard::path_for(&weights);
    let inputs = [("checkpoint", weights.as_path()), ("model card", card_path.as_path())];
    check_distinct_outputs(&inputs, &[("--out", out.as_path())]).map_err(|e| anyhow::anyhow!(e))?;
    if out.exists() && !cli.force {
        bail!("{} already exists; choose another --out or add --force to replace it", out.display());
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure!(parent.is_dir(), "the folder of --out, {}, does not exist", parent.display());
    }

    let device = Device::flex();
    let (net, card) = load_model(&weights, &device)?;
    println!(
        "exporting {} ({}, {} parameters, run {}) from {}",
        card.model,
        card.architecture.display_name(),
        card.live_params,
        card.run_id,
        weights.display()
    );

    ensure!((13..=21).contains(&cli.opset), "--opset {} is not supported; relkd emits opsets 13 to 21", cli.opset);

    // Probes: random inputs at the training size and at an odd size (padding inside the
    // graph), and real slices of the run's test cases when the run's data is at hand.
    let (c, s) = (card.in_channels, card.preprocessing.size);
    let mut probes = vec![Probe::random([2, c, s, s], &device), Probe::random([1, c, s + 5, s + 3], &device)];
    let cases = match run_cases(&run_dir) {
        Ok(Some(cases)) => Some(cases),
        Ok(None) => {
            println!("note: no config.yaml beside the weights; checking on random inputs only");
            None
        }
        Err(e) => {
            println!("note: the run's data could not be read ({e:#}); checking on random inputs only");
            None
        }
    };
    if let Some(probe) = cases.as_ref().and_then(|c| real_slices(c, &card)) {
        probes.push(probe);
    }
    let precision = if cli.fp16 { Precision::F16 } else { Precision::F32 };
    // Half-precision weights move the logits by far more than float32 rounding: they are held
    // to agreeing predictions, and judged by Dice below.
    let acceptance =
        if cli.fp16 { Acceptance::Masks(FP16_MASK_DISAGREEMENT) } else { Acceptance::Logits(FP32_TOLERANCE) };
    let checks = export(&net, &card, &out, &Options { precision, opset: cli.opset, acceptance }, &probes, &device)
        .with_context(|| format!("exporting to {}", out.display()))?;
    print_checks(&checks, cli.fp16);
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.2} MB, {:.3}× 4 bytes per live parameter, opset {})",
        out.display(),
        size as f64 / 1e6,
        size as f64 / (4.0 * card.live_params as f64),
        cli.opset
    );
    if let (Precision::F16, Some(cases)) = (precision, &cases) {
        let validation = if card.model == "teacher" { &cases.teacher_val } else { &cases.student_val };
        let (full, half) = fp16_dice(&net, &card, &out, validation, &device)?;
        println!(
            "Dice on {} validation case(s): {full:.4} with float32 weights (Burn), {half:.4} with float16 \
             (ONNX Runtime): change {:+.4}",
            validation.len(),
            half - full
        );
    }
    if let Some(runs) = run_dir.parent()
        && runs.join(LATEST_RUN).exists()
    {
        record_latest(runs, &out).with_context(|| format!("recording the export in {}", runs.display()))?;
    }
    Ok(checks)
}

/// The weights to export: `--checkpoint`, else the model of `--run`, else of the latest run;
/// a finished model (its card beside it).
fn weights_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    let weights = match (&cli.checkpoint, &cli.run) {
        (Some(file), _) => file.clone(),
        (None, Some(dir)) => dir.join(format!("{}.bpk", cli.model.name())),
        (None, None) => {
            let latest = Path::new("runs").join(LATEST_RUN);
            let id = std::fs::read_to_string(&latest).with_context(|| {
                format!(
                    "no --run or --checkpoint, and no latest run ({} is missing): run `train` first",
                    latest.display()
                )
            })?;
            Path::new("runs").join(id.trim()).join(format!("{}.bpk", cli.model.name()))
        }
    };
    ensure!(
        ModelCard::path_for(&weights).exists(),
        "{} is not a finished model (no {} beside it){}",
        weights.display(),
        ModelCard::path_for(&weights).display(),
        if cli.checkpoint.is_none() { "; was the run interrupted? `train --resume --out RUN` finishes it" } else { "" }
    );
    Ok(weights)
}

fn print_checks(checks: &[Check], fp16: bool) {
    for check in checks {
        print!("  verified on {}: max |ONNX Runtime − Burn| = {:.2e}", check.what, check.max_abs_diff);
        if fp16 {
            print!(" (float16 weights; predicted classes differ at {} pixel(s))", check.mask_disagreement);
        } else if check.beyond_tolerance > 0 {
            print!(
                " ({} of {} logits beyond {FP32_TOLERANCE:.0e}: max-unpool ties; predicted classes differ at {} pixel(s))",
                check.beyond_tolerance, check.logits, check.mask_disagreement
            );
        }
        println!();
    }
}

/// The run's cases (read through its config.yaml), when the run folder has one.
fn run_cases(run_dir: &Path) -> anyhow::Result<Option<Cases>> {
    let config_path = run_dir.join("config.yaml");
    if !config_path.exists() {
        return Ok(None);
    }
    let mut config = ExperimentConfig::load(&config_path)?;
    Ok(Some(relkd_runs::data::prepare(&mut config)?.1))
}

/// Up to 8 slices of the run's first test case, as the model sees them.
fn real_slices(cases: &Cases, card: &ModelCard) -> Option<Probe> {
    let case = cases.test.first()?;
    let norm = NormalizedVolume::new(&case.image);
    let depth = norm.depth();
    let slices: Vec<usize> = (0..depth).step_by(depth.div_ceil(8).max(1)).collect();
    let data: Vec<f32> = slices.iter().flat_map(|&z| norm.input(z, &card.preprocessing)).collect();
    let s = card.preprocessing.size;
    Some(Probe {
        what: format!("{} slices of {}/{}", slices.len(), case.site, case.id),
        shape: [slices.len(), card.in_channels, s, s],
        data,
        unpool_ties: card.architecture == relkd_models::Architecture::Enet,
    })
}

/// Mean Dice over `cases` of the float32 network (Burn) and of the half-precision file (ONNX
/// Runtime).
fn fp16_dice(
    net: &Network,
    card: &ModelCard,
    onnx: &Path,
    cases: &[Case],
    device: &Device,
) -> anyhow::Result<(f64, f64)> {
    let net = net.valid();
    let predictor = OnnxPredictor::new(onnx, 2)?;
    let prep = &card.preprocessing;
    let (mut full, mut half) = (0.0, 0.0);
    for case in cases {
        full += dice(&predict_volume(&case.image, prep, 8, device, &|x| net.forward(x)), &case.mask);
        half += dice(&predict_volume(&case.image, prep, 8, device, &|x| predictor.logits(x)), &case.mask);
    }
    let n = cases.len().max(1) as f64;
    Ok((full / n, half / n))
}
