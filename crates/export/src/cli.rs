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
    Acceptance, Activations, Check, FP16_MASK_DISAGREEMENT, FP32_TOLERANCE, INT8_MASK_DISAGREEMENT, Int8Options,
    OnnxPredictor, Options, Outputs, Precision, Probe, export, export_int8, record_latest, speed, web,
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
        export --checkpoint runs/…/student.bpk --out enet-fp16.onnx --fp16\n  \
        export --out enet-int8.onnx --int8                       # calibrated on the training sites\n  \
        export --out espnet-int8.onnx --int8 --int8-activations float  # int8 weights only\n  \
        export --web site                                        # the student in a web page: site/index.html"
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
    /// Quantise to int8 (QDQ: weights per output channel, activations calibrated on slices of
    /// the run's training sites, never its target site); reports the Dice change on the target
    /// site. Needs the run's data.
    #[arg(long, conflicts_with = "fp16")]
    pub int8: bool,
    /// With --int8: compute on int8 activations, or on float32 ones with int8 weights (about the
    /// same size; faster where a network's operators have no int8 kernel), or `auto`: whichever
    /// ONNX Runtime runs faster on this CPU, timed on 8 calibration slices.
    #[arg(long, value_enum, default_value_t = Int8Activations::Auto, requires = "int8")]
    pub int8_activations: Int8Activations,
    /// Also write a static web page that segments a dropped NIfTI volume in the browser (ONNX
    /// Runtime Web; nothing leaves the computer): DIR/index.html, the model as DIR/model.onnx.
    /// Serve the folder with any static server, e.g. `python3 -m http.server -d DIR`.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    pub web: Option<PathBuf>,
    /// Also output the distillation tap (`features`), so the file can serve as a teacher that
    /// distillation runs on ONNX Runtime (`teacher: { onnx: FILE }`).
    #[arg(long, conflicts_with_all = ["int8", "fp16", "web"])]
    pub with_features: bool,
    /// Replace an existing --out file (or the files of an existing --web folder).
    #[arg(long)]
    pub force: bool,
    /// Also print ONNX Runtime's own log during the checks: -v its warnings and errors, -vv
    /// also information, -vvv everything.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Int8Activations {
    Auto,
    Int8,
    Float,
}

impl Int8Activations {
    fn fixed(self) -> Option<Activations> {
        match self {
            Int8Activations::Auto => None,
            Int8Activations::Int8 => Some(Activations::Int8),
            Int8Activations::Float => Some(Activations::Float),
        }
    }
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
    relkd_infer::runtime::set_log_verbosity(cli.verbose);
    let weights = weights_path(&cli)?;
    let run_dir = weights.parent().unwrap_or(Path::new(".")).to_path_buf();
    let out = match (&cli.web, &cli.out) {
        (Some(dir), _) => dir.join(web::MODEL_FILE),
        (None, Some(out)) => out.clone(),
        (None, None) => run_dir.join(format!("{}.onnx", cli.model.name())),
    };
    let card_path = ModelCard::path_for(&weights);
    let inputs = [("checkpoint", weights.as_path()), ("model card", card_path.as_path())];
    check_distinct_outputs(&inputs, &[("--out", out.as_path())]).map_err(|e| anyhow::anyhow!(e))?;
    let web_folder = prepare_output(&cli, &out)?;

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
    let cases = run_cases(&run_dir).unwrap_or_else(|e| {
        println!("note: the run's data could not be read ({e:#}); checking on random inputs only");
        None
    });
    if let Some(probe) = cases.as_ref().and_then(|c| real_slices(c, &card)) {
        probes.push(probe);
    }
    let precision = if cli.fp16 { Precision::F16 } else { Precision::F32 };
    // Half-precision weights move the logits by far more than float32 rounding: they are held
    // to agreeing predictions, and judged by Dice below.
    let acceptance =
        if cli.fp16 { Acceptance::Masks(FP16_MASK_DISAGREEMENT) } else { Acceptance::Logits(FP32_TOLERANCE) };
    let mut int8_form = None;
    let checks = if cli.int8 {
        let Some(cases) = &cases else {
            bail!("--int8 calibrates on the run's training cases, which could not be read (see the note above)");
        };
        let training = if card.model == "teacher" { &cases.teacher_train } else { &cases.student_train };
        let calibration = calibration_slices(training, &card);
        let real = probes.split_off(2); // random inputs say nothing of calibrated ranges
        let options = Int8Options {
            opset: cli.opset,
            calibration: &calibration,
            acceptance: Acceptance::Masks(INT8_MASK_DISAGREEMENT),
            activations: cli.int8_activations.fixed(),
        };
        export_int8(&net, &card, &out, &options, &real, &device).map(|written| {
            int8_form = Some(speed::describe(written.activations, written.timing.as_ref()));
            written.checks
        })
    } else {
        let outputs = if cli.with_features { Outputs::LogitsAndFeatures } else { Outputs::Logits };
        export(&net, &card, &out, &Options { precision, opset: cli.opset, acceptance, outputs }, &probes, &device)
    };
    let checks = checks
        .inspect_err(|_| {
            if let Some(folder) = web_folder.as_ref().filter(|f| f.created) {
                let _ = std::fs::remove_dir(&folder.dir); // the folder this run made, still empty
            }
        })
        .with_context(|| format!("exporting to {}", out.display()))?;
    let reduced = match (cli.fp16, cli.int8) {
        (true, _) => Some("float16 weights"),
        (_, true) => Some("int8"),
        _ => None,
    };
    print_checks(&checks, reduced);
    if let Some(form) = int8_form {
        println!("{form}");
    }
    if let Some(WebFolder { dir, runtime, .. }) = &web_folder {
        web::write_site(dir, runtime)?;
        println!(
            "wrote the web page to {0}/ (index.html, the model, ONNX Runtime Web from {1}); serve the folder, \
             e.g. `python3 -m http.server -d {0} 8000`, and open http://localhost:8000",
            dir.display(),
            runtime.display()
        );
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.2} MB, {:.3}× 4 bytes per live parameter, opset {})",
        out.display(),
        size as f64 / 1e6,
        size as f64 / (4.0 * card.live_params as f64),
        cli.opset
    );
    if let (Some(reduced), Some(cases)) = (reduced, &cases) {
        report_dice(reduced, cli.int8, &net, &card, &out, cases, &device)?;
    }
    if let Some(runs) = run_dir.parent()
        && runs.join(LATEST_RUN).exists()
    {
        record_latest(runs, &out).with_context(|| format!("recording the export in {}", runs.display()))?;
    }
    Ok(checks)
}

/// The Dice of a reduced-precision file against the float32 network, on the validation cases
/// of the model's training sites (what choices are made on) and, for int8, also on the target
/// site it is meant for.
fn report_dice(
    reduced: &str,
    on_target: bool,
    net: &Network,
    card: &ModelCard,
    out: &Path,
    cases: &Cases,
    device: &Device,
) -> anyhow::Result<()> {
    let validation = if card.model == "teacher" { &cases.teacher_val } else { &cases.student_val };
    let mut sets = vec![("validation", validation)];
    if on_target {
        sets.push(("target-site test", &cases.test));
    }
    for (what, scored) in sets {
        let c = compare_dice(net, card, out, scored, device)?;
        println!(
            "Dice on {} {what} case(s): {:.4} with float32 weights (Burn), {:.4} with {} (ONNX Runtime): change \
             {:+.4}; masks agree on {:.3}% of voxels",
            scored.len(),
            c.full,
            c.reduced,
            reduced,
            c.reduced - c.full,
            100.0 * c.agreement
        );
    }
    Ok(())
}

/// Where `export --web` writes: the folder, the runtime copied into it, and whether this run
/// made the folder.
struct WebFolder {
    dir: PathBuf,
    runtime: PathBuf,
    created: bool,
}

/// Checks that the output may be written (an existing file or a non-empty --web folder needs
/// --force), finds ONNX Runtime Web for --web before any work, and makes the folder.
fn prepare_output(cli: &Cli, out: &Path) -> anyhow::Result<Option<WebFolder>> {
    let folder = match &cli.web {
        Some(dir) => {
            let runtime = web::ort_web_dir()?;
            let occupied = dir.read_dir().map(|mut entries| entries.next().is_some()).unwrap_or(dir.exists());
            ensure!(
                !occupied || cli.force,
                "{} already exists and is not empty; choose another --web folder or add --force to replace its files",
                dir.display()
            );
            let created = !dir.exists();
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Some(WebFolder { dir: dir.clone(), runtime, created })
        }
        None if out.exists() && !cli.force => {
            bail!("{} already exists; choose another --out or add --force to replace it", out.display())
        }
        None => None,
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure!(parent.is_dir(), "the folder of --out, {}, does not exist", parent.display());
    }
    Ok(folder)
}

/// The weights to export: `--checkpoint`, else the model of `--run`, else of the latest run;
/// a finished model (its card beside it).
fn weights_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    let weights = match (&cli.checkpoint, &cli.run) {
        (Some(file), _) => {
            ensure!(file.is_file(), "--checkpoint {}: no such file", file.display());
            file.clone()
        }
        (None, Some(dir)) => {
            ensure!(dir.is_dir(), "--run {}: no such folder", dir.display());
            ensure!(
                dir.join("config.yaml").is_file(),
                "--run {}: not a run folder (no config.yaml in it); give a folder `train` wrote, such as runs/ID",
                dir.display()
            );
            dir.join(format!("{}.bpk", cli.model.name()))
        }
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

/// One line per probe; `reduced` names the reduced precision (float16 weights, int8), if any.
fn print_checks(checks: &[Check], reduced: Option<&str>) {
    for check in checks {
        print!("  verified on {}: max |ONNX Runtime − Burn| = {:.2e}", check.what, check.max_abs_diff);
        if let Some(reduced) = reduced {
            print!(" ({reduced}; predicted classes differ at {} pixel(s))", check.mask_disagreement);
        } else if check.beyond_tolerance > 0 {
            print!(
                " ({} of {} logits beyond {FP32_TOLERANCE:.0e}: max-unpool ties; predicted classes differ at {} pixel(s))",
                check.beyond_tolerance, check.logits, check.mask_disagreement
            );
        }
        println!();
    }
}

/// The run's cases (read through its config.yaml), when the run folder has one (a note when not).
fn run_cases(run_dir: &Path) -> anyhow::Result<Option<Cases>> {
    let config_path = run_dir.join("config.yaml");
    if !config_path.exists() {
        println!("note: no config.yaml beside the weights; checking on random inputs only");
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

/// A reduced-precision file against the float32 network on whole cases.
struct DiceComparison {
    /// Mean Dice of the float32 network (Burn).
    full: f64,
    /// Mean Dice of the file (ONNX Runtime).
    reduced: f64,
    /// Share of voxels where the two masks agree.
    agreement: f64,
}

fn compare_dice(
    net: &Network,
    card: &ModelCard,
    onnx: &Path,
    cases: &[Case],
    device: &Device,
) -> anyhow::Result<DiceComparison> {
    let net = net.valid();
    let predictor = OnnxPredictor::new(onnx, 2)?;
    let prep = &card.preprocessing;
    let (mut full, mut reduced, mut agree, mut voxels) = (0.0, 0.0, 0, 0);
    for case in cases {
        let a = predict_volume(&case.image, prep, 8, device, &|x| net.forward(x));
        let b = predict_volume(&case.image, prep, 8, device, &|x| predictor.logits(x));
        full += dice(&a, &case.mask);
        reduced += dice(&b, &case.mask);
        agree += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        voxels += a.len();
    }
    let n = cases.len().max(1) as f64;
    Ok(DiceComparison { full: full / n, reduced: reduced / n, agreement: agree as f64 / voxels.max(1) as f64 })
}

/// Up to 64 slices spread evenly over `cases` (the training sites), as the model sees them, in
/// batches of 16: the calibration set of an int8 export.
fn calibration_slices(cases: &[Case], card: &ModelCard) -> Vec<Probe> {
    let per_case = 64usize.div_ceil(cases.len().max(1));
    let (c, s) = (card.in_channels, card.preprocessing.size);
    let slices: Vec<Vec<f32>> = cases
        .iter()
        .flat_map(|case| {
            let norm = NormalizedVolume::new(&case.image);
            let depth = norm.depth();
            (0..depth)
                .step_by(depth.div_ceil(per_case).max(1))
                .map(|z| norm.input(z, &card.preprocessing))
                .collect::<Vec<_>>()
        })
        .take(64)
        .collect();
    slices
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| Probe {
            what: format!("calibration batch {}", i + 1),
            shape: [chunk.len(), c, s, s],
            data: chunk.concat(),
            unpool_ties: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn error(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(std::iter::once("export").chain(args.iter().copied())).unwrap();
        weights_path(&cli).unwrap_err().to_string()
    }

    #[test]
    fn a_missing_checkpoint_or_a_folder_that_is_not_a_run_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let nope = dir.path().join("nope.bpk");
        assert_eq!(
            error(&["--checkpoint", nope.to_str().unwrap()]),
            format!("--checkpoint {}: no such file", nope.display())
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            error(&["--run", missing.to_str().unwrap()]),
            format!("--run {}: no such folder", missing.display())
        );
        let message = error(&["--run", dir.path().to_str().unwrap()]);
        assert!(message.contains("not a run folder (no config.yaml in it)"), "{message}");
        // A run folder whose student is unfinished: the interrupted-run hint, as before.
        std::fs::write(dir.path().join("config.yaml"), "").unwrap();
        let message = error(&["--run", dir.path().to_str().unwrap()]);
        assert!(message.contains("is not a finished model") && message.contains("train --resume"), "{message}");
    }
}
