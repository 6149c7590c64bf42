//! The affinity loss (AAM) against values computed by hand and an independent loop in f64, its
//! finite-difference gradients, and its adaptive weights.

mod common;

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};
use common::{check_gradient, close, random, scalar, t4, two_pixel_logits};
use relkd_train::losses::affinity::AffinityConfig;

#[test]
fn affinity_by_hand() {
    let device = Device::flex();
    let aam = AffinityConfig::new(2).with_dilations(vec![1]).init(&device);
    // The only pairs: (0 → 1) and (1 → 0).
    let w01 = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
    let w10 = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
    // Teacher says both pixels are foreground: both pairs in P+.
    let same = t4(&[0.0, 0.0, 1.0, 1.0], [1, 2, 1, 2], &device);
    let out = aam.forward(two_pixel_logits(&device), same, None);
    close(scalar(out.positive), (w01 + w10) / 2.0, 1e-6);
    close(scalar(out.negative), 0.0, 1e-7);
    // Teacher splits them: both pairs in P−, hinge at margin 3.
    let split = t4(&[1.0, 0.0, 0.0, 1.0], [1, 2, 1, 2], &device);
    let out = aam.forward(two_pixel_logits(&device), split, None);
    close(scalar(out.positive), 0.0, 1e-7);
    close(scalar(out.negative), ((3.0 - w01) + (3.0 - w10)) / 2.0, 1e-5);
    close(scalar(out.total), ((3.0 - w01) + (3.0 - w10)) / 2.0, 1e-5);
}

/// An independent f64 loop over pixels, neighbours and dilations; with `per_class`, L_P+ is
/// the mean over the classes of pixel i present of each class's mean.
fn affinity_reference(
    student: &[f32],
    teacher: &[f32],
    [h, w]: [usize; 2],
    dilations: &[usize],
    margin: f64,
    per_class: bool,
) -> (f64, f64) {
    let prob = |logits: &[f32], y: usize, x: usize| {
        let (a, b) = (logits[y * w + x] as f64, logits[h * w + y * w + x] as f64);
        let p1 = 1.0 / (1.0 + (a - b).exp());
        [(1.0 - p1).clamp(1e-4, 1.0), p1.clamp(1e-4, 1.0)]
    };
    let label = |y: usize, x: usize| (teacher[h * w + y * w + x] > teacher[y * w + x]) as usize;
    let (mut pos, mut npos, mut neg, mut nneg) = ([0.0; 2], [0usize; 2], 0.0, 0);
    for &d in dilations {
        let d = d as isize;
        for (dy, dx) in [(-d, -d), (-d, 0), (-d, d), (0, -d), (0, d), (d, -d), (d, 0), (d, d)] {
            for y in 0..h as isize {
                for x in 0..w as isize {
                    let (yj, xj) = (y + dy, x + dx);
                    if yj < 0 || xj < 0 || yj >= h as isize || xj >= w as isize {
                        continue;
                    }
                    let (pi, pj) = (prob(student, y as usize, x as usize), prob(student, yj as usize, xj as usize));
                    let kl: f64 = (0..2).map(|c| pi[c] * (pi[c].ln() - pj[c].ln())).sum();
                    let class = label(y as usize, x as usize);
                    if class == label(yj as usize, xj as usize) {
                        pos[class] += kl;
                        npos[class] += 1;
                    } else {
                        neg += (margin - kl).max(0.0);
                        nneg += 1;
                    }
                }
            }
        }
    }
    let positive = if per_class {
        let means: Vec<f64> = (0..2).filter(|&c| npos[c] > 0).map(|c| pos[c] / npos[c] as f64).collect();
        means.iter().sum::<f64>() / means.len().max(1) as f64
    } else {
        (pos[0] + pos[1]) / (npos[0] + npos[1]).max(1) as f64
    };
    (positive, neg / nneg.max(1) as f64)
}

#[test]
fn affinity_matches_an_independent_loop() {
    let device = Device::flex();
    let [h, w] = [3, 3];
    let student: Vec<f32> = random(2 * h * w, 11).iter().map(|v| v * 3.0).collect();
    let teacher = random(2 * h * w, 5);
    let aam = AffinityConfig::new(2).init(&device); // dilations 1, 2, 3; margin 3
    let out = aam.forward(t4(&student, [1, 2, h, w], &device), t4(&teacher, [1, 2, h, w], &device), None);
    let (pos, neg) = affinity_reference(&student, &teacher, [h, w], &[1, 2, 3], 3.0, false);
    close(scalar(out.positive), pos, 1e-5);
    close(scalar(out.negative), neg, 1e-4);
}

#[test]
fn per_class_positive_mean_matches_the_loop_and_weighs_the_gland() {
    let device = Device::flex();
    let [h, w] = [4, 5];
    // The teacher's foreground: 4 of 20 pixels, so background pairs dominate the pooled mean;
    // the student is ragged inside it (large logits) and smooth outside.
    let gland = [6, 7, 11, 12];
    let mut teacher = vec![0f32; 2 * h * w];
    for i in gland {
        teacher[h * w + i] = 1.0;
    }
    let student: Vec<f32> = random(2 * h * w, 3)
        .iter()
        .enumerate()
        .map(|(i, v)| v * if gland.contains(&(i % (h * w))) { 3.0 } else { 0.5 })
        .collect();
    let aam = AffinityConfig::new(2).with_per_class_positive(true).init(&device);
    let out = aam.forward(t4(&student, [1, 2, h, w], &device), t4(&teacher, [1, 2, h, w], &device), None);
    let (pos, neg) = affinity_reference(&student, &teacher, [h, w], &[1, 2, 3], 3.0, true);
    let (pooled, _) = affinity_reference(&student, &teacher, [h, w], &[1, 2, 3], 3.0, false);
    assert!((pos - pooled).abs() > 1e-3, "the two means must differ on this case: {pos} vs {pooled}");
    close(scalar(out.positive), pos, 1e-5);
    close(scalar(out.negative), neg, 1e-4);
    // By hand on a row of five pixels, p = (½,½), (¼,¾), then (½,½) three times; the teacher
    // says foreground, foreground, background × 3. P+: the foreground pair both ways (W01, W10)
    // and four background pairs, all 0 (equal probabilities). Pooled: (W01 + W10) / 6; per
    // class: (W01 + W10) / 2 for the gland and 0 for the background, averaged → / 4.
    let w01 = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
    let w10 = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
    let ln3 = 3f32.ln();
    let student = t4(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, ln3, 0.0, 0.0, 0.0], [1, 2, 1, 5], &device);
    let teacher = t4(&[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [1, 2, 1, 5], &device);
    let row = |per_class: bool| {
        let aam = AffinityConfig::new(2).with_dilations(vec![1]).with_per_class_positive(per_class).init(&device);
        scalar(aam.forward(student.clone(), teacher.clone(), None).positive)
    };
    close(row(false), (w01 + w10) / 6.0, 1e-6);
    close(row(true), (w01 + w10) / 4.0, 1e-6);
}

#[test]
fn affinity_positive_term_vanishes_for_constant_probabilities() {
    let device = Device::flex();
    let student = t4(&[[0.3f32; 9], [-1.2f32; 9]].concat(), [1, 2, 3, 3], &device);
    let teacher = Tensor::<4>::random([1, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
    let out = AffinityConfig::new(2).init(&device).forward(student, teacher, None);
    close(scalar(out.positive), 0.0, 1e-7);
}

#[test]
fn affinity_gradient_matches_finite_differences() {
    let teacher = random(2 * 4 * 4, 9);
    let aam = AffinityConfig::new(2).init(&Device::flex());
    check_gradient(random(2 * 4 * 4, 4), [1, 2, 4, 4], |student| {
        let device = student.device();
        aam.forward(student, t4(&teacher, [1, 2, 4, 4], &device), None).total
    });
}

#[test]
fn adaptive_weights_start_equal_and_climb_the_loss() {
    let device = Device::flex().autodiff();
    let student = t4(&random(2 * 5 * 5, 1), [1, 2, 5, 5], &device);
    let teacher = t4(&random(2 * 5 * 5, 2), [1, 2, 5, 5], &device);
    let plain = AffinityConfig::new(2).with_dilations(vec![1, 2]).init(&device);
    let adaptive = AffinityConfig::new(2).with_dilations(vec![1, 2]).with_adaptive(true).init(&device);
    let l0 = adaptive.forward(student.clone(), teacher.clone(), None).total;
    close(scalar(l0.clone()), scalar(plain.forward(student.clone(), teacher.clone(), None).total), 1e-6);

    // One plain gradient-descent step on the loss moves the weights uphill.
    let weights = adaptive.weights.as_ref().unwrap();
    let grad = weights.grad(&l0.backward()).expect("adaptive weights receive a gradient");
    let stepped = (weights.val().detach() - grad.mul_scalar(5.0)).into_data();
    let mut moved = adaptive.clone();
    moved.weights = Some(Param::from_tensor(Tensor::from_data(stepped, &device)));
    let l1 = moved.forward(student, teacher, None).total;
    assert!(scalar(l1.clone()) > scalar(l0.clone()) + 1e-6, "{} vs {}", scalar(l1), scalar(l0));
}
