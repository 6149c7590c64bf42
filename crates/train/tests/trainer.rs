//! The optimisation loop on a tiny phantom: it learns, it distils, it validates.

mod common;

use burn::module::Module;
use burn::tensor::Device;
use common::lock_device_rng;
use relkd_core::dataset::{Case, Dataset, load_case};
use relkd_core::phantom::{CaseCount, Extras, Matrix, PhantomConfig, generate};
use relkd_core::transforms::{Augmentation, Preprocessing, Slice2d, case_slices};
use relkd_models::{Architecture, NetworkConfig, Segmenter};
use relkd_train::config::LossConfig;
use relkd_train::losses::Term;
use relkd_train::losses::affinity::AffinityConfig;
use relkd_train::losses::kernel_matrix::KernelMatrixConfig;
use relkd_train::losses::segmentation::SegmentationLoss;
use relkd_train::schedule::CyclicLrConfig;
use relkd_train::teacher::Teacher;
use relkd_train::trainer::{Distillation, Objective, Quiet, TrainHooks, TrainOptions, Trainee, to_batch, train};

const PREP: Preprocessing = Preprocessing { size: 32, context: 0 };

fn tiny_cases() -> Vec<Case> {
    let dir = tempfile::tempdir().unwrap();
    generate(
        &PhantomConfig { sites: 1, cases: CaseCount::Each(3), size: Matrix::Pixels(32), seed: 2, eval_cases: 0 },
        dir.path(),
        &Extras::default(),
        &|_, _| {},
    )
    .unwrap();
    let data = Dataset::discover(dir.path()).unwrap();
    data.sites[0].cases.iter().map(|f| load_case("RUNMC", f).unwrap()).collect()
}

fn samples(cases: &[Case]) -> Vec<Slice2d> {
    cases.iter().flat_map(|c| case_slices(&c.image, &c.mask, &PREP, true)).collect()
}

fn options(epochs: usize, lr: f64) -> TrainOptions {
    TrainOptions {
        prep: PREP,
        epochs,
        batch_size: 4,
        lr: CyclicLrConfig { base_lr: lr, max_lr: lr, step_size: 1 },
        seed: 0,
        augmentation: Augmentation::none(),
        segmentation: SegmentationLoss::default(),
        devices: vec![],
    }
}

fn student(device: &Device) -> Trainee {
    Trainee { net: NetworkConfig::new(Architecture::Enet).with_width(0.25).init(device), kmm: None, aam: None }
}

#[test]
fn a_fixed_batch_is_learned() {
    let device = Device::flex().autodiff();
    let _draws = lock_device_rng();
    device.seed(0);
    let cases = tiny_cases();
    let batch: Vec<Slice2d> = samples(&cases).into_iter().take(4).collect();
    let (_, state) = train(student(&device), None, &batch, &[], &options(80, 0.01), None, &device, &mut Quiet).unwrap();
    let history = state.history;
    let segmentation = |e: &relkd_train::trainer::EpochLog| e.terms.get(Term::Segmentation).copied().unwrap();
    let (first, last) = (segmentation(&history[0]), segmentation(history.last().unwrap()));
    assert!(
        last < 0.6 * first,
        "segmentation loss {first} → {last}: {:?}",
        history.iter().map(segmentation).collect::<Vec<_>>()
    );
    assert!(history.iter().all(|e| e.terms.get(Term::Lm).is_none() && e.val_dice.is_nan()));
}

#[test]
fn distillation_trains_the_adapter_against_a_frozen_teacher() {
    let device = Device::flex().autodiff();
    let _draws = lock_device_rng();
    device.seed(1);
    let cases = tiny_cases();
    let teacher = NetworkConfig::new(Architecture::Unetpp).with_width(0.125).init(&device).valid();
    let mut trainee = student(&device);
    let (s_tap, t_tap) = (trainee.net.tap(), teacher.tap());
    trainee.kmm = Some(KernelMatrixConfig::new(s_tap.channels, t_tap.channels).init(&device));
    trainee.aam = Some(AffinityConfig::new(2).with_adaptive(true).init(&device));
    let adapter_before = trainee.kmm.as_ref().unwrap().adapter.weight.val().into_data();
    let distillation = Distillation::new(Teacher::Burn(teacher), &LossConfig::default());
    // Every weight and batch-norm statistic of the teacher, as saved.
    let teacher_bytes = || {
        let Teacher::Burn(net) = &distillation.teacher else { unreachable!("a Burn teacher") };
        net.clone().into_record().into_bytes().unwrap().to_vec()
    };
    let teacher_before = teacher_bytes();

    let train_samples = samples(&cases[..2]);
    struct CountSteps(usize);
    impl TrainHooks for CountSteps {
        fn step(&mut self, _epoch: usize, step: usize, steps: usize, running_loss: f64) {
            assert!(running_loss.is_finite() && step <= steps);
            self.0 = step;
        }
    }
    let mut counter = CountSteps(0);
    let (trained, state) = train(
        trainee,
        None,
        &train_samples,
        &cases[2..],
        &options(1, 0.01),
        Some(&distillation),
        &device,
        &mut counter,
    )
    .unwrap();
    assert_eq!(counter.0, train_samples.len().div_ceil(4));
    assert_eq!((state.epoch, state.iteration, state.best_epoch), (1, counter.0 as u64, Some(1)));
    let log = &state.history[0];
    let term = |t: Term| *log.terms.get(t).unwrap_or_else(|| panic!("{t:?} missing: {log:?}"));
    for t in [Term::Segmentation, Term::Lm, Term::Kmm, Term::Aam] {
        assert!(term(t).is_finite(), "{log:?}");
    }
    assert!(log.terms.get(Term::Kd).is_none() && log.terms.get(Term::At).is_none(), "{log:?}");
    let expected_total =
        term(Term::Segmentation) + 0.2 * term(Term::Lm) + 0.9 * term(Term::Kmm) + 0.9 * term(Term::Aam);
    assert!((log.total - expected_total).abs() < 1e-3 * expected_total.abs().max(1.0), "{log:?}");
    assert!((0.0..=1.0).contains(&log.val_dice), "validation Dice on the held-out case: {log:?}");
    let adapter_after = trained.kmm.as_ref().unwrap().adapter.weight.val().into_data();
    assert_ne!(adapter_before, adapter_after, "the KMM adapter trains with the student");
    assert!(teacher_bytes() == teacher_before, "the frozen teacher's weights or statistics changed");
}

/// `--devices` with two workers on the CPU: burn-train's multi-device step must return the
/// gradient of the whole batch, i.e. each half's gradient weighted by its share and summed on
/// the main device — here computed independently, half by half, on one device.
#[test]
fn data_parallel_step_sums_the_share_weighted_gradients_of_its_parts() {
    use burn::optim::GradientsParams;
    use relkd_train::data_parallel::DataParallel;
    use relkd_train::trainer::{TermValues, loss_terms, teacher_outputs, to_batch};

    let device = Device::flex().autodiff();
    let _draws = lock_device_rng();
    device.seed(3);
    let cases = tiny_cases();
    let batch: Vec<Slice2d> = samples(&cases).into_iter().take(6).collect();
    // UNet++ has no dropout, so both computations see the same network.
    let net = NetworkConfig::new(Architecture::Unetpp).with_width(0.125).init(&device);
    let teacher = NetworkConfig::new(Architecture::Unetpp).with_width(0.125).init(&device).valid();
    let kmm = KernelMatrixConfig::new(net.tap().channels, teacher.tap().channels).init(&device);
    let trainee = Trainee { net, kmm: Some(kmm), aam: Some(AffinityConfig::new(2).init(&device)) };
    let distillation = Distillation::new(Teacher::Burn(teacher), &LossConfig::default());
    let segmentation = SegmentationLoss::default();

    let parallel = DataParallel::new(&[device.clone(), device.clone()], segmentation, Some(&distillation));
    let (values, grads) = parallel.step(&trainee, &batch, &PREP, 1.0).unwrap();

    let plain = device.clone().without_autodiff();
    let mut expected = TermValues::default();
    let mut expected_grads = Vec::new();
    for half in batch.chunks(3) {
        let (images, labels) = to_batch(half, &PREP, &device);
        let teacher = teacher_outputs(&distillation, &images, &plain);
        let terms = loss_terms(&trainee, images, labels, &segmentation, Some((teacher, &distillation)));
        let total = terms.total(&distillation.weights);
        expected = expected.plus(&TermValues::of(&terms, &total).scaled(0.5));
        expected_grads.push(GradientsParams::from_grads(total.mul_scalar(0.5).backward(), &trainee));
    }
    assert!((values.total - expected.total).abs() < 1e-4 * expected.total.abs(), "{values:?} vs {expected:?}");
    let aam = |v: &TermValues| *v.terms.get(Term::Aam).unwrap();
    assert!((aam(&values) - aam(&expected)).abs() < 1e-4, "{values:?} vs {expected:?}");
    let check = |id, what: &str| {
        let got: Tensor<4> = grads.get(id).unwrap_or_else(|| panic!("no gradient for {what}"));
        let want: Tensor<4> = expected_grads.iter().map(|g| g.get::<4>(id).unwrap()).reduce(|a, b| a + b).unwrap();
        let scale = want.clone().abs().max().into_scalar::<f32>();
        let diff = (got - want).abs().max().into_scalar::<f32>();
        assert!(scale > 0.0 && diff <= 1e-4 * scale, "{what}: max difference {diff} against max {scale}");
    };
    check(trainee.kmm.as_ref().unwrap().adapter.weight.id, "the KMM adapter");
    check(first_conv_weight(&trainee.net), "the first convolution");
}

use burn::tensor::Tensor;

/// The parameter id of the network's first 4D weight.
fn first_conv_weight(net: &relkd_models::Network) -> burn::module::ParamId {
    struct First(Option<burn::module::ParamId>);
    impl burn::module::ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if D == 4 && self.0.is_none() {
                self.0 = Some(param.id);
            }
        }
    }
    let mut first = First(None);
    net.visit(&mut first);
    first.0.expect("a convolution")
}

/// `losses.ramp_epochs`: every distillation weight grows linearly from 0 over the ramp, and a
/// batch's total is L_seg plus the ramped weights times the terms.
#[test]
fn distillation_weights_ramp_up_linearly() {
    use relkd_train::trainer::{Objective, to_batch};

    let device = Device::flex().autodiff();
    let _draws = lock_device_rng();
    device.seed(5);
    let teacher = NetworkConfig::new(Architecture::Unetpp).with_width(0.125).init(&device).valid();
    let losses = LossConfig { ramp_epochs: 4.0, ..LossConfig::default() };
    let distillation = Distillation::new(Teacher::Burn(teacher), &losses);
    for (epochs, factor) in [(0.0, 0.0), (1.0, 0.25), (3.0, 0.75), (4.0, 1.0), (9.5, 1.0)] {
        assert_eq!(distillation.ramp(epochs), factor, "after {epochs} epochs");
    }
    let immediate = Distillation::new(distillation.teacher.clone(), &LossConfig::default());
    assert_eq!(immediate.ramp(0.0), 1.0, "no ramp: full weight from the first step");

    let net = NetworkConfig::new(Architecture::Unetpp).with_width(0.125).init(&device);
    let kmm =
        KernelMatrixConfig::new(net.tap().channels, distillation.teacher.feature_channels().unwrap()).init(&device);
    let trainee = Trainee { net, kmm: Some(kmm), aam: Some(AffinityConfig::new(2).init(&device)) };
    let batch: Vec<Slice2d> = samples(&tiny_cases()).into_iter().take(2).collect();
    let (images, labels) = to_batch(&batch, &PREP, &device);
    let seg = SegmentationLoss::default();
    let objective = Objective { segmentation: &seg, distillation: Some(&distillation), ramp: 0.25 };
    let (total, values) = objective.batch_loss(&trainee, images, labels);
    let term = |t: Term| values.terms.get(t).copied().unwrap();
    let expected =
        term(Term::Segmentation) + 0.25 * (0.2 * term(Term::Lm) + 0.9 * term(Term::Kmm) + 0.9 * term(Term::Aam));
    let got = total.into_scalar::<f32>() as f64;
    assert!((got - expected).abs() < 1e-5 * expected.abs().max(1.0), "{got} vs {expected}");
    assert!((values.total - expected).abs() < 1e-5 * expected.abs().max(1.0));
}

/// A single-term run reads each epoch's gradient norm from its first step's own gradient, with
/// no pass of its own: the same value as a separate pass over that batch from the same weights
/// (ESPNet, which has no dropout to draw other masks; the batch's order within the step moves
/// only float rounding).
#[test]
fn a_baselines_gradient_norm_is_its_first_steps() {
    let device = Device::flex().autodiff();
    let _draws = lock_device_rng();
    device.seed(0);
    let cases = tiny_cases();
    let batch: Vec<Slice2d> = samples(&cases).into_iter().take(4).collect();
    let net = NetworkConfig::new(Architecture::Espnet).with_width(0.25).init(&device);
    let trainee = Trainee { net, kmm: None, aam: None };
    let (_, state) = train(trainee.clone(), None, &batch, &[], &options(1, 0.01), None, &device, &mut Quiet).unwrap();
    let logged = *state.history[0].grad_norms.get(Term::Segmentation).expect("the segmentation term's norm");
    let segmentation = SegmentationLoss::default();
    let objective = Objective { segmentation: &segmentation, distillation: None, ramp: 1.0 };
    let (images, labels) = to_batch(&batch, &PREP, &device);
    let separate = *objective.term_gradient_norms(&trainee, images, labels).get(Term::Segmentation).unwrap();
    assert!(logged > 0.0 && (logged - separate).abs() <= 1e-5 * separate, "logged {logged}, separate pass {separate}");
}
