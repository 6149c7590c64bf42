//! `train` subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use relkd_core::dataset::Dataset;
use relkd_core::phantom::{self, CaseCount, Extras, Matrix, PhantomConfig};

use relkd_models::Architecture;
use relkd_models::device::DeviceChoice;

use crate::run::{RunRequest, progress_bar};
use crate::step_time::{StepShape, json_line, time_training_step};
use crate::summary;

#[derive(Debug, Parser)]
#[command(
    name = "train",
    version,
    about = "relkd training: a teacher, a baseline student and a distilled student, scored on an unseen site",
    long_about = "relkd training: a teacher, a baseline student and a distilled student, scored on an unseen site.\n\n\
        Without a subcommand, `train` runs one experiment: the teacher is trained on the target site \
        (or reused when one was trained with the same settings), the baseline student on the other sites \
        with the segmentation loss alone, and the distilled student on the same sites with the teacher's \
        guidance (LM + KMM + AAM, eq. 8). All three are scored on held-out cases of the target site. \
        Everything goes to a run folder under runs/ (config.yaml, NAME.bpk + NAME.yaml per model, \
        metrics.csv, scores.csv, report.md, loss_curves.png, overlays/).",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        train --teacher unetpp --student erfnet                  # built-in quick config, phantom data\n  \
        train --teacher unetpp --student enet --config configs/quick.yaml\n  \
        train --config configs/paper/cross.yaml --data /data/prostate --target HK --device cuda\n  \
        train --config configs/paper/cross.yaml --data /data/prostate --devices cuda:0,cuda:1\n  \
        train --resume                                           # continue the latest run after an interruption\n  \
        train --teacher unetpp --student enet --seeds 0,1,2      # three seeds: mean ± sd, paired w/ − w/o\n  \
        train --teacher-onnx unetpp.onnx --teacher-features x3_0 --student enet   # a teacher from PyTorch\n  \
        train experiment configs/experiments/table3-quick.yaml   # a grid: Table 3 on the phantom\n  \
        train phantom --out data/phantom                         # synthetic 6-site prostate MRI\n  \
        train data --root data/phantom                           # per-site summary and problems\n  \
        train models --size 384                                  # the five networks against Table 1"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// One experiment (the command without a subcommand).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Teacher network: unetpp or deeplabv3plus (overrides the config).
    #[arg(long, conflicts_with = "teacher_onnx")]
    pub teacher: Option<Architecture>,
    /// A trained teacher from any framework, as an ONNX file taking the students' slices
    /// [N, C, H, W] and giving logits [N, 2, H, W]; run frozen on ONNX Runtime, never trained.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["teacher_checkpoint", "seeds"])]
    pub teacher_onnx: Option<PathBuf>,
    /// The ONNX teacher's tensor (a graph output or any node's output) that KMM and attention
    /// transfer distil from; without it the teacher distils through its logits only.
    #[arg(long, value_name = "NAME")]
    pub teacher_features: Option<String>,
    /// Student network: enet, espnet or erfnet (overrides the config).
    #[arg(long)]
    pub student: Option<Architecture>,
    /// Experiment YAML (see configs/); default: the built-in configs/quick.yaml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Dataset root with one folder per site; default: the phantom, generated once into the
    /// cache ($RELKD_CACHE, else ~/.cache/relkd).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The unseen site: folder name, canonical name or paper id (S1…S6).
    #[arg(long, value_name = "SITE")]
    pub target: Option<String>,
    /// Run folder; default: a new runs/DATE-TIME-TEACHER-STUDENT-TARGET.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where to compute: cpu, cuda, cuda:N, auto (CUDA when it works, else the CPU, said aloud),
    /// or cubecl-cpu (CubeCL's CPU runtime, the kernels CUDA runs; a build with the cubecl-cpu
    /// feature).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Data-parallel training on several devices, e.g. cuda:0,cuda:1: each batch is split
    /// between them through burn-train's multi-device step; the first keeps the weights.
    #[arg(long, value_delimiter = ',', value_name = "LIST", conflicts_with = "device")]
    pub devices: Vec<DeviceChoice>,
    /// Continue an interrupted run (--out, or the latest run) from its last finished epoch.
    #[arg(long)]
    pub resume: bool,
    /// Use this trained teacher (NAME.bpk with its NAME.yaml card) instead of training one.
    #[arg(long, value_name = "FILE")]
    pub teacher_checkpoint: Option<PathBuf>,
    /// Train teacher, baseline and distilled student once per seed (e.g. 0,1,2) on one split,
    /// and report mean ± sd and the paired differences w/ − w/o; written as a grid to
    /// experiments/TEACHER-STUDENT-TARGET-seeds/ (or --out). Rerun to continue.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub seeds: Vec<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the synthetic multi-site prostate phantom in the layout of the real dataset.
    ///
    /// Each case is a true-scale 3D pelvis acquired as its site would: field of view, slice
    /// thickness, coil, echo time, noise. `--preview` shows what it looks like.
    #[command(after_help = "Examples:\n  \
        train phantom --out data/phantom --preview data/preview      # 6 sites × 8 cases, 128×128 in-plane\n  \
        train phantom --out data/native --size native --tissues       # each site's true 384×384 matrix")]
    Phantom {
        /// Folder to create; it must not exist yet or be empty.
        #[arg(long)]
        out: PathBuf,
        /// Sites, taken in paper order: RUNMC, BMC, HCRUDB, UCL, BIDMC, HK.
        #[arg(long, default_value_t = PhantomConfig::default().sites)]
        sites: usize,
        /// Cases per site, or `saml`: each site's count in the real dataset (RUNMC 30, BMC 30,
        /// HCRUDB 19, UCL 13, BIDMC 12, HK 12).
        #[arg(long, default_value_t = PhantomConfig::default().cases)]
        cases: CaseCount,
        /// In-plane matrix: a pixel count (each site's field of view resampled) or `native`
        /// (384×384, as the real data).
        #[arg(long, default_value_t = PhantomConfig::default().size)]
        size: Matrix,
        /// Random seed; the same seed writes the same files.
        #[arg(long, default_value_t = PhantomConfig::default().seed)]
        seed: u64,
        /// Also write an evaluation pool of this many cases per site, under OUT/eval/SITE/, from
        /// their own random stream: test cases for scoring only.
        #[arg(long, default_value_t = 0, value_name = "N")]
        eval_cases: usize,
        /// Also write one PNG per site into this folder: axial, sagittal and coronal slices
        /// through the gland of its first case, with the mask's outline.
        #[arg(long, value_name = "DIR")]
        preview: Option<PathBuf>,
        /// Also write the structure volume each image was rendered from, as
        /// OUT/tissues/SITE/CaseNN_tissues.nii.gz (codes: relkd_core::phantom::Structure).
        #[arg(long)]
        tissues: bool,
    },
    /// Summarise a multi-site dataset per site and list every problem found.
    ///
    /// Exits non-zero when any case is unusable.
    #[command(after_help = "Example:\n  train data --root data/phantom")]
    Data {
        /// Dataset root: one folder per site with CaseNN.nii.gz and CaseNN_segmentation.nii.gz.
        #[arg(long)]
        root: PathBuf,
    },
    /// Run a grid of experiments (teachers × students × target sites × distillers × seeds) and
    /// write one report with the paper's Table 2 and Table 3 shapes, mean ± sd over seeds and
    /// the paired differences w/ − w/o.
    ///
    /// Rerunning the same command skips every finished cell and continues an interrupted one.
    #[command(after_help = "Examples:\n  \
        train experiment configs/experiments/quick-seeds.yaml       # three seeds, paired (CPU)\n  \
        train experiment configs/experiments/table3-quick.yaml      # the ablation on the phantom (CPU)\n  \
        train experiment configs/experiments/table2.yaml --data /data/prostate --device cuda\n  \
        train experiment configs/experiments/table2-quick.yaml configs/experiments/table2-quick-loso.yaml   # one after the other\n\n\
        An experiment file names a base run configuration and the grid:\n  \
        base: ../quick.yaml\n  \
        teachers: [deeplabv3plus]\n  \
        students: [enet]\n  \
        targets: [HK]                 # or [all]\n  \
        distillers: [lm, aam, kmm, lm+kmm, lm+aam, kmm+aam, lm+kmm+aam, hinton, attention]\n  \
        seeds: [0, 1, 2]              # optional; the split stays the same for every seed")]
    Experiment {
        /// The experiment YAML files (see configs/experiments/), run one after the other; every
        /// file is checked before the first cell trains.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Dataset root; default: the base configuration's data (the phantom when it has none).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Output folder (with a single file); default experiments/FILE-STEM. Rerunning
        /// continues it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Where to compute: cpu, cuda, cuda:N, cubecl-cpu or auto.
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
        /// Data-parallel training on several devices, e.g. cuda:0,cuda:1.
        #[arg(long, value_delimiter = ',', value_name = "LIST", conflicts_with = "device")]
        devices: Vec<DeviceChoice>,
    },
    /// The five networks at the paper's widths: parameters, GFLOPs and distillation taps,
    /// beside the paper's Table 1.
    #[command(after_help = "Example:\n  train models --size 384")]
    Models {
        /// Input height and width for the FLOP count.
        #[arg(long, default_value_t = 384)]
        size: usize,
    },
    /// Time one training step of a network: forward, cross-entropy, backward, Adam update.
    ///
    /// The same step as ci/torch_reference.py in PyTorch; ci/gpu-check.sh runs both. Prints the
    /// median, min and max over the timed runs, after untimed warm-up runs.
    #[command(after_help = "Examples:\n  \
        train step-time --arch enet --batch 8 --size 128                 # the CPU reference step\n  \
        train step-time --arch unetpp --batch 16 --size 384 --device cuda --json")]
    StepTime {
        /// Network: espnet, enet, erfnet, unetpp or deeplabv3plus.
        #[arg(long)]
        arch: Architecture,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
        /// Input height and width (one channel).
        #[arg(long, default_value_t = 384, value_parser = clap::value_parser!(u64).range(16..))]
        size: u64,
        /// Channel multiplier; 1.0 is the paper's network.
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Where to compute: cpu, cuda, cuda:N, cubecl-cpu or auto.
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
        /// Untimed steps first (a GPU backend compiles and tunes its kernels in them).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Print one JSON line (the fields of ci/torch_reference.py) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Some(command) = cli.command else {
        let a = cli.run;
        let request = RunRequest {
            teacher: a.teacher,
            student: a.student,
            config: a.config,
            data: a.data,
            target: a.target,
            out: a.out,
            device: Some(a.device),
            devices: a.devices,
            resume: a.resume,
            teacher_checkpoint: a.teacher_checkpoint,
            teacher_onnx: a.teacher_onnx,
            teacher_features: a.teacher_features,
        };
        if a.seeds.is_empty() {
            crate::run::run(&request)?;
        } else {
            crate::run::run_seeds(&request, &a.seeds)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    match command {
        Command::Phantom { out, sites, cases, size, seed, eval_cases, preview, tissues } => {
            write_phantom(&PhantomConfig { sites, cases, size, seed, eval_cases }, &out, &Extras { tissues, preview })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Data { root } => data_summary(&root),
        Command::Experiment { files, data, out, device, devices } => {
            ensure!(
                out.is_none() || files.len() == 1,
                "--out names one grid's folder; give one experiment file with it"
            );
            for file in &files {
                crate::experiment::GridSpec::load(file)?;
            }
            let mut grids = Vec::new();
            for file in &files {
                let request = crate::experiment::GridRequest {
                    file: file.clone(),
                    data: data.clone(),
                    out: out.clone(),
                    device,
                    devices: devices.clone(),
                };
                let stem = file.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                grids.push((stem, crate::experiment::run_grid(&request)?));
            }
            if grids.len() > 1 {
                // Beside the grids, named after them all: experiments/A+B+C/.
                let name = grids.iter().map(|(stem, _)| stem.as_str()).collect::<Vec<_>>().join("+");
                let report = crate::experiment::compare(&grids, &Path::new("experiments").join(name))?;
                println!("wrote {}", report.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { size } => {
            print!("{}", crate::models::table(size));
            Ok(ExitCode::SUCCESS)
        }
        Command::StepTime { arch, batch, size, width, device, warmup, runs, json } => {
            ensure!(width > 0.0 && width.is_finite(), "--width must be a positive number, not {width}");
            let resolved = device.resolve()?;
            let shape = StepShape { architecture: arch, batch: batch as usize, size: size as usize, width };
            let timings = time_training_step(shape, &resolved.device.autodiff(), warmup, runs as usize);
            if json {
                println!("{}", json_line(shape, &resolved.description, &timings));
            } else {
                println!(
                    "{} training step, batch {batch}, 1×{size}×{size}, width {width}, {}: {}",
                    arch.display_name(),
                    resolved.description,
                    timings.summary()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write_phantom(config: &PhantomConfig, out: &Path, extras: &Extras) -> anyhow::Result<()> {
    for dir in std::iter::once(out).chain(extras.preview.as_deref()) {
        if dir.exists() && std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?.next().is_some() {
            bail!("{} already exists and is not empty; choose another folder or remove it first", dir.display());
        }
    }
    let bar = progress_bar(config.total_cases() as u64, "phantom");
    let started = std::time::Instant::now();
    let written = phantom::generate(config, out, extras, &|done, _| bar.set_position(done as u64))
        .with_context(|| format!("writing the phantom to {}", out.display()))?;
    bar.finish();
    let n = config.size.pixels();
    let pool = match config.eval_cases {
        0 => String::new(),
        n => format!(", with an evaluation pool of {n} a site in {}", out.join(phantom::EVAL_POOL).display()),
    };
    println!(
        "wrote {written} cases ({} sites × {}, {n}×{n} in-plane{pool}) to {} in {:.1} s",
        config.sites,
        config.cases,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = &extras.preview {
        println!("previews: {}/SITE.png", dir.display());
    }
    Ok(())
}

fn data_summary(root: &Path) -> anyhow::Result<ExitCode> {
    let dataset = Dataset::discover(root)?;
    let total = dataset.sites.iter().map(|s| s.cases.len()).sum::<usize>();
    let bar = progress_bar(total as u64, "reading");
    let report = summary::summarize(&dataset, &|| bar.inc(1));
    bar.finish_and_clear();
    println!("{}", dataset.root.display());
    print!("{}", report.table());
    if !report.ignored.is_empty() {
        println!(
            "\nleft out: {} file(s) that are not SAML case names (CaseNN, CaseNN_segmentation):",
            report.ignored.len()
        );
        for path in &report.ignored {
            println!("  {}", path.display());
        }
    }
    if report.problems.is_empty() {
        println!("no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{} problem(s):", report.problems.len());
        for p in &report.problems {
            println!("  {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
