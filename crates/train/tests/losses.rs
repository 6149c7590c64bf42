//! Every loss against values computed by hand (or by an independent loop in f64), the zeros
//! that must be zeros, finite-difference gradients, and where gradients may and may not flow.

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use relkd_train::config::{Distiller, LossConfig};
use relkd_train::losses::affinity::AffinityConfig;
use relkd_train::losses::attention::{attention_map, attention_transfer};
use relkd_train::losses::hinton::hinton_kd;
use relkd_train::losses::kernel_matrix::{
    GramMode, KernelMatrix, KernelMatrixConfig, batch_gram, channel_gram, gram_distance,
};
use relkd_train::losses::logits::logits_kl;
use relkd_train::losses::segmentation::{DiceClasses, SegmentationLoss, dice_loss, focal_loss};
use relkd_train::losses::{DistillationWeights, Gate, LossTerms, Term};

mod common;

use common::{check_gradient, close, labels, random, scalar, t4, two_pixel_logits, values};

const LN2: f64 = std::f64::consts::LN_2;

#[test]
fn dice_and_focal_by_hand() {
    let device = Device::flex();
    let y = labels(&[1, 1], [1, 1, 2], &device);
    // Class 0: no overlap, Σp = ¾; class 1: overlap ½ + ¾, Σp + Σy = 1¼ + 2.
    let s = 1e-5;
    let dice = 1.0 - (s / (0.75 + s) + (2.5 + s) / (3.25 + s)) / 2.0;
    close(scalar(dice_loss(two_pixel_logits(&device), y.clone(), DiceClasses::All)), dice, 1e-6);
    // The foreground alone: 1 − (2.5 + s) / (3.25 + s).
    let foreground = 1.0 - (2.5 + s) / (3.25 + s);
    close(scalar(dice_loss(two_pixel_logits(&device), y.clone(), DiceClasses::Foreground)), foreground, 1e-6);
    // p_t = ½ and ¾: −mean((1 − p_t)² ln p_t).
    let focal = -(0.25 * 0.5f64.ln() + 0.0625 * 0.75f64.ln()) / 2.0;
    close(scalar(focal_loss(two_pixel_logits(&device), y.clone(), 2.0)), focal, 1e-6);
    let both = SegmentationLoss::default().forward(two_pixel_logits(&device), y);
    close(scalar(both), 0.5 * dice + 0.5 * focal, 1e-6);
}

#[test]
fn logits_kl_by_hand() {
    let device = Device::flex();
    let student = t4(&[0.0, 0.0], [1, 2, 1, 1], &device);
    let teacher = t4(&[0.0, 3f32.ln()], [1, 2, 1, 1], &device);
    // KL((½, ½) ‖ (¼, ¾)) = ½ ln 2 + ½ ln ⅔.
    let kl = 0.5 * LN2 + 0.5 * (2.0f64 / 3.0).ln();
    close(scalar(logits_kl(student.clone(), teacher.clone(), 1.0, None)), kl, 1e-6);
    // T = 2: the teacher becomes (1, √3)/(1 + √3).
    let q = 1.0 / (1.0 + 3f64.sqrt());
    let kl_t2 = 0.5 * (0.5 / q).ln() + 0.5 * (0.5 / (1.0 - q)).ln();
    close(scalar(logits_kl(student.clone(), teacher, 2.0, None)), kl_t2, 1e-6);
    // Equal logits: zero.
    close(scalar(logits_kl(student.clone(), student, 1.0, None)), 0.0, 1e-7);
    // A larger teacher map is resized to the student's size first.
    let big_teacher = t4(&[[0.0f32; 16], [3f32.ln(); 16]].concat(), [1, 2, 4, 4], &device);
    let small_student = t4(&[0.0; 8], [1, 2, 2, 2], &device);
    close(scalar(logits_kl(small_student, big_teacher, 1.0, None)), kl, 1e-6);
}

/// An adapter that is the identity (c → c, bias 0).
fn identity_kmm(channels: usize, mode: GramMode, device: &Device) -> KernelMatrix {
    let mut kmm = KernelMatrixConfig::new(channels, channels).with_mode(mode).init(device);
    let eye: Vec<f32> = (0..channels * channels).map(|i| if i % (channels + 1) == 0 { 1.0 } else { 0.0 }).collect();
    kmm.adapter.weight = Param::from_tensor(t4(&eye, [channels, channels, 1, 1], device));
    kmm.adapter.bias = Some(Param::from_tensor(Tensor::zeros([channels], device)));
    kmm
}

#[test]
fn kernel_matrix_by_hand() {
    let device = Device::flex();
    // Samples (3, 4) and (1, 0) normalise to (0.6, 0.8) and (1, 0): K_S = [[1, .6], [.6, 1]].
    let student = t4(&[3.0, 4.0, 1.0, 0.0], [2, 1, 1, 2], &device);
    // Teacher samples (0, 2) and (1, 0) are orthonormal: K_T = I.
    let teacher = t4(&[0.0, 2.0, 1.0, 0.0], [2, 1, 1, 2], &device);
    assert_eq!(values(batch_gram(student.clone())), vec![1.0, 0.6, 0.6, 1.0]);
    // mean(diff²) = 2·0.36/4, mean|diff| = 1.2/4.
    close(scalar(gram_distance(batch_gram(student.clone()), batch_gram(teacher.clone()))), 0.18 + 0.3, 1e-6);
    close(scalar(identity_kmm(1, GramMode::Batch, &device).forward(student, teacher)), 0.48, 1e-6);

    // Channel Gram: one sample whose two channels are (3, 4) and (1, 0).
    let student = t4(&[3.0, 4.0, 1.0, 0.0], [1, 2, 1, 2], &device);
    let teacher = t4(&[0.0, 2.0, 1.0, 0.0], [1, 2, 1, 2], &device);
    assert_eq!(values(channel_gram(student.clone())), vec![1.0, 0.6, 0.6, 1.0]);
    close(scalar(identity_kmm(2, GramMode::Channel, &device).forward(student, teacher)), 0.48, 1e-6);
}

#[test]
fn kernel_matrix_is_zero_for_identical_normalised_features() {
    let device = Device::flex();
    let teacher = Tensor::<4>::random([3, 2, 2, 2], Distribution::Normal(0.0, 1.0), &device);
    let student = teacher.clone().mul_scalar(2.5); // same direction, other scale
    for mode in [GramMode::Batch, GramMode::Channel] {
        close(scalar(identity_kmm(2, mode, &device).forward(student.clone(), teacher.clone())), 0.0, 1e-6);
    }
}

#[test]
fn adapter_gets_gradients_and_the_teacher_none() {
    let device = Device::flex().autodiff();
    let kmm = KernelMatrixConfig::new(3, 5).init(&device);
    let student = Tensor::<4>::random([2, 3, 2, 2], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let teacher = Tensor::<4>::random([2, 5, 4, 4], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let grads = kmm.forward(student.clone(), teacher.clone()).backward();
    let adapter_grad = kmm.adapter.weight.grad(&grads).expect("adapter receives a gradient");
    assert!(values(adapter_grad).iter().any(|g| g.abs() > 0.0));
    assert!(student.grad(&grads).is_some());
    assert!(teacher.grad(&grads).is_none(), "no gradient may reach the teacher");
}

#[test]
fn kernel_matrix_gradient_matches_finite_differences() {
    let teacher = random(2 * 4 * 2 * 2, 7);
    // A fixed adapter: the device's random initialisation is shared with tests running beside
    // this one, and an unlucky draw can put a difference of the L1 term on its kink.
    let device = Device::flex();
    let mut kmm = KernelMatrixConfig::new(3, 4).init(&device);
    kmm.adapter.weight = Param::from_tensor(t4(&random(4 * 3, 13), [4, 3, 1, 1], &device));
    kmm.adapter.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(random(4, 17), [4]), &device)));
    for mode in [GramMode::Batch, GramMode::Channel] {
        let kmm = KernelMatrix { mode, ..kmm.clone() };
        check_gradient(random(2 * 3 * 2 * 2, 3), [2, 3, 2, 2], |student| {
            let device = student.device();
            kmm.clone().to_device(&device).forward(student, t4(&teacher, [2, 4, 2, 2], &device))
        });
    }
}

#[test]
fn total_follows_equation_8() {
    let device = Device::flex();
    let s = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
    let values = [
        (Term::Segmentation, 1.0),
        (Term::Lm, 2.0),
        (Term::Kmm, 3.0),
        (Term::Aam, 4.0),
        (Term::Kd, 5.0),
        (Term::At, 6.0),
    ];
    let terms: LossTerms = values.iter().map(|&(t, v)| (t, s(v))).collect();
    close(scalar(terms.total(&DistillationWeights::paper())), 1.0 + 0.2 * 2.0 + 0.9 * 3.0 + 0.9 * 4.0, 1e-6);
    close(scalar(terms.total(&DistillationWeights::default())), 1.0, 1e-7);
    let mut lm_only = terms.clone();
    lm_only.remove(Term::Kmm);
    lm_only.remove(Term::Aam);
    close(scalar(lm_only.total(&DistillationWeights::paper())), 1.4, 1e-6);
    let hinton: DistillationWeights = [(Term::Kd, 0.5)].into_iter().collect();
    close(scalar(terms.total(&hinton)), 1.0 + 0.5 * 5.0, 1e-6);
}

#[test]
fn distillers_follow_the_config() {
    let mut losses = LossConfig::default();
    assert_eq!(losses.weights(), DistillationWeights::paper());
    losses.lambda.kmm = 0.0;
    assert_eq!(losses.weights(), [(Term::Lm, 0.2), (Term::Aam, 0.9)].into_iter().collect());
    losses.distiller = Distiller::Hinton;
    assert_eq!(losses.weights(), [(Term::Kd, 1.0)].into_iter().collect());
    losses.distiller = Distiller::Attention;
    assert_eq!(losses.weights(), [(Term::At, 500.0)].into_iter().collect());
}

#[test]
fn hinton_kd_by_hand() {
    let device = Device::flex();
    let student = t4(&[0.0, 0.0], [1, 2, 1, 1], &device);
    let teacher = t4(&[0.0, 3f32.ln()], [1, 2, 1, 1], &device);
    // KL((¼, ¾) ‖ (½, ½)), the teacher's distribution first; T = 1 scales by 1.
    let kl = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
    close(scalar(hinton_kd(student.clone(), teacher.clone(), 1.0, None)), kl, 1e-6);
    // T = 2: the teacher softens to (1, √3)/(1 + √3), and the KL is scaled by T² = 4.
    let q = 1.0 / (1.0 + 3f64.sqrt());
    let kl_t2 = q * (2.0 * q).ln() + (1.0 - q) * (2.0 * (1.0 - q)).ln();
    close(scalar(hinton_kd(student.clone(), teacher, 2.0, None)), 4.0 * kl_t2, 1e-6);
    close(scalar(hinton_kd(student.clone(), student, 4.0, None)), 0.0, 1e-7);
}

#[test]
fn hinton_kd_gradient_matches_finite_differences_and_spares_the_teacher() {
    let teacher_values = random(2 * 2 * 3 * 3, 11);
    let device = Device::flex().autodiff();
    let teacher = t4(&teacher_values, [2, 2, 3, 3], &device);
    check_gradient(random(2 * 2 * 3 * 3, 5), [2, 2, 3, 3], |x| {
        hinton_kd(x.clone(), t4(&teacher_values, [2, 2, 3, 3], &x.device()), 2.0, None)
    });
    let teacher = teacher.require_grad();
    let student = t4(&random(36, 5), [2, 2, 3, 3], &device).require_grad();
    let grads = hinton_kd(student.clone(), teacher.clone(), 2.0, None).backward();
    assert!(student.grad(&grads).is_some());
    assert!(teacher.grad(&grads).is_none(), "no gradient may reach the teacher");
}

/// LM detaches the teacher itself, as every distillation loss does (not only its callers).
#[test]
fn logits_module_spares_the_teacher() {
    let device = Device::flex().autodiff();
    let teacher = t4(&random(36, 11), [2, 2, 3, 3], &device).require_grad();
    let student = t4(&random(36, 5), [2, 2, 3, 3], &device).require_grad();
    let grads = logits_kl(student.clone(), teacher.clone(), 1.0, None).backward();
    assert!(student.grad(&grads).is_some());
    assert!(teacher.grad(&grads).is_none(), "no gradient may reach the teacher");
}

#[test]
fn attention_transfer_by_hand() {
    let device = Device::flex();
    // Student 1×2×1×2: channel means of squares (1 + 9)/2 = 5 and (4 + 0)/2 = 2.
    let student = t4(&[1.0, 2.0, 3.0, 0.0], [1, 2, 1, 2], &device);
    // Teacher with one channel: squares 1 and 1.
    let teacher = t4(&[1.0, -1.0], [1, 1, 1, 2], &device);
    let n = 29f64.sqrt();
    let h = 0.5f64.sqrt();
    let want = ((5.0 / n - h).powi(2) + (2.0 / n - h).powi(2)) / 2.0;
    close(scalar(attention_transfer(student.clone(), teacher)), want, 1e-6);
    let map = values(attention_map(student.clone(), [1, 2]));
    close(map[0] as f64, 5.0 / n, 1e-6);
    close(map[1] as f64, 2.0 / n, 1e-6);
    // A teacher proportional to the student, with any channel count, has the same attention.
    let scaled = student.clone().mul_scalar(3.0);
    close(scalar(attention_transfer(student.clone(), Tensor::cat(vec![scaled.clone(), scaled], 1))), 0.0, 1e-7);
    // The student's map is resized to the teacher's size: uniform maps stay equal.
    let small = t4(&[1.0; 4], [1, 1, 2, 2], &device);
    let big = t4(&[2.0; 48], [1, 3, 4, 4], &device);
    close(scalar(attention_transfer(small, big)), 0.0, 1e-7);
}

#[test]
fn attention_transfer_gradient_matches_finite_differences() {
    let teacher = random(2 * 3 * 2 * 2, 3);
    check_gradient(random(2 * 2 * 2 * 2, 9), [2, 2, 2, 2], |x| {
        attention_transfer(x.clone(), t4(&teacher, [2, 3, 2, 2], &x.device()))
    });
}

/// KL(a ‖ b) of two-class distributions given by their second probabilities.
fn kl2(a: f64, b: f64) -> f64 {
    (1.0 - a) * ((1.0 - a) / (1.0 - b)).ln() + a * (a / b).ln()
}

#[test]
fn teacher_correct_gate_by_hand() {
    let device = Device::flex();
    // A row of four pixels. Student p(fg) = ½, ¾, ½, ½; the teacher says fg, fg, bg, bg with
    // p(fg) = e/(1+e), e/(1+e), 1/(1+e), 1/(1+e); the ground truth is fg, fg, fg, bg, so the
    // teacher is wrong at pixel 2 only.
    let ln3 = 3f32.ln();
    let student = t4(&[0.0, 0.0, 0.0, 0.0, 0.0, ln3, 0.0, 0.0], [1, 2, 1, 4], &device);
    let teacher = t4(&[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0], [1, 2, 1, 4], &device);
    let truth = labels(&[1, 1, 1, 0], [1, 1, 4], &device);
    assert!(Gate::None.mask(&teacher, &truth).is_none());
    let mask = Gate::TeacherCorrect.mask(&teacher, &truth).unwrap();
    assert_eq!(values(mask.clone()), vec![1.0, 1.0, 0.0, 1.0]);
    let gated = Some(&mask);

    let e = std::f64::consts::E;
    let (hi, lo) = (e / (1.0 + e), 1.0 / (1.0 + e));
    let (ps, pt) = ([0.5, 0.75, 0.5, 0.5], [hi, hi, lo, lo]);
    let kept = [0, 1, 3];
    // LM: KL(p_s ‖ p_t) averaged over the kept pixels; without the gate, over all four.
    let lm: f64 = kept.iter().map(|&i| kl2(ps[i], pt[i])).sum::<f64>() / 3.0;
    let lm_all: f64 = (0..4).map(|i| kl2(ps[i], pt[i])).sum::<f64>() / 4.0;
    close(scalar(logits_kl(student.clone(), teacher.clone(), 1.0, gated)), lm, 1e-6);
    close(scalar(logits_kl(student.clone(), teacher.clone(), 1.0, None)), lm_all, 1e-6);
    // Hinton's KD at T = 1: KL(p_t ‖ p_s) over the kept pixels.
    let kd: f64 = kept.iter().map(|&i| kl2(pt[i], ps[i])).sum::<f64>() / 3.0;
    close(scalar(hinton_kd(student.clone(), teacher.clone(), 1.0, gated)), kd, 1e-6);

    // AAM at dilation 1: only the pair (0, 1) keeps both pixels, both ways, in P+; the P− pairs
    // (1, 2) and (2, 1) and the P+ pairs (2, 3) and (3, 2) touch pixel 2 and are dropped.
    let w01 = kl2(0.5, 0.75);
    let w10 = kl2(0.75, 0.5);
    let aam = AffinityConfig::new(2).with_dilations(vec![1]).init(&device);
    let out = aam.forward(student.clone(), teacher.clone(), gated);
    close(scalar(out.positive), (w01 + w10) / 2.0, 1e-6);
    close(scalar(out.negative), 0.0, 1e-7);
    // Ungated: P+ adds (2, 3) and (3, 2) at W = 0; P− holds (1, 2) with W = w10 and (2, 1) with w01.
    let out = aam.forward(student, teacher, None);
    close(scalar(out.positive), (w01 + w10) / 4.0, 1e-6);
    close(scalar(out.negative), ((3.0 - w10) + (3.0 - w01)) / 2.0, 1e-5);
}

#[test]
fn the_gate_is_a_loss_setting() {
    let losses: LossConfig = serde_yaml::from_str("gate: teacher_correct").unwrap();
    assert_eq!(losses.gate, Gate::TeacherCorrect);
    assert_eq!(LossConfig::default().gate, Gate::None);
    assert!(serde_yaml::from_str::<LossConfig>("gate: teacher").is_err());
}
