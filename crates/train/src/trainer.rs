//! The optimisation loop shared by teacher, baseline and distilled-student runs: batches of
//! slices, the losses of eq. 8, Adam with the cyclic learning rate, and per-epoch validation
//! Dice on held-out cases of the training sites (never the target site) to pick the model kept.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use relkd_core::dataset::Case;
use relkd_core::transforms::{Augmentation, Preprocessing, Slice2d};
use relkd_models::{Network, NetworkConfig, Segmenter};
use serde::{Deserialize, Serialize};

use crate::config::LossConfig;
use crate::data_parallel::DataParallel;
use crate::evaluate::{predict_volume, score};
use crate::losses::affinity::{Affinity, AffinityConfig};
use crate::losses::attention::attention_transfer;
use crate::losses::hinton::hinton_kd;
use crate::losses::kernel_matrix::{KernelMatrix, KernelMatrixConfig};
use crate::losses::logits::logits_kl;
use crate::losses::segmentation::SegmentationLoss;
use crate::losses::{DistillationWeights, Gate, LossTerms, Term, Terms};
use crate::schedule::CyclicLrConfig;
use crate::teacher::{Teacher, TeacherOutput};

/// Cards (in `relkd-runs`) keep each epoch's log; the loop writes it.
pub use relkd_runs::card::EpochLog;

/// What one training run needs besides the data.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub prep: Preprocessing,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: CyclicLrConfig,
    pub seed: u64,
    pub augmentation: Augmentation,
    pub segmentation: SegmentationLoss,
    /// Two or more devices split each batch between them (data parallel, the first keeps the
    /// weights); otherwise the run's single device.
    pub devices: Vec<Device>,
}

/// The network being trained, with the distillation modules that train alongside it (the KMM
/// adapter and the adaptive AAM weights). Only `net` is ever exported.
#[derive(Module, Debug)]
pub struct Trainee {
    pub net: Network,
    pub kmm: Option<KernelMatrix>,
    pub aam: Option<Affinity>,
}

/// How to build a [`Trainee`] on a device: its network and the distillation modules that train
/// with it.
#[derive(Debug, Clone)]
pub struct TraineeConfig {
    pub net: NetworkConfig,
    pub kmm: Option<KernelMatrixConfig>,
    pub aam: Option<AffinityConfig>,
}

impl TraineeConfig {
    /// A network trained alone (a teacher or a baseline).
    pub fn plain(net: NetworkConfig) -> Self {
        Self { net, kmm: None, aam: None }
    }

    pub fn init(&self, device: &Device) -> Trainee {
        Trainee {
            net: self.net.init(device),
            kmm: self.kmm.as_ref().map(|k| k.init(device)),
            aam: self.aam.as_ref().map(|a| a.init(device)),
        }
    }
}

/// The frozen teacher and how its knowledge is weighed.
#[derive(Debug, Clone)]
pub struct Distillation {
    /// Frozen: no autodiff, batch norm on running statistics.
    pub teacher: Teacher,
    pub weights: DistillationWeights,
    /// Softmax temperature of the logits module (LM).
    pub temperature: f64,
    /// Softmax temperature of Hinton's KD.
    pub kd_temperature: f64,
    /// Epochs over which the weights ramp up from 0 (0: full weight from the first step).
    pub ramp_epochs: f64,
    /// Where the pixel-wise terms apply.
    pub gate: Gate,
}

impl Distillation {
    /// The distillation `losses` configures, from `teacher`.
    pub fn new(teacher: Teacher, losses: &LossConfig) -> Self {
        Self {
            weights: distillation_weights(losses, &teacher),
            teacher,
            temperature: losses.temperature,
            kd_temperature: losses.hinton.temperature,
            ramp_epochs: losses.ramp_epochs,
            gate: losses.gate,
        }
    }

    /// The factor on every distillation weight after `epochs` epochs of training (fractional
    /// within an epoch): linear from 0 to 1 over `ramp_epochs`, then 1.
    pub fn ramp(&self, epochs: f64) -> f64 {
        if self.ramp_epochs > 0.0 { (epochs / self.ramp_epochs).clamp(0.0, 1.0) } else { 1.0 }
    }
}

/// The weight of each term `losses` switches on that `teacher` can give: a teacher without a
/// feature distils through its logits only (KMM and attention transfer off).
pub fn distillation_weights(losses: &LossConfig, teacher: &Teacher) -> DistillationWeights {
    let has_feature = teacher.feature_channels().is_some();
    losses.weights().iter().filter(|(term, _)| has_feature || !term.reads_features()).map(|(t, w)| (t, *w)).collect()
}

/// One slice batch as tensors: images `[n, c, s, s]` and labels `[n, s, s]`.
pub fn to_batch(samples: &[Slice2d], prep: &Preprocessing, device: &Device) -> (Tensor<4>, Tensor<3, Int>) {
    let (n, c, s) = (samples.len(), prep.channels(), prep.size);
    let images: Vec<f32> = samples.iter().flat_map(|x| x.image.iter().copied()).collect();
    let labels: Vec<i64> = samples.iter().flat_map(|x| x.mask.iter().map(|&m| m as i64)).collect();
    (
        Tensor::from_data(TensorData::new(images, [n, c, s, s]), device),
        Tensor::from_data(TensorData::new(labels, [n, s, s]), device),
    )
}

/// Mean 3D Dice of `net` over `cases`.
pub fn validation_dice(net: &Network, cases: &[Case], prep: &Preprocessing, batch: usize, device: &Device) -> f64 {
    if cases.is_empty() {
        return f64::NAN;
    }
    let snapshot = net.valid();
    let total: f64 = cases
        .iter()
        .map(|case| {
            let prediction = predict_volume(&case.image, prep, batch, device, &|x| snapshot.forward(x));
            score(case, &prediction).dice
        })
        .sum();
    total / cases.len() as f64
}

/// The frozen teacher's logits and tapped feature for a batch of the student's `images`. The
/// teacher runs on `plain` (the device without autodiff); its outputs join the student's
/// graph as constants, so no gradient can reach it.
pub fn teacher_outputs(d: &Distillation, images: &Tensor<4>, plain: &Device) -> TeacherOutput {
    let out = d.teacher.forward_features(images.clone().without_autodiff().to_device(plain));
    TeacherOutput { logits: out.logits.autodiff(), feature: out.feature.map(Tensor::autodiff) }
}

/// Where a run stands after some epochs: everything besides the weights and the optimizer's
/// moments that continuing it needs. The data order and augmentation of an epoch, and the
/// device's random stream during it, are seeded from (seed, epoch), so the epoch count is the
/// whole random state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken (the cyclic schedule's position).
    pub iteration: u64,
    /// The epoch (1-based) whose weights are kept, and its validation Dice.
    pub best_epoch: Option<usize>,
    pub best_val_dice: Option<f64>,
    pub history: Vec<EpochLog>,
}

/// A run to continue: its state, optimiser and best weights so far.
pub struct Resume {
    pub state: TrainState,
    pub optimizer: ModuleOptimizer,
    pub best: Trainee,
}

/// What the caller sees while training runs: steps for progress bars, epoch ends for
/// checkpoints. An error from `epoch_end` stops training.
pub trait TrainHooks {
    /// After each optimiser step: epoch (0-based), step (1-based), steps per epoch and the
    /// epoch's running mean of the total loss.
    fn step(&mut self, _epoch: usize, _step: usize, _steps: usize, _running_loss: f64) {}

    /// After each epoch's validation; `improved` says the epoch's weights are the new best.
    fn epoch_end(
        &mut self,
        _trainee: &Trainee,
        _optimizer: &ModuleOptimizer,
        _state: &TrainState,
        _improved: bool,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing.
pub struct Quiet;

impl TrainHooks for Quiet {}

/// Trains `trainee` on `samples` for the configured epochs on `device` (an autodiff device),
/// from scratch or from `resume`. Returns the trainee of the epoch with the best validation
/// Dice (the last one without validation cases) and the final state.
#[allow(clippy::too_many_arguments)]
pub fn train(
    mut trainee: Trainee,
    resume: Option<Resume>,
    samples: &[Slice2d],
    validation: &[Case],
    options: &TrainOptions,
    distillation: Option<&Distillation>,
    device: &Device,
    hooks: &mut dyn TrainHooks,
) -> std::io::Result<(Trainee, TrainState)> {
    assert!(!samples.is_empty(), "no training slices");
    let (mut state, mut optimizer, mut best) = match resume {
        Some(r) => (r.state, r.optimizer, Some(r.best)),
        None => (TrainState::default(), AdamConfig::new().init(), None),
    };
    let mut scheduler = options.lr.init_at(state.iteration);
    let plain = device.clone().without_autodiff();
    let steps = samples.len().div_ceil(options.batch_size);
    let parallel =
        (options.devices.len() > 1).then(|| DataParallel::new(&options.devices, options.segmentation, distillation));

    for epoch in state.epoch..options.epochs {
        let epoch_seed = options.seed ^ ((epoch as u64) << 32);
        device.seed(epoch_seed);
        for (i, d) in options.devices.iter().enumerate().skip(1) {
            d.seed(epoch_seed.wrapping_add(i as u64));
        }
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed));
        let mut sums = TermValues::default();
        let mut grad_norms = Terms::default();
        let mut lr = 0.0;
        for (step, chunk) in order.chunks(options.batch_size).enumerate() {
            let batch: Vec<Slice2d> = chunk
                .iter()
                .map(|&i| {
                    let mut s = samples[i].clone();
                    // One generator per (epoch, sample): augmentation is reproducible by seed.
                    let seed = options.seed.wrapping_add((epoch * samples.len() + i) as u64);
                    options.augmentation.apply(&mut s, options.prep.size, &mut ChaCha8Rng::seed_from_u64(seed));
                    s
                })
                .collect();
            let ramp = distillation.map_or(1.0, |d| d.ramp(epoch as f64 + step as f64 / steps as f64));
            let objective = Objective { segmentation: &options.segmentation, distillation, ramp };
            // Each epoch's first batch is diagnosed: the gradient norm of every term. With one
            // term (a teacher, a baseline) that is the step's own gradient, read below at no cost;
            // with several, each term takes its own pass.
            let diagnose = step == 0;
            if diagnose && distillation.is_some() {
                let (images, labels) = to_batch(&batch, &options.prep, device);
                grad_norms = objective.term_gradient_norms(&trainee, images, labels);
            }
            let (values, grads) = match &parallel {
                Some(parallel) => {
                    parallel.step(&trainee, &batch, &options.prep, ramp).map_err(std::io::Error::other)?
                }
                None => {
                    let (images, labels) = to_batch(&batch, &options.prep, device);
                    let (total, values) = objective.batch_loss(&trainee, images, labels);
                    (values, GradientsParams::from_grads(total.backward(), &trainee))
                }
            };
            if diagnose && distillation.is_none() {
                grad_norms = [(Term::Segmentation, gradient_norm(&trainee.net, &grads))].into_iter().collect();
            }
            sums = sums.plus(&values);
            lr = scheduler.step();
            trainee = optimizer.step(lr, trainee, grads);
            state.iteration += 1;
            hooks.step(epoch, step + 1, steps, sums.total / (step + 1) as f64);
        }
        let val_dice = validation_dice(&trainee.net, validation, &options.prep, options.batch_size, &plain);
        state.history.push(sums.scaled(1.0 / steps as f64).log(epoch + 1, lr, val_dice, grad_norms));
        state.epoch = epoch + 1;
        let improved = state.best_val_dice.is_none_or(|dice| val_dice.is_nan() || val_dice > dice);
        if improved {
            state.best_epoch = Some(epoch + 1);
            state.best_val_dice = Some(val_dice);
            best = Some(trainee.clone());
        }
        hooks.epoch_end(&trainee, &optimizer, &state, improved)?;
    }
    let best = best.unwrap_or(trainee);
    Ok((best, state))
}

/// How a batch's loss is formed: `L_seg` and, for a distilled student, the teacher's terms with
/// their weights times the ramp factor of this step.
#[derive(Debug, Clone, Copy)]
pub struct Objective<'a> {
    pub segmentation: &'a SegmentationLoss,
    pub distillation: Option<&'a Distillation>,
    /// The factor on the distillation weights at this step ([`Distillation::ramp`]; 1 without).
    pub ramp: f64,
}

impl Objective<'_> {
    /// The weight of every distillation term at this step.
    pub fn weights(&self) -> DistillationWeights {
        self.distillation.map_or_else(DistillationWeights::default, |d| d.weights.scaled(self.ramp))
    }

    /// The frozen teacher's outputs on `images` (on their device without autodiff).
    fn teacher(&self, images: &Tensor<4>) -> Option<(TeacherOutput, &Distillation)> {
        let plain = images.device().without_autodiff();
        self.distillation.map(|d| (teacher_outputs(d, images, &plain), d))
    }

    /// One batch's total loss (for the backward pass) and the value of every term: the
    /// student's forward pass and, with a distillation, the teacher's on the same images.
    pub fn batch_loss(&self, trainee: &Trainee, images: Tensor<4>, labels: Tensor<3, Int>) -> (Tensor<1>, TermValues) {
        let teacher = self.teacher(&images);
        let terms = loss_terms(trainee, images, labels, self.segmentation, teacher);
        let total = terms.total(&self.weights());
        let values = TermValues::of(&terms, &total);
        (total, values)
    }

    /// The L2 norm, over the network's weights, of the gradient of each weighted term of one
    /// batch (each from its own forward and backward pass, so the training step is untouched):
    /// which term drives the student, and how hard.
    pub fn term_gradient_norms(&self, trainee: &Trainee, images: Tensor<4>, labels: Tensor<3, Int>) -> Terms<f64> {
        let weights = self.weights();
        let weight = |term: Term| if term == Term::Segmentation { 1.0 } else { weights.weight(term) };
        let teacher = self.teacher(&images);
        Term::ALL
            .into_iter()
            .filter(|&term| weight(term) > 0.0)
            .filter_map(|term| {
                let terms = loss_terms(trainee, images.clone(), labels.clone(), self.segmentation, teacher.clone());
                let value = terms.get(term)?.clone().mul_scalar(weight(term));
                let grads = GradientsParams::from_grads(value.backward(), &trainee.net);
                Some((term, gradient_norm(&trainee.net, &grads)))
            })
            .collect()
    }
}

/// √(Σ g²) over every float parameter of `net` that has a gradient.
fn gradient_norm(net: &Network, grads: &GradientsParams) -> f64 {
    struct SquaredSum<'a> {
        grads: &'a GradientsParams,
        sum: f64,
    }
    impl ModuleVisitor for SquaredSum<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.sum += (g.clone() * g).sum().into_scalar::<f32>() as f64;
            }
        }
    }
    let mut visitor = SquaredSum { grads, sum: 0.0 };
    net.visit(&mut visitor);
    visitor.sum.sqrt()
}

/// The terms of eq. 8 for one batch: the student's forward pass, its segmentation loss and,
/// given the teacher's outputs on the same batch, each distillation term switched on.
pub fn loss_terms(
    trainee: &Trainee,
    images: Tensor<4>,
    labels: Tensor<3, Int>,
    segmentation: &SegmentationLoss,
    teacher: Option<(TeacherOutput, &Distillation)>,
) -> LossTerms {
    let out = trainee.net.forward_features(images);
    let mut terms = LossTerms::default();
    terms.insert(Term::Segmentation, segmentation.forward(out.logits.clone(), labels.clone()));
    let Some((teacher, d)) = teacher else {
        return terms;
    };
    let (t_logits, t_feature) = (teacher.logits, teacher.feature);
    let gate = d.gate.mask(&t_logits, &labels);
    let w = &d.weights;
    if w.on(Term::Lm) {
        terms.insert(Term::Lm, logits_kl(out.logits.clone(), t_logits.clone(), d.temperature, gate.as_ref()));
    }
    // A teacher without a feature has KMM and attention transfer switched off (see
    // `distillation_weights`), so `t_feature` is there whenever they are on.
    if let (Some(kmm), Some(t_feature)) = (trainee.kmm.as_ref().filter(|_| w.on(Term::Kmm)), &t_feature) {
        terms.insert(Term::Kmm, kmm.forward(out.feature.clone(), t_feature.clone()));
    }
    if w.on(Term::Kd) {
        terms.insert(Term::Kd, hinton_kd(out.logits.clone(), t_logits.clone(), d.kd_temperature, gate.as_ref()));
    }
    if let Some(t_feature) = t_feature.filter(|_| w.on(Term::At)) {
        terms.insert(Term::At, attention_transfer(out.feature, t_feature));
    }
    if let Some(aam) = trainee.aam.as_ref().filter(|_| w.on(Term::Aam)) {
        terms.insert(Term::Aam, aam.forward(out.logits, t_logits, gate.as_ref()).total);
    }
    terms
}

/// The value of each loss term of a step and their weighted total (or their sums or means
/// over steps).
#[derive(Debug, Clone, Default)]
pub struct TermValues {
    pub terms: Terms<f64>,
    pub total: f64,
}

impl TermValues {
    /// Reads the terms of a step (this waits for the device).
    pub fn of(terms: &LossTerms, total: &Tensor<1>) -> Self {
        let value = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
        Self { terms: terms.map(|_, t| value(t)), total: value(total) }
    }

    /// Term by term sum.
    pub fn plus(&self, other: &Self) -> Self {
        Self { terms: self.terms.plus(&other.terms), total: self.total + other.total }
    }

    pub fn scaled(&self, factor: f64) -> Self {
        Self { terms: self.terms.scaled(factor), total: self.total * factor }
    }

    fn log(self, epoch: usize, lr: f64, val_dice: f64, grad_norms: Terms<f64>) -> EpochLog {
        EpochLog { epoch, lr, terms: self.terms, total: self.total, val_dice, grad_norms }
    }
}
