//! The adaptive affinity module `L_AA` (eqs. 1–4), after Adaptive Affinity Fields (Ke et al.,
//! ECCV 2018).
//!
//! Each pixel i is paired with its neighbours j at the 8 compass offsets of each dilation
//! (1, 2, 3); pairs that leave the image are skipped. The teacher's predicted labels split the
//! pairs into P+ (same label) and P− (different labels). On the student's probabilities,
//! clamped to [1e-4, 1], `W_ij = KL(p_i ‖ p_j)`;
//! `L_P+ = mean over P+ of W_ij`, `L_P− = mean over P− of max(0, m − W_ij)` with margin m = 3,
//! and `L_AA = L_P+ + L_P−`.
//!
//! `per_class_positive` (not the paper's) averages `L_P+` per class of pixel i and then over the
//! classes present: with a small gland nearly every P+ pair is background–background, so the
//! pooled mean barely notices speckle inside the gland; per class, foreground pairs weigh half.
//!
//! "Adaptive" (AAF's learned neighbourhood sizes): with `adaptive`, each pair's terms are
//! weighted by a per-class softmax over the dilations (the class of pixel i), scaled so that
//! equal weights give the plain loss. The weights are trained by gradient *ascent* (AAF's
//! min-max), implemented by reversing their gradient, so one optimiser step serves both.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Int, Tensor};

use relkd_models::cpu::{AffinityPairs, affinity_sums, neighbour_offsets, runs_on_flex};
use relkd_models::layers::resize_bilinear;

use super::segmentation::one_hot;

/// Lower clamp of the student's probabilities before the logarithm.
const PROBABILITY_FLOOR: f64 = 1e-4;

#[derive(Config, Debug)]
pub struct AffinityConfig {
    pub classes: usize,
    #[config(default = "vec![1, 2, 3]")]
    pub dilations: Vec<usize>,
    #[config(default = 3.0)]
    pub margin: f64,
    /// Learned per-class weights over the dilations; plain equal weights when false.
    #[config(default = false)]
    pub adaptive: bool,
    /// `L_P+` as the mean over classes of each class's mean; the paper's pooled mean when false.
    #[config(default = false)]
    pub per_class_positive: bool,
}

impl AffinityConfig {
    pub fn init(&self, device: &Device) -> Affinity {
        Affinity {
            // Zeros: the softmax starts from equal weights.
            weights: self
                .adaptive
                .then(|| Param::from_tensor(Tensor::zeros([self.classes, self.dilations.len()], device))),
            dilations: self.dilations.clone(),
            margin: self.margin,
            per_class_positive: self.per_class_positive,
        }
    }
}

#[derive(Module, Debug)]
pub struct Affinity {
    /// `[classes, dilations]` logits of the adaptive weights.
    pub weights: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub dilations: Vec<usize>,
    #[module(skip)]
    pub margin: f64,
    #[module(skip)]
    pub per_class_positive: bool,
}

/// `L_AA` and its two parts.
#[derive(Debug, Clone)]
pub struct AffinityLoss {
    pub total: Tensor<1>,
    pub positive: Tensor<1>,
    pub negative: Tensor<1>,
}

/// Value x, gradient −1: descent on the loss becomes ascent on x.
fn reverse_gradient<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone().detach().mul_scalar(2.0) - x
}

impl Affinity {
    /// `student [b, k, h, w]` logits; `teacher [b, k, h', w']` logits (resized to h × w,
    /// detached). With a `mask [b, 1, h, w]`, only the pairs whose two pixels it keeps count
    /// ([`super::Gate`]).
    pub fn forward(&self, student: Tensor<4>, teacher: Tensor<4>, mask: Option<&Tensor<4>>) -> AffinityLoss {
        let [b, k, h, w] = student.dims();
        let device = student.device();
        let fused = self.weights.is_none() && runs_on_flex(&device) && student.dtype() == DType::F32;
        let labels = resize_bilinear(teacher.detach(), [h, w]).argmax(1); // [b, 1, h, w]
        let sums = if fused {
            // The same sums, from the logits, in one pass each way on the CPU backend
            // (relkd-models' cpu module).
            let mask = mask.cloned().unwrap_or_else(|| Tensor::ones([b, 1, h, w], &device));
            let pairs = AffinityPairs {
                dilations: self.dilations.clone(),
                margin: self.margin as f32,
                probability_floor: PROBABILITY_FLOOR as f32,
            };
            let sums = affinity_sums(student, labels.float(), mask, &pairs); // [2k + 2]
            PairSums {
                positive: sums.clone().slice(0..k),
                negative: sums.clone().slice(k..k + 1),
                positive_count: sums.clone().slice(k + 1..2 * k + 1),
                negative_count: sums.slice(2 * k + 1..2 * k + 2),
            }
        } else {
            let p = softmax(student, 1).clamp(PROBABILITY_FLOOR, 1.0); // [b, k, h, w]
            self.pair_sums(p.clone(), p.log(), labels, mask)
        };
        self.loss_of(sums)
    }

    /// `L_P+`, `L_P−` and their total from the pair sums.
    fn loss_of(&self, sums: PairSums) -> AffinityLoss {
        let PairSums { positive: pos_sum, positive_count: pos_count, negative: neg_sum, negative_count: neg_count } =
            sums;
        // An empty set (no P− pairs in a slice without foreground) contributes 0.
        let positive = if self.per_class_positive {
            let present = pos_count.clone().greater_elem(0.0).float(); // [k]
            let class_means = pos_sum / pos_count.clamp_min(1.0);
            (class_means * present.clone()).sum() / present.sum().clamp_min(1.0)
        } else {
            pos_sum.sum() / pos_count.sum().clamp_min(1.0)
        };
        let negative = neg_sum / neg_count.clamp_min(1.0);
        AffinityLoss { total: positive.clone() + negative.clone(), positive, negative }
    }

    /// The pair sums out of Burn's operations, offset by offset: every device, and the
    /// adaptive weights.
    fn pair_sums(&self, p: Tensor<4>, log_p: Tensor<4>, labels: Tensor<4, Int>, mask: Option<&Tensor<4>>) -> PairSums {
        let [b, k, h, w] = p.dims();
        let device = p.device();
        let class_weights = self.weights.as_ref().map(|w| {
            let n = self.dilations.len() as f64;
            reverse_gradient(softmax(w.val(), 1).mul_scalar(n)) // [k, dilations], mean 1 per class
        });

        // Pixel i's class, one-hot once for all offsets (each offset slices it).
        let class = one_hot(labels.clone().reshape([b, h, w]), k); // [b, k, h, w]
        let zeros = |n: usize| Tensor::<1>::zeros([n], &device);
        // P+ sums and counts per class of pixel i ([k]); P− pooled ([1]).
        let (mut pos_sum, mut pos_count, mut neg_sum, mut neg_count) = (zeros(k), zeros(k), zeros(1), zeros(1));
        for (di, &d) in self.dilations.iter().enumerate() {
            for (dy, dx) in neighbour_offsets(d) {
                let (Some(rows), Some(cols)) = (overlap(h, dy), overlap(w, dx)) else { continue };
                let (ri, rj) = rows;
                let (ci, cj) = cols;
                let at =
                    |t: Tensor<4>, r: std::ops::Range<usize>, c: std::ops::Range<usize>| t.slice([0..b, 0..k, r, c]);
                let (p_i, log_p_i, log_p_j) = (
                    at(p.clone(), ri.clone(), ci.clone()),
                    at(log_p.clone(), ri.clone(), ci.clone()),
                    at(log_p.clone(), rj.clone(), cj.clone()),
                );
                let w_ij = (p_i * (log_p_i - log_p_j)).sum_dim(1); // [b, 1, h', w']
                let labels_i: Tensor<4, Int> = labels.clone().slice([0..b, 0..1, ri.clone(), ci.clone()]);
                let labels_j: Tensor<4, Int> = labels.clone().slice([0..b, 0..1, rj.clone(), cj.clone()]);
                let same = labels_i.clone().equal(labels_j).float(); // 1 on P+, 0 on P−
                let different = same.clone().neg().add_scalar(1.0);
                let (same, different) = match mask {
                    Some(m) => {
                        let both = m.clone().slice([0..b, 0..1, ri.clone(), ci.clone()])
                            * m.clone().slice([0..b, 0..1, rj.clone(), cj.clone()]);
                        (same * both.clone(), different * both)
                    }
                    None => (same, different),
                };
                let class_i = at(class.clone(), ri.clone(), ci.clone()); // [b, k, h', w']
                // The adaptive weight of each pair (the class of pixel i at this dilation); the
                // plain loss multiplies by nothing rather than by ones, which costs a tenth of
                // the step at the quick size.
                let weight = class_weights.as_ref().map(|cw| {
                    let column = cw.clone().slice([0..k, di..di + 1]).reshape([1, k, 1, 1]);
                    (class_i.clone() * column).sum_dim(1) // [b, 1, h', w']
                });
                let weighted = |t: Tensor<4>| match &weight {
                    Some(weight) => t * weight.clone(),
                    None => t,
                };
                let hinge = w_ij.clone().neg().add_scalar(self.margin).clamp_min(0.0);
                let per_class = |t: Tensor<4>| (t * class_i.clone()).sum_dims_squeeze::<1, _>(&[0, 2, 3]); // [k]
                pos_sum = pos_sum + per_class(weighted(w_ij * same.clone()));
                pos_count = pos_count + per_class(same);
                neg_sum = neg_sum + weighted(hinge * different.clone()).sum();
                neg_count = neg_count + different.sum();
            }
        }
        PairSums { positive: pos_sum, positive_count: pos_count, negative: neg_sum, negative_count: neg_count }
    }
}

/// Over the pairs: W_ij summed per class of pixel i over P+ and their counts (`[k]`), the hinge
/// summed over P− and their count (`[1]`), each pair weighted by the mask.
struct PairSums {
    positive: Tensor<1>,
    positive_count: Tensor<1>,
    negative: Tensor<1>,
    negative_count: Tensor<1>,
}

/// For an offset along an axis of length n: the index ranges of the pixels i and of their
/// neighbours j = i + offset that both lie inside, or None when no pair does.
fn overlap(n: usize, offset: isize) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let shift = offset.unsigned_abs();
    if shift >= n {
        return None;
    }
    Some(if offset >= 0 { (0..n - shift, shift..n) } else { (shift..n, 0..n - shift) })
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// The CPU backend's one-pass sums against Burn's operations offset by offset, on the same
    /// inputs: the loss and its gradient on the student's logits, with and without a gate
    /// mask, pooled and per class, and with logits spread wide enough that the probability
    /// floor clamps some of them.
    #[test]
    fn the_fused_pair_sums_equal_burns_operations() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let shape = [3, 2, 9, 7];
        for spread in [2.0, 8.0] {
            let student = Tensor::<4>::random(shape, Distribution::Normal(0.0, spread), &device);
            if spread > 4.0 {
                let clamped =
                    softmax(student.clone(), 1).lower_elem(PROBABILITY_FLOOR).int().sum().into_scalar::<i64>();
                assert!(clamped > 0, "no probability under the floor");
            }
            the_fused_pair_sums_equal_burns_operations_on(student, &device);
        }
    }

    fn the_fused_pair_sums_equal_burns_operations_on(student: Tensor<4>, device: &Device) {
        let shape = student.dims();
        let [b, _, h, w] = shape;
        let teacher = Tensor::<4>::random([b, 2, 5, 4], Distribution::Normal(0.0, 1.0), device);
        let gate = Tensor::<4>::random([b, 1, h, w], Distribution::Uniform(0.0, 1.0), device).greater_elem(0.3).float();
        for (mask, per_class) in [(None, false), (Some(&gate), false), (Some(&gate), true)] {
            let aam = AffinityConfig::new(2).with_per_class_positive(per_class).init(device);
            let run = |fused: bool| {
                let student = student.clone().require_grad();
                let loss = if fused {
                    aam.forward(student.clone(), teacher.clone(), mask)
                } else {
                    // The same loss with the sums forced through Burn's operations.
                    let labels = resize_bilinear(teacher.clone(), [h, w]).argmax(1);
                    let p = softmax(student.clone(), 1).clamp(PROBABILITY_FLOOR, 1.0);
                    aam.loss_of(aam.pair_sums(p.clone(), p.log(), labels, mask))
                };
                let grads = loss.total.clone().backward();
                let gradient = student.grad(&grads).expect("the student's gradient").into_data();
                (loss.positive.into_data(), loss.negative.into_data(), gradient)
            };
            let ((pos, neg, grad), (pos_ref, neg_ref, grad_ref)) = (run(true), run(false));
            let tolerance = Tolerance::relative(1e-5).set_absolute(1e-6);
            pos.assert_approx_eq::<f32>(&pos_ref, tolerance);
            neg.assert_approx_eq::<f32>(&neg_ref, tolerance);
            grad.assert_approx_eq::<f32>(&grad_ref, tolerance);
        }
    }
}
