//! The affinity loss's pair sums (AAM, `relkd-runs`' `losses::affinity`) as one operation on the
//! CPU backend (flex), from the student's logits: its softmax, the clamp and the logarithm, then
//! one pass over the pixel pairs forward, and one pass back to the logits.
//!
//! Written out of Burn's operations the loss slices, compares and sums once per neighbour
//! offset (24 at dilations 1, 2, 3), about thirty small operations each way per offset, and
//! cost about as much as the student's own training step (issue #32). The pair passes
//! (`pairs.rs`) replaced those; the softmax, clamp and logarithm, six more of Burn's operations
//! each way, were then a third of what was left, and are done per pixel here. The sums are the
//! same; they are added in another order (per image in f64), so they differ in the last bits.

mod pairs;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use self::pairs::{Image, image_gradients, image_sums};
use super::softmax::ClassDistribution;
use super::{flex_vec, values_4d};

/// Which pairs the loss compares, its hinge, and the floor of the student's probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityPairs {
    /// Each dilation d gives the 8 neighbours at (±d or 0, ±d or 0).
    pub dilations: Vec<usize>,
    /// The hinge on pairs of different classes: max(0, margin − w).
    pub margin: f32,
    /// The student's probabilities are clamped to [floor, 1] before the logarithm; below the
    /// floor no gradient passes, as through Burn's `clamp`.
    pub probability_floor: f32,
}

/// The 8 compass neighbours at dilation `d`, as (row, column) offsets: the affinity loss's pairs
/// here and in its form out of Burn's operations (`relkd-runs`' `losses::affinity`).
pub fn neighbour_offsets(d: usize) -> [(isize, isize); 8] {
    let d = d as isize;
    [(-d, -d), (-d, 0), (-d, d), (0, -d), (0, d), (d, -d), (d, 0), (d, d)]
}

impl AffinityPairs {
    fn offsets(&self) -> Vec<(isize, isize)> {
        self.dilations.iter().flat_map(|&d| neighbour_offsets(d)).collect()
    }
}

/// With p = clamp(softmax(logits), floor, 1) over the classes (`logits` `[b, k, h, w]`), for each
/// pixel i and neighbour j = i + offset inside the image, with w = Σ_k p_ik (log p_ik − log p_jk)
/// (the student's divergence between the two pixels) and the teacher's classes c_i, c_j
/// (`labels`, as floats) weighted by m_i·m_j (`mask`, `[b, 1, h, w]`, all ones when ungated):
/// `[pos_sum (k), neg_sum, pos_count (k), neg_count]`, where pairs of the same class add w to
/// pos_sum[c_i] and 1 to pos_count[c_i], and pairs of different classes add max(0, margin − w)
/// to neg_sum and 1 to neg_count. The counts are constants (their gradient is dropped).
pub fn affinity_sums(logits: Tensor<4>, labels: Tensor<4>, mask: Tensor<4>, pairs: &AffinityPairs) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as AffinityOps>::affinity_sums(
        logits.into_dispatch(),
        labels.into_dispatch(),
        mask.into_dispatch(),
        pairs.clone(),
    ))
}

/// The backend operations behind [`affinity_sums`].
#[backend_extension(Flex, Autodiff)]
pub trait AffinityOps: Backend {
    fn affinity_sums(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
    ) -> FloatTensor<Self>;

    /// The gradient of [`Self::affinity_sums`] with respect to `logits`, given the gradient of
    /// its output.
    fn affinity_sums_backward(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The inputs as contiguous values, image by image.
struct Pixels {
    logits: Vec<f32>,
    labels: Vec<f32>,
    mask: Vec<f32>,
    shape: [usize; 4],
}

impl Pixels {
    fn of(logits: &FlexTensor, labels: &FlexTensor, mask: &FlexTensor) -> Self {
        let shape: [usize; 4] = logits.shape().dims();
        Self { logits: values_4d(logits), labels: values_4d(labels), mask: values_4d(mask), shape }
    }

    /// Image `b`'s logits (`[k, h·w]`), and its teacher classes and mask (`[h·w]` each).
    fn image(&self, b: usize) -> (&[f32], &[f32], &[f32]) {
        let [_, k, h, w] = self.shape;
        let plane = h * w;
        (
            &self.logits[b * k * plane..][..k * plane],
            &self.labels[b * plane..][..plane],
            &self.mask[b * plane..][..plane],
        )
    }
}

/// One image's student probabilities, `[k, h·w]` each: the softmax (`raw`), clamped to the floor
/// (`p`), and the clamped logarithm (`log_p`).
struct Probabilities {
    raw: Vec<f32>,
    p: Vec<f32>,
    log_p: Vec<f32>,
}

impl Probabilities {
    /// The softmax, clamped, and its logarithm clamped at ln(floor): the same as
    /// ln(clamp(p)) with one logarithm a pixel instead of one a class.
    fn of(logits: &[f32], k: usize, floor: f32) -> Self {
        let ClassDistribution { p: raw, log_p } = ClassDistribution::of(logits, k, 1.0);
        let p = raw.iter().map(|&r| r.max(floor)).collect();
        let log_floor = floor.ln();
        let log_p = log_p.into_iter().map(|l| l.max(log_floor)).collect();
        Self { raw, p, log_p }
    }

    /// The gradient with respect to the logits, given those with respect to `p` and `log_p`.
    /// Where the softmax is above the floor, p_c = s_c and log p_c = z_c − log Σ e^z, so with
    /// a_c = ∂L/∂p_c · s_c + ∂L/∂log p_c (0 where clamped), ∂L/∂z_j = a_j − s_j Σ_c a_c.
    fn logits_gradient(&self, p_grad: &[f32], log_p_grad: &[f32], k: usize, floor: f32, out: &mut [f32]) {
        let plane = out.len() / k;
        for ((a, (&s, &gp)), &glp) in out.iter_mut().zip(self.raw.iter().zip(p_grad)).zip(log_p_grad) {
            *a = pairs::flag(s >= floor) * (gp * s + glp);
        }
        let mut total = vec![0f32; plane];
        for c in 0..k {
            for (t, &a) in total.iter_mut().zip(&out[c * plane..][..plane]) {
                *t += a;
            }
        }
        for c in 0..k {
            let (out, raw) = (&mut out[c * plane..][..plane], &self.raw[c * plane..][..plane]);
            for ((a, &s), &t) in out.iter_mut().zip(raw).zip(&total) {
                *a -= s * t;
            }
        }
    }
}

impl AffinityOps for Flex {
    fn affinity_sums(logits: FlexTensor, labels: FlexTensor, mask: FlexTensor, pairs: AffinityPairs) -> FlexTensor {
        let px = Pixels::of(&logits, &labels, &mask);
        let [b, k, h, w] = px.shape;
        let (offsets, margin) = (pairs.offsets(), pairs.margin);
        let per_image: Vec<Vec<f64>> = (0..b)
            .into_par_iter()
            .map(|b| {
                let (logits, classes, mask) = px.image(b);
                let probabilities = Probabilities::of(logits, k, pairs.probability_floor);
                let (p, log_p) = (&probabilities.p, &probabilities.log_p);
                image_sums(&Image { p, log_p, classes, mask, shape: [k, h, w] }, &offsets, margin)
            })
            .collect();
        let total =
            per_image.iter().fold(vec![0f64; 2 * k + 2], |acc, s| acc.iter().zip(s).map(|(a, b)| a + b).collect());
        flex_vec(total.into_iter().map(|v| v as f32).collect(), [2 * k + 2].into())
    }

    fn affinity_sums_backward(
        logits: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        pairs: AffinityPairs,
        output_grad: FlexTensor,
    ) -> FlexTensor {
        let px = Pixels::of(&logits, &labels, &mask);
        let [_, k, h, w] = px.shape;
        let upstream = output_grad.to_contiguous().storage::<f32>().to_vec();
        let (offsets, margin, floor) = (pairs.offsets(), pairs.margin, pairs.probability_floor);
        let mut logits_grad = vec![0f32; px.logits.len()];
        logits_grad.par_chunks_mut(k * h * w).enumerate().for_each(|(b, logits_grad)| {
            let (logits, classes, mask) = px.image(b);
            let probabilities = Probabilities::of(logits, k, floor);
            let (p, log_p) = (&probabilities.p, &probabilities.log_p);
            let image = Image { p, log_p, classes, mask, shape: [k, h, w] };
            let (mut p_grad, mut log_p_grad) = (vec![0f32; k * h * w], vec![0f32; k * h * w]);
            image_gradients(&image, &offsets, margin, &upstream, &mut p_grad, &mut log_p_grad);
            probabilities.logits_gradient(&p_grad, &log_p_grad, k, floor, logits_grad);
        });
        flex_vec(logits_grad, logits.shape())
    }
}

/// The node: the logits are its parent; the teacher's classes and the mask are constants kept
/// with it. The probabilities are recomputed backward (a few exponentials a pixel) rather than
/// kept.
#[derive(Debug)]
struct AffinitySums;

impl<B: AffinityOps> Backward<B, 1> for AffinitySums {
    type State = (NodeId, FloatTensor<B>, FloatTensor<B>, AffinityPairs);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (logits, labels, mask, pairs) = ops.state;
        let logits = checkpointer.retrieve_node_output::<FloatTensor<B>>(logits);
        if let [Some(node)] = &ops.parents {
            grads.register::<B>(node.id, B::affinity_sums_backward(logits, labels, mask, pairs, grad));
        }
    }
}

impl<B: AffinityOps, C: CheckpointStrategy> AffinityOps for Autodiff<B, C> {
    fn affinity_sums(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
    ) -> FloatTensor<Self> {
        let (labels, mask) = (labels.into_primitive(), mask.into_primitive());
        match AffinitySums.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&logits), labels.clone(), mask.clone(), pairs.clone());
                prep.finish(state, B::affinity_sums(logits.into_primitive(), labels, mask, pairs))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::affinity_sums(logits.into_primitive(), labels, mask, pairs)),
        }
    }

    /// The gradient as a constant (the node above differentiates the forward only once).
    fn affinity_sums_backward(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::affinity_sums_backward(
            logits.into_primitive(),
            labels.into_primitive(),
            mask.into_primitive(),
            pairs,
            output_grad.into_primitive(),
        ))
    }
}

/// A small deterministic stream of uniform floats in [0, 1) (xorshift), for test inputs.
#[cfg(test)]
struct Uniform(u64);

#[cfg(test)]
impl Uniform {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::softmax;
    use burn::tensor::{Device, TensorData, Tolerance};

    use super::*;

    /// The probabilities and the gradient back to the logits against Burn's softmax, clamp and
    /// log differentiated by its autodiff, for given gradients of p and log p; the logits are
    /// spread wide enough that some probabilities fall below the floor.
    #[test]
    fn the_per_pixel_softmax_clamp_and_log_equal_burns() {
        let (k, plane, floor) = (3, 200, 1e-4f32);
        let mut rng = Uniform(0x2545_f491_4f6c_dd1d);
        let mut draw = |scale: f32| -> Vec<f32> { (0..k * plane).map(|_| scale * (2.0 * rng.next() - 1.0)).collect() };
        let (logits, p_grad, log_p_grad) = (draw(14.0), draw(1.0), draw(1.0));
        let ours = Probabilities::of(&logits, k, floor);
        let mut gradient = vec![0f32; k * plane];
        ours.logits_gradient(&p_grad, &log_p_grad, k, floor, &mut gradient);
        assert!(ours.raw.iter().any(|&s| s < floor), "some probabilities clamped");

        let device = Device::flex().autodiff();
        let tensor = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [k, plane]), &device);
        let z = tensor(&logits).require_grad();
        let p = softmax(z.clone(), 0).clamp(f64::from(floor), 1.0);
        let log_p = p.clone().log();
        let values = |t: Tensor<2>| t.into_data();
        let tolerance = Tolerance::relative(1e-5).set_absolute(1e-6);
        values(p.clone()).assert_approx_eq::<f32>(&TensorData::new(ours.p.clone(), [k, plane]), tolerance);
        values(log_p.clone()).assert_approx_eq::<f32>(&TensorData::new(ours.log_p.clone(), [k, plane]), tolerance);
        let objective = (p * tensor(&p_grad)).sum() + (log_p * tensor(&log_p_grad)).sum();
        let grads = objective.backward();
        let want = z.grad(&grads).expect("the logits' gradient").into_data();
        TensorData::new(gradient, [k, plane]).assert_approx_eq::<f32>(&want, tolerance);
    }
}
