//! `infer` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use relkd_core::files::{LATEST_EXPORT, write_atomic};

mod segment;

use crate::bench::{BenchPlan, BenchRow, csv, markdown, measure};
use crate::runtime::Provider;
use segment::{refuse_overwrite, segment};

#[derive(Debug, Parser)]
#[command(
    name = "infer",
    version,
    about = "Segment NIfTI volumes with an exported relkd model (ONNX Runtime, CPU or CUDA)",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        infer --volume case.nii.gz --provider cuda             # the latest export; mask beside the input\n  \
        infer --volume case.nii.gz --provider cpu --label case_segmentation.nii.gz --overlay overlays/\n  \
        infer --volume data/phantom/HK --model enet.onnx        # every case of a folder, with a CSV\n  \
        infer bench --models enet.onnx unetpp.onnx --size 384 --batch 1,16"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,
    #[command(flatten)]
    pub segment: SegmentArgs,
    /// Also print ONNX Runtime's own log: -v its warnings and errors, -vv also information,
    /// -vvv everything. Without it, an error of ONNX Runtime is reported once, by infer.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    /// CUDA when it works, else the CPU (said aloud).
    Auto,
    Cpu,
    /// CUDA or an error naming what is missing.
    Cuda,
}

impl From<ProviderArg> for Provider {
    fn from(p: ProviderArg) -> Self {
        match p {
            ProviderArg::Auto => Provider::Auto,
            ProviderArg::Cpu => Provider::Cpu,
            ProviderArg::Cuda => Provider::Cuda,
        }
    }
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// A NIfTI volume (.nii or .nii.gz), or a folder of them.
    #[arg(long, value_name = "PATH")]
    pub volume: Option<PathBuf>,
    /// The ONNX model; default: the most recent export (runs/latest-export).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Mask to write (uint8 NIfTI on the input's grid); default: beside the input with a
    /// `_mask` suffix. For a folder: the folder for the masks and cases.csv (default:
    /// FOLDER_masks beside it).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ProviderArg::Auto)]
    pub provider: ProviderArg,
    /// Intra-op threads (0: ONNX Runtime's choice; at most 4 × this machine's cores).
    #[arg(long, default_value_t = 0, value_parser = thread_count)]
    pub threads: usize,
    /// Slices per run.
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch: usize,
    /// Also write the foreground probability as a float32 NIfTI.
    #[arg(long, value_name = "FILE")]
    pub probabilities: Option<PathBuf>,
    /// Ground-truth mask: prints Dice, HD95 and ASD.
    #[arg(long, value_name = "FILE")]
    pub label: Option<PathBuf>,
    /// Write PNG slices (ground truth red, prediction green) into this folder.
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
    /// Network input size, for a model without relkd metadata (overrides the metadata).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub size: Option<usize>,
    /// Context slices each side (2.5D), for a model without relkd metadata.
    #[arg(long)]
    pub context: Option<usize>,
    /// Replace existing output files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// The efficiency table: parameters, GFLOPs, file size, latency, time per volume, memory.
    #[command(
        after_help = "Example:\n  infer bench --models enet.onnx espnet.onnx unetpp.onnx --size 384 --batch 1,16"
    )]
    Bench(BenchArgs),
    /// One model of a benchmark, in its own process (used by `bench`).
    #[command(hide = true)]
    BenchOne(BenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// ONNX files; ratios are against the first.
    #[arg(long, num_args = 1.., required = true, value_name = "FILE")]
    pub models: Vec<PathBuf>,
    #[arg(long, default_value_t = 384, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub size: usize,
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    #[arg(long, value_enum, default_value_t = ProviderArg::Cpu)]
    pub provider: ProviderArg,
    /// Intra-op threads (at most 4 × this machine's cores).
    #[arg(long, default_value_t = 2, value_parser = thread_count)]
    pub threads: usize,
    /// Timed runs per batch size (after 3 warm-ups).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Timed whole-volume runs.
    #[arg(long, default_value_t = 3)]
    pub volume_runs: usize,
    /// Volume to time (default: a synthetic 384×384×24 volume).
    #[arg(long, value_name = "FILE")]
    pub volume: Option<PathBuf>,
    /// Write the table as OUT.md and OUT.csv.
    #[arg(long, default_value = "infer-bench", value_name = "OUT")]
    pub out: PathBuf,
    /// Replace existing OUT.md / OUT.csv.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::runtime::set_log_verbosity(cli.verbose);
    match cli.command {
        Some(Sub::Bench(args)) => bench(&args, cli.verbose),
        Some(Sub::BenchOne(args)) => {
            let row = measure(&args.models[0], &plan(&args))?;
            println!("{}", row.to_line());
            Ok(())
        }
        None => segment(&cli.segment),
    }
}

fn plan(args: &BenchArgs) -> BenchPlan<'_> {
    BenchPlan {
        size: args.size,
        batches: &args.batch,
        provider: args.provider.into(),
        threads: args.threads,
        runs: args.runs,
        volume_runs: args.volume_runs,
        volume: args.volume.as_deref(),
    }
}

/// The model to use: `--model`, or the path recorded by the latest `export`.
fn model_path(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        ensure!(!path.is_dir(), "model {} is a folder; give the .onnx file", path.display());
        ensure!(path.is_file(), "model {} does not exist", path.display());
        return Ok(path.clone());
    }
    let latest = Path::new("runs").join(LATEST_EXPORT);
    let recorded = std::fs::read_to_string(&latest).with_context(|| {
        format!("no --model, and no recent export ({} is missing): run `export` or pass --model", latest.display())
    })?;
    let path = PathBuf::from(recorded.trim());
    ensure!(
        path.is_file(),
        "the latest export {} (from {}) no longer exists; pass --model",
        path.display(),
        latest.display()
    );
    println!("model: {} (the latest export, from {})", path.display(), latest.display());
    Ok(path)
}

fn bench(args: &BenchArgs, verbose: u8) -> anyhow::Result<()> {
    let (md_path, csv_path) = (args.out.with_extension("md"), args.out.with_extension("csv"));
    refuse_overwrite(&md_path, args.force)?;
    refuse_overwrite(&csv_path, args.force)?;
    for m in &args.models {
        ensure!(m.is_file(), "model {} does not exist", m.display());
    }
    let exe = std::env::current_exe().context("locating the infer executable")?;
    let mut rows = Vec::new();
    for model in &args.models {
        eprintln!("measuring {} …", model.display());
        let batches: Vec<String> = args.batch.iter().map(|b| b.to_string()).collect();
        let mut command = Command::new(&exe);
        command.args(["bench-one", "--models"]).arg(model).args([
            "--size",
            &args.size.to_string(),
            "--batch",
            &batches.join(","),
            "--provider",
            &format!("{:?}", args.provider).to_lowercase(),
            "--threads",
            &args.threads.to_string(),
            "--runs",
            &args.runs.to_string(),
            "--volume-runs",
            &args.volume_runs.to_string(),
        ]);
        if let Some(v) = &args.volume {
            command.arg("--volume").arg(v);
        }
        command.args(std::iter::repeat_n("--verbose", verbose.into()));
        let output = command.output().context("running the benchmark child")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let row = stdout.lines().find_map(BenchRow::parse);
        match (output.status.success(), row) {
            (true, Some(row)) => {
                eprint!("{}", String::from_utf8_lossy(&output.stderr)); // its warnings
                rows.push(row);
            }
            _ => bail!("benchmarking {} failed:\n{}", model.display(), String::from_utf8_lossy(&output.stderr).trim()),
        }
    }
    let table = markdown(&rows, &plan(args));
    print!("{table}");
    write_atomic(&md_path, table.as_bytes()).with_context(|| format!("{}", md_path.display()))?;
    write_atomic(&csv_path, csv(&rows).as_bytes()).with_context(|| format!("{}", csv_path.display()))?;
    println!("wrote {} and {}", md_path.display(), csv_path.display());
    Ok(())
}

/// `--threads`: ONNX Runtime starts every thread it is given, and an absurd count grows memory
/// for minutes before anything runs, so more than 4 × the machine's cores is refused.
fn thread_count(text: &str) -> Result<usize, String> {
    let threads: usize = text.parse().map_err(|_| format!("'{text}' is not a thread count"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads > 4 * cores {
        return Err(format!(
            "{threads} threads on a machine with {cores} cores; use at most {} (0: ONNX Runtime's choice)",
            4 * cores
        ));
    }
    Ok(threads)
}
