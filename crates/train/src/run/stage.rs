//! Training one model into a run folder: its sites and epochs by its part in the run, checkpoints after
//! every epoch (so a killed run continues), a progress bar, and its model card at the end.

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::ensure;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use indicatif::ProgressBar;
use relkd_core::dataset::Case;
use relkd_core::files::write_atomic;
use relkd_core::transforms::{Augmentation, Slice2d, case_slices};
use relkd_models::device::DeviceChoice;
use relkd_models::{Segmenter, trainable_params};

use crate::checkpoint::{ModelCard, StageCheckpoints, save_model};
use crate::config::{ExperimentConfig, ModelSpec};
use crate::losses::affinity::AffinityConfig;
use crate::losses::kernel_matrix::KernelMatrixConfig;
use crate::losses::{DistillationWeights, Term};
use crate::report::metrics_csv;
use crate::teacher::Teacher;
use crate::trainer::{
    Distillation, TrainHooks, TrainOptions, TrainState, Trainee, TraineeConfig, distillation_weights, train,
};
use relkd_runs::card::EpochLog;
use relkd_runs::data::Cases;
use relkd_runs::progress::progress_bar;

/// What a trained model is for: it decides the sites, the epochs and the card's `model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunModel {
    Teacher,
    /// The student with the segmentation loss alone (w/o).
    Baseline,
    /// The student distilled from the teacher (w/).
    Student,
}

impl RunModel {
    pub fn name(self) -> &'static str {
        match self {
            RunModel::Teacher => "teacher",
            RunModel::Baseline => "baseline",
            RunModel::Student => "student",
        }
    }
}

/// The configured student, with the KMM adapter and the AAM weights when the distillation
/// from `teacher` uses them.
pub fn student_trainee(config: &ExperimentConfig, teacher: Option<&Teacher>) -> TraineeConfig {
    let student = config.student_network();
    let weights = teacher.map_or_else(DistillationWeights::default, |t| distillation_weights(&config.losses, t));
    let losses = &config.losses;
    let teacher_channels = teacher.and_then(Teacher::feature_channels).filter(|_| weights.on(Term::Kmm));
    let kmm = teacher_channels.map(|channels| {
        let student_channels = student.init(&Device::flex()).tap().channels;
        KernelMatrixConfig::new(student_channels, channels).with_mode(losses.kmm_gram)
    });
    let aam = weights.on(Term::Aam).then(|| {
        AffinityConfig::new(2)
            .with_dilations(losses.aam.dilations.clone())
            .with_margin(losses.aam.margin)
            .with_adaptive(losses.aam.adaptive)
            .with_per_class_positive(losses.aam.per_class_positive)
    });
    TraineeConfig { net: student, kmm, aam }
}

/// Where a run computes: the main (autodiff) device and, for data-parallel training, every
/// device (the main one first).
pub struct Devices {
    pub main: Device,
    pub parallel: Vec<Device>,
    pub description: String,
    pub runtime: Runtime,
}

/// Which of Burn's runtimes trains. It decides where an ONNX teacher runs and is part of the
/// model cache's key: the runtimes agree only to the last bits, which training amplifies.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub enum Runtime {
    /// flex, relkd's CPU kernels.
    #[serde(rename = "flex")]
    Flex,
    /// CubeCL's kernels on the CPU (the GPU code path without a GPU): host memory, as flex.
    #[serde(rename = "cubecl-cpu")]
    CubeclCpu,
    #[serde(rename = "cuda")]
    Cuda,
}

impl Runtime {
    pub fn is_flex(&self) -> bool {
        *self == Runtime::Flex
    }

    fn of(choices: &[DeviceChoice], fell_back: bool) -> Self {
        if fell_back || choices.iter().all(|c| *c == DeviceChoice::Cpu) {
            Runtime::Flex
        } else if choices.iter().all(|c| *c == DeviceChoice::CubeclCpu) {
            Runtime::CubeclCpu
        } else {
            Runtime::Cuda
        }
    }
}

impl Devices {
    /// `--devices` when given (every entry must work: no fallback), else `--device`.
    pub fn resolve(single: DeviceChoice, many: &[DeviceChoice]) -> anyhow::Result<Self> {
        if many.len() < 2 {
            let choice = many.first().copied().unwrap_or(single);
            let resolved = choice.resolve()?;
            if let Some(reason) = &resolved.fallback {
                eprintln!("warning: --device auto falls back to the CPU: {reason}");
            }
            let main = resolved.device.autodiff();
            let runtime = Runtime::of(&[choice], resolved.fallback.is_some());
            return Ok(Self { main, parallel: vec![], description: resolved.description, runtime });
        }
        ensure!(!many.contains(&DeviceChoice::Auto), "--devices takes cpu, cuda or cuda:N entries, not auto");
        let resolved = many.iter().map(|c| c.resolve()).collect::<Result<Vec<_>, _>>()?;
        let description = format!(
            "{} devices, data parallel ({})",
            resolved.len(),
            resolved.iter().map(|r| r.description.as_str()).collect::<Vec<_>>().join(", ")
        );
        let parallel: Vec<Device> = resolved.into_iter().map(|r| r.device.autodiff()).collect();
        Ok(Self { main: parallel[0].clone(), parallel, description, runtime: Runtime::of(many, false) })
    }
}

/// What every model's training shares within one run folder.
pub struct Stage<'a> {
    pub config: &'a ExperimentConfig,
    pub run_dir: &'a Path,
    pub run_id: &'a str,
    pub config_hash: &'a str,
    pub devices: &'a Devices,
}

impl Stage<'_> {
    /// Trains model `stem` (or continues it from its checkpoint) and writes `STEM.bpk/.yaml`.
    /// A model whose card already exists is final and kept as it is.
    pub fn train(
        &self,
        stem: &str,
        model: RunModel,
        trainee: &TraineeConfig,
        cases: &Cases,
        distillation: Option<&Distillation>,
    ) -> anyhow::Result<()> {
        let weights = self.run_dir.join(format!("{stem}.bpk"));
        let card_path = ModelCard::path_for(&weights);
        if card_path.exists() {
            let card = ModelCard::load(&card_path)?;
            ensure!(
                card.config_hash == self.config_hash,
                "{} was trained with another configuration (config hash {} here, {} in the card); \
                 use a new output folder",
                card_path.display(),
                self.config_hash,
                card.config_hash
            );
            println!("{stem}: done earlier in this run");
            return Ok(());
        }
        let c = self.config;
        let ModelData { train_cases, val_cases, sites, spec, epochs, augmentation } = ModelData::of(model, c, cases);
        let samples: Vec<Slice2d> = train_cases
            .iter()
            .flat_map(|case| case_slices(&case.image, &case.mask, &c.preprocessing, c.foreground_only))
            .collect();
        ensure!(!samples.is_empty(), "{stem}: no training slices in {} case(s)", train_cases.len());
        let options = TrainOptions {
            prep: c.preprocessing,
            epochs,
            batch_size: c.training.batch_size,
            lr: c.training.lr,
            seed: c.training.seed,
            augmentation,
            segmentation: c.losses.segmentation,
            devices: self.devices.parallel.clone(),
        };
        let checkpoints = StageCheckpoints::new(self.run_dir.join("checkpoints").join(stem));
        // The initial weights follow the training seed (a resumed run overwrites them).
        self.devices.main.seed(c.training.seed);
        let initial = trainee.init(&self.devices.main);
        let (trainee, resume) = match checkpoints.load(initial.clone())? {
            Some((trainee, resume)) => {
                println!("{stem}: continuing after epoch {} of {}", resume.state.epoch, options.epochs);
                (trainee, Some(resume))
            }
            None => (initial, None),
        };
        let steps = samples.len().div_ceil(options.batch_size);
        let bar = progress_bar((steps * options.epochs) as u64, stem);
        bar.set_position((resume.as_ref().map_or(0, |r| r.state.epoch) * steps) as u64);
        bar.reset_eta();
        println!(
            "{stem}: {} ({} parameters) on {} slices of {} case(s), {} epochs × {steps} steps",
            spec.architecture.display_name(),
            trainable_params(&trainee.net),
            samples.len(),
            train_cases.len(),
            options.epochs
        );
        let mut hooks = Hooks {
            name: stem,
            bar: &bar,
            checkpoints: &checkpoints,
            run_dir: self.run_dir,
            epochs: options.epochs,
            epoch_started: Instant::now(),
        };
        let (best, state) =
            train(trainee, resume, &samples, val_cases, &options, distillation, &self.devices.main, &mut hooks)?;
        bar.finish_and_clear();
        let card = ModelCard {
            model: model.name().to_string(),
            architecture: spec.architecture,
            width: spec.width,
            in_channels: c.preprocessing.channels(),
            classes: 2,
            preprocessing: c.preprocessing,
            live_params: trainable_params(&best.net),
            trained_sites: sites.to_vec(),
            target_site: c.target.clone(),
            distillation: distillation.map_or(vec![], |d| {
                d.weights.iter().map(|(term, w)| format!("{} λ={w}", term.key().to_uppercase())).collect()
            }),
            run_id: self.run_id.to_string(),
            config_hash: self.config_hash.to_string(),
            epochs: state.epoch,
            best_epoch: state.best_epoch,
            best_val_dice: state.best_val_dice,
            history: state.history,
        };
        save_model(&weights, &best.net, &card)?;
        checkpoints.remove()?;
        Ok(())
    }
}

/// What a model of the run trains on: its cases, sites, network and epochs.
struct ModelData<'a> {
    train_cases: &'a [Case],
    val_cases: &'a [Case],
    sites: &'a [String],
    spec: ModelSpec,
    epochs: usize,
    augmentation: Augmentation,
}

impl<'a> ModelData<'a> {
    fn of(model: RunModel, c: &'a ExperimentConfig, cases: &'a Cases) -> Self {
        let plan = c.sites.as_ref().expect("planned");
        match model {
            RunModel::Teacher => Self {
                train_cases: &cases.teacher_train,
                val_cases: &cases.teacher_val,
                sites: &plan.teacher_sites,
                // `Stage::teacher` refuses an ONNX teacher before anything trains.
                spec: *c.teacher.network().expect("only relkd's own teachers are trained"),
                epochs: c.training.teacher_epochs.unwrap_or(c.training.epochs),
                augmentation: c.teacher_augmentation(),
            },
            RunModel::Baseline | RunModel::Student => Self {
                train_cases: &cases.student_train,
                val_cases: &cases.student_val,
                sites: &plan.student_sites,
                spec: c.student,
                epochs: c.training.epochs,
                augmentation: c.augmentation,
            },
        }
    }
}

/// Progress bar and checkpoints while a model trains.
struct Hooks<'a> {
    name: &'a str,
    bar: &'a ProgressBar,
    checkpoints: &'a StageCheckpoints,
    run_dir: &'a Path,
    epochs: usize,
    epoch_started: Instant,
}

impl TrainHooks for Hooks<'_> {
    fn step(&mut self, epoch: usize, _step: usize, _steps: usize, running_loss: f64) {
        self.bar.inc(1);
        self.bar.set_message(format!("{} epoch {}/{} loss {running_loss:.4}", self.name, epoch + 1, self.epochs));
    }

    fn epoch_end(
        &mut self,
        trainee: &Trainee,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
        improved: bool,
    ) -> std::io::Result<()> {
        self.checkpoints.save(trainee, optimizer, state, improved)?;
        let e = state.history.last().expect("an epoch just ended");
        let terms: String = e
            .terms
            .iter()
            .filter(|(term, _)| *term != Term::Segmentation)
            .map(|(term, v)| format!(" {} {v:.4}", term.key()))
            .collect();
        self.bar.suspend(|| {
            println!(
                "{} epoch {:>3}/{}  {:.1} s  loss {:.4} (seg {:.4}{terms})  lr {:.2e}  val Dice {:.3}{}",
                self.name,
                e.epoch,
                self.epochs,
                self.epoch_started.elapsed().as_secs_f64(),
                e.total,
                e.terms.get(Term::Segmentation).copied().unwrap_or(f64::NAN),
                e.lr,
                e.val_dice,
                if improved { "  *" } else { "" }
            )
        });
        self.epoch_started = Instant::now();
        // metrics.csv grows epoch by epoch, so an interrupted run still shows its curves.
        write_metrics(self.run_dir, self.name, &state.history)
    }
}

/// Puts `name`'s epochs into the run folder's metrics.csv, replacing its earlier rows.
pub(super) fn write_metrics(run_dir: &Path, name: &str, history: &[EpochLog]) -> std::io::Result<()> {
    let path = run_dir.join("metrics.csv");
    let rows = fs::read_to_string(&path).unwrap_or_default();
    let prefix = format!("{name},");
    let kept: Vec<&str> = rows.lines().skip(1).filter(|l| !l.starts_with(&prefix)).collect();
    let ours = metrics_csv(&[(name, history)]);
    let rows: String = std::iter::once(ours.lines().next().unwrap_or_default())
        .chain(kept)
        .chain(ours.lines().skip(1))
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(&path, rows.as_bytes())
}
