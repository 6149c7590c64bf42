//! The affinity loss's pair sums (AAM, `relkd-runs`' `losses::affinity`) as one operation on the
//! CPU backend (flex): one pass over the pixel pairs forward and one backward.
//!
//! Written out of Burn's operations the loss slices, compares and sums once per neighbour
//! offset (24 at dilations 1, 2, 3), about thirty small operations each way per offset, and
//! cost about as much as the student's own training step (issue #32). The sums are the same;
//! they are added in another order (per image in f64), so they differ in the last bits.

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

use super::flex_vec;

/// Which pairs the loss compares, and its hinge.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityPairs {
    /// Each dilation d gives the 8 neighbours at (±d or 0, ±d or 0).
    pub dilations: Vec<usize>,
    /// The hinge on pairs of different classes: max(0, margin − w).
    pub margin: f32,
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

/// For each pixel i and neighbour j = i + offset inside the image, with w = Σ_k p_ik (log p_ik −
/// log p_jk) (the student's divergence between the two pixels) and the teacher's classes c_i, c_j
/// (`labels`, as floats) weighted by m_i·m_j (`mask`, `[b, 1, h, w]`, all ones when ungated):
/// `[pos_sum (k), neg_sum, pos_count (k), neg_count]`, where pairs of the same class add w to
/// pos_sum[c_i] and 1 to pos_count[c_i], and pairs of different classes add max(0, margin − w)
/// to neg_sum and 1 to neg_count. The counts are constants (their gradient is dropped).
/// `p` and `log_p` are `[b, k, h, w]`.
pub fn affinity_sums(
    p: Tensor<4>,
    log_p: Tensor<4>,
    labels: Tensor<4>,
    mask: Tensor<4>,
    pairs: &AffinityPairs,
) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as AffinityOps>::affinity_sums(
        p.into_dispatch(),
        log_p.into_dispatch(),
        labels.into_dispatch(),
        mask.into_dispatch(),
        pairs.clone(),
    ))
}

/// The backend operations behind [`affinity_sums`].
#[backend_extension(Flex, Autodiff)]
pub trait AffinityOps: Backend {
    fn affinity_sums(
        p: FloatTensor<Self>,
        log_p: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
    ) -> FloatTensor<Self>;

    /// The gradients of [`Self::affinity_sums`] with respect to `p` and `log_p`, given the
    /// gradient of its output.
    fn affinity_sums_backward(
        p: FloatTensor<Self>,
        log_p: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The inputs as contiguous values, image by image.
struct Pixels {
    p: Vec<f32>,
    log_p: Vec<f32>,
    labels: Vec<f32>,
    mask: Vec<f32>,
    shape: [usize; 4],
}

impl Pixels {
    fn of(p: &FlexTensor, log_p: &FlexTensor, labels: &FlexTensor, mask: &FlexTensor) -> Self {
        let values = |t: &FlexTensor| t.to_contiguous().storage::<f32>().to_vec();
        let shape: [usize; 4] = p.shape().dims();
        Self { p: values(p), log_p: values(log_p), labels: values(labels), mask: values(mask), shape }
    }

    /// Calls `pair(i, j, same_class, weight)` for every pair of image `b` that the mask keeps,
    /// with pixel indices within the image's plane; `same_class` is pixel i's class where j has
    /// it too (P+), None where the two differ (P−).
    fn pairs(&self, b: usize, offsets: &[(isize, isize)], mut pair: impl FnMut(usize, usize, Option<usize>, f32)) {
        let [_, _, h, w] = self.shape;
        let plane = h * w;
        let (labels, mask) = (&self.labels[b * plane..][..plane], &self.mask[b * plane..][..plane]);
        for &(dy, dx) in offsets {
            let rows = (0.max(-dy) as usize)..((h as isize).min(h as isize - dy).max(0) as usize);
            let cols = (0.max(-dx) as usize)..((w as isize).min(w as isize - dx).max(0) as usize);
            for y in rows {
                let jy = (y as isize + dy) as usize;
                for x in cols.clone() {
                    let (i, j) = (y * w + x, jy * w + (x as isize + dx) as usize);
                    let weight = mask[i] * mask[j];
                    if weight != 0.0 {
                        pair(i, j, (labels[i] == labels[j]).then_some(labels[i] as usize), weight);
                    }
                }
            }
        }
    }

    /// w = Σ_k p_ik (log p_ik − log p_jk) for pixels i, j of image `b`.
    fn divergence(&self, b: usize, i: usize, j: usize) -> f32 {
        let [_, k, h, w] = self.shape;
        let plane = h * w;
        let (p, log_p) = (&self.p[b * k * plane..][..k * plane], &self.log_p[b * k * plane..][..k * plane]);
        (0..k).map(|c| p[c * plane + i] * (log_p[c * plane + i] - log_p[c * plane + j])).sum()
    }
}

impl AffinityOps for Flex {
    fn affinity_sums(
        p: FlexTensor,
        log_p: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        pairs: AffinityPairs,
    ) -> FlexTensor {
        let px = Pixels::of(&p, &log_p, &labels, &mask);
        let [b, k, _, _] = px.shape;
        let offsets = pairs.offsets();
        let per_image: Vec<Vec<f64>> = (0..b)
            .into_par_iter()
            .map(|image| {
                let mut sums = vec![0f64; 2 * k + 2];
                px.pairs(image, &offsets, |i, j, same_class, weight| {
                    let divergence = px.divergence(image, i, j);
                    match same_class {
                        Some(class) => {
                            sums[class] += f64::from(weight * divergence);
                            sums[k + 1 + class] += f64::from(weight);
                        }
                        None => {
                            sums[k] += f64::from(weight * (pairs.margin - divergence).max(0.0));
                            sums[2 * k + 1] += f64::from(weight);
                        }
                    }
                });
                sums
            })
            .collect();
        let total =
            per_image.iter().fold(vec![0f64; 2 * k + 2], |acc, s| acc.iter().zip(s).map(|(a, b)| a + b).collect());
        flex_vec(total.into_iter().map(|v| v as f32).collect(), [2 * k + 2].into())
    }

    fn affinity_sums_backward(
        p: FlexTensor,
        log_p: FlexTensor,
        labels: FlexTensor,
        mask: FlexTensor,
        pairs: AffinityPairs,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let px = Pixels::of(&p, &log_p, &labels, &mask);
        let [_, k, h, w] = px.shape;
        let plane = h * w;
        let upstream = output_grad.to_contiguous().storage::<f32>().to_vec();
        let offsets = pairs.offsets();
        let mut p_grad = vec![0f32; px.p.len()];
        let mut log_p_grad = vec![0f32; px.p.len()];
        p_grad.par_chunks_mut(k * plane).zip(log_p_grad.par_chunks_mut(k * plane)).enumerate().for_each(
            |(image, (p_grad, log_p_grad))| {
                let (p, log_p) = (&px.p[image * k * plane..][..k * plane], &px.log_p[image * k * plane..][..k * plane]);
                px.pairs(image, &offsets, |i, j, same_class, weight| {
                    // d(output)/dw for this pair: its class's pos_sum, or the hinge where active.
                    let g = match same_class {
                        Some(class) => upstream[class] * weight,
                        None if pairs.margin - px.divergence(image, i, j) > 0.0 => -upstream[k] * weight,
                        None => return,
                    };
                    for c in 0..k {
                        let (ci, cj) = (c * plane + i, c * plane + j);
                        p_grad[ci] += g * (log_p[ci] - log_p[cj]);
                        log_p_grad[ci] += g * p[ci];
                        log_p_grad[cj] -= g * p[ci];
                    }
                });
            },
        );
        (flex_vec(p_grad, p.shape()), flex_vec(log_p_grad, log_p.shape()))
    }
}

/// The node: `p` and `log_p` are its parents; the teacher's classes and the mask are constants
/// kept with it.
#[derive(Debug)]
struct AffinitySums;

impl<B: AffinityOps> Backward<B, 2> for AffinitySums {
    type State = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, AffinityPairs);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (p, log_p, labels, mask, pairs) = ops.state;
        let p = checkpointer.retrieve_node_output::<FloatTensor<B>>(p);
        let log_p = checkpointer.retrieve_node_output::<FloatTensor<B>>(log_p);
        let (p_grad, log_p_grad) = B::affinity_sums_backward(p, log_p, labels, mask, pairs, grad);
        for (node, grad) in ops.parents.iter().zip([p_grad, log_p_grad]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: AffinityOps, C: CheckpointStrategy> AffinityOps for Autodiff<B, C> {
    fn affinity_sums(
        p: FloatTensor<Self>,
        log_p: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
    ) -> FloatTensor<Self> {
        let (labels, mask) = (labels.into_primitive(), mask.into_primitive());
        match AffinitySums.prepare::<C>([p.node(), log_p.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&p), prep.checkpoint(&log_p), labels.clone(), mask.clone(), pairs.clone());
                prep.finish(state, B::affinity_sums(p.into_primitive(), log_p.into_primitive(), labels, mask, pairs))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::affinity_sums(p.into_primitive(), log_p.into_primitive(), labels, mask, pairs))
            }
        }
    }

    /// The gradients as constants (the node above differentiates the forward only once).
    fn affinity_sums_backward(
        p: FloatTensor<Self>,
        log_p: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        pairs: AffinityPairs,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (p_grad, log_p_grad) = B::affinity_sums_backward(
            p.into_primitive(),
            log_p.into_primitive(),
            labels.into_primitive(),
            mask.into_primitive(),
            pairs,
            output_grad.into_primitive(),
        );
        (FloatTensor::<Self>::new(p_grad), FloatTensor::<Self>::new(log_p_grad))
    }
}
