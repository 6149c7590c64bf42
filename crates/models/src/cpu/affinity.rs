//! The affinity loss's pair sums (AAM, `relkd-runs`' `losses::affinity`) as one operation on the
//! CPU backend (flex): one pass over the pixel pairs forward and one backward.
//!
//! Written out of Burn's operations the loss slices, compares and sums once per neighbour
//! offset (24 at dilations 1, 2, 3), about thirty small operations each way per offset, and
//! cost about as much as the student's own training step (issue #32). The sums are the same;
//! they are added in another order (per image in f64), so they differ in the last bits.
//!
//! Both passes go through an offset's pairs a row at a time, each step a branch-free loop over
//! the row that the compiler vectorises (a pair-by-pair loop with a branch per pair cost 5 to
//! 8 ns a pair where the teacher's classes alternate). The gradients are added to each pixel in
//! the order of a pair-by-pair loop, so they are the same bit for bit (tested below).

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

use super::{flex_vec, lane_sum, values_4d};

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

/// One row of one offset's pairs: pixels `i..i + n` of a row and their neighbours `j..j + n`
/// (plane indices).
#[derive(Clone, Copy)]
struct RowPairs {
    i: usize,
    j: usize,
    n: usize,
}

/// The pairs (i, j = i + offset) that stay inside an `h × w` plane, a row at a time. The pair
/// loops run over these rows so that their inner loops are contiguous and vectorise.
fn row_pairs(h: usize, w: usize, (dy, dx): (isize, isize)) -> impl Iterator<Item = RowPairs> {
    let (h, w) = (h as isize, w as isize);
    let rows = 0.max(-dy)..(h - dy).clamp(0, h);
    let (x0, x1) = (0.max(-dx), (w - dx).clamp(0, w));
    rows.filter(move |_| x1 > x0).map(move |y| RowPairs {
        i: (y * w + x0) as usize,
        j: ((y + dy) * w + x0 + dx) as usize,
        n: (x1 - x0) as usize,
    })
}

impl Pixels {
    fn of(p: &FlexTensor, log_p: &FlexTensor, labels: &FlexTensor, mask: &FlexTensor) -> Self {
        let shape: [usize; 4] = p.shape().dims();
        Self { p: values_4d(p), log_p: values_4d(log_p), labels: values_4d(labels), mask: values_4d(mask), shape }
    }

    fn plane(&self) -> usize {
        self.shape[2] * self.shape[3]
    }

    /// Image `b`'s probabilities and log-probabilities, `[k, h·w]` each.
    fn probabilities(&self, b: usize) -> (&[f32], &[f32]) {
        let len = self.shape[1] * self.plane();
        (&self.p[b * len..][..len], &self.log_p[b * len..][..len])
    }

    /// Image `b`'s teacher classes and mask, `[h·w]` each.
    fn classes_and_mask(&self, b: usize) -> (&[f32], &[f32]) {
        let plane = self.plane();
        (&self.labels[b * plane..][..plane], &self.mask[b * plane..][..plane])
    }

    /// w = Σ_k p_ik (log p_ik − log p_jk) for each pair of `row` of image `b`, into `out[..n]`.
    fn divergences(&self, b: usize, row: RowPairs, out: &mut [f32]) {
        let (p, log_p) = self.probabilities(b);
        let plane = self.plane();
        let out = &mut out[..row.n];
        out.fill(0.0);
        for c in 0..self.shape[1] {
            let p_i = &p[c * plane + row.i..][..row.n];
            let (log_i, log_j) = (&log_p[c * plane + row.i..][..row.n], &log_p[c * plane + row.j..][..row.n]);
            for x in 0..row.n {
                out[x] += p_i[x] * (log_i[x] - log_j[x]);
            }
        }
    }
}

/// `out[x] = f(a[x], b[x])` over the row: the elementwise steps of the pair loops.
fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

/// 1 where `condition` holds, else 0: a branch-free flag.
fn flag(condition: bool) -> f32 {
    f32::from(u8::from(condition))
}

/// The pair sums of image `image`, `[pos_sum (k), neg_sum, pos_count (k), neg_count]`.
fn image_sums(px: &Pixels, image: usize, offsets: &[(isize, isize)], margin: f32) -> Vec<f64> {
    let [_, k, h, w] = px.shape;
    let (classes, mask) = px.classes_and_mask(image);
    // Per row, each sum in f32 lanes (at most w terms), then added up in f64.
    let mut sums = vec![0f64; 2 * k + 2];
    let [mut divergence, mut weight, mut weighted, mut hinge, mut flags] = [(); 5].map(|_| vec![0f32; w]);
    for &offset in offsets {
        for row in row_pairs(h, w, offset) {
            let n = row.n;
            px.divergences(image, row, &mut divergence);
            let (class_i, class_j) = (&classes[row.i..][..n], &classes[row.j..][..n]);
            map2(&mut weight[..n], &mask[row.i..][..n], &mask[row.j..][..n], |a, b| a * b);
            map2(&mut weighted[..n], &weight[..n], &divergence[..n], |m, d| m * d);
            map2(&mut hinge[..n], &weight[..n], &divergence[..n], |m, d| m * (margin - d).max(0.0));
            map2(&mut flags[..n], class_i, class_j, |a, b| flag(a != b));
            let product = |a: f32, b: f32| a * b;
            sums[k] += lane_sum(&flags[..n], &hinge[..n], product);
            sums[2 * k + 1] += lane_sum(&flags[..n], &weight[..n], product);
            for class in 0..k {
                let c = class as f32;
                map2(&mut flags[..n], class_i, class_j, |a, b| flag((a == c) & (b == c)));
                sums[class] += lane_sum(&flags[..n], &weighted[..n], product);
                sums[k + 1 + class] += lane_sum(&flags[..n], &weight[..n], product);
            }
        }
    }
    sums
}

/// Adds image `image`'s gradients with respect to `p` and `log_p` (`[k, h·w]` each) for the
/// output gradient `upstream`.
fn image_gradients(
    px: &Pixels,
    image: usize,
    offsets: &[(isize, isize)],
    margin: f32,
    upstream: &[f32],
    p_grad: &mut [f32],
    log_p_grad: &mut [f32],
) {
    let [_, k, h, w] = px.shape;
    let plane = h * w;
    let negative_grad = -upstream[k];
    let (p, log_p) = px.probabilities(image);
    let (classes, mask) = px.classes_and_mask(image);
    let [mut divergence, mut weight, mut g] = [(); 3].map(|_| vec![0f32; w]);
    for &(dy, dx) in offsets {
        for row in row_pairs(h, w, (dy, dx)) {
            px.divergences(image, row, &mut divergence);
            // d(output)/dw for each pair: its class's pos_sum, or the hinge where active
            // (branch-free: flags select the one term that applies).
            let n = row.n;
            let (class_i, class_j) = (&classes[row.i..][..n], &classes[row.j..][..n]);
            map2(&mut weight[..n], &mask[row.i..][..n], &mask[row.j..][..n], |a, b| a * b);
            for (((g, &a), &b), &d) in g[..n].iter_mut().zip(class_i).zip(class_j).zip(&divergence[..n]) {
                *g = flag(a != b) * negative_grad * flag(margin - d > 0.0);
            }
            for (class, &up) in upstream[..k].iter().enumerate() {
                let c = class as f32;
                for ((g, &a), &b) in g[..n].iter_mut().zip(class_i).zip(class_j) {
                    *g += flag((a == c) & (b == c)) * up;
                }
            }
            for (g, &m) in g[..n].iter_mut().zip(&weight[..n]) {
                *g *= m;
            }
            let g = &g[..n];
            for c in 0..k {
                let (ci, cj) = (c * plane + row.i, c * plane + row.j);
                let (p_i, log_i, log_j) = (&p[ci..][..n], &log_p[ci..][..n], &log_p[cj..][..n]);
                for (((grad, &g), &log_i), &log_j) in p_grad[ci..][..n].iter_mut().zip(g).zip(log_i).zip(log_j) {
                    *grad += g * (log_i - log_j);
                }
                // A pixel is i of one pair and j of another in the same row when the
                // offset is horizontal; its two updates keep the order of a pair-by-pair
                // loop (the j update first where dx > 0), so the sums are the same.
                let add_i = |log_p_grad: &mut [f32]| {
                    for ((grad, &g), &p_i) in log_p_grad[ci..][..n].iter_mut().zip(g).zip(p_i) {
                        *grad += g * p_i;
                    }
                };
                let sub_j = |log_p_grad: &mut [f32]| {
                    for ((grad, &g), &p_i) in log_p_grad[cj..][..n].iter_mut().zip(g).zip(p_i) {
                        *grad -= g * p_i;
                    }
                };
                if dy == 0 && dx > 0 {
                    sub_j(log_p_grad);
                    add_i(log_p_grad);
                } else {
                    add_i(log_p_grad);
                    sub_j(log_p_grad);
                }
            }
        }
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
        let (offsets, margin) = (pairs.offsets(), pairs.margin);
        let per_image: Vec<Vec<f64>> =
            (0..b).into_par_iter().map(|image| image_sums(&px, image, &offsets, margin)).collect();
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
        let margin = pairs.margin;
        let mut p_grad = vec![0f32; px.p.len()];
        let mut log_p_grad = vec![0f32; px.p.len()];
        p_grad.par_chunks_mut(k * plane).zip(log_p_grad.par_chunks_mut(k * plane)).enumerate().for_each(
            |(image, (p_grad, log_p_grad))| {
                image_gradients(&px, image, &offsets, margin, &upstream, p_grad, log_p_grad)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic stream of uniform floats in [0, 1) (xorshift), for test inputs.
    struct Uniform(u64);

    impl Uniform {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// The gradients as a plain loop over the pairs computes them, one pair after another.
    fn pair_by_pair_gradients(px: &Pixels, pairs: &AffinityPairs, upstream: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let [b, k, h, w] = px.shape;
        let plane = h * w;
        let (mut p_grad, mut log_p_grad) = (vec![0f32; px.p.len()], vec![0f32; px.p.len()]);
        for image in 0..b {
            let (p, log_p) = px.probabilities(image);
            let (classes, mask) = px.classes_and_mask(image);
            let base = image * k * plane;
            for &(dy, dx) in &pairs.offsets() {
                for y in 0..h as isize {
                    for x in 0..w as isize {
                        let (jy, jx) = (y + dy, x + dx);
                        if jy < 0 || jx < 0 || jy >= h as isize || jx >= w as isize {
                            continue;
                        }
                        let (i, j) = ((y * w as isize + x) as usize, (jy * w as isize + jx) as usize);
                        let weight = mask[i] * mask[j];
                        let divergence: f32 =
                            (0..k).map(|c| p[c * plane + i] * (log_p[c * plane + i] - log_p[c * plane + j])).sum();
                        let g = if classes[i] == classes[j] {
                            upstream[classes[i] as usize] * weight
                        } else if pairs.margin - divergence > 0.0 {
                            -upstream[k] * weight
                        } else {
                            continue;
                        };
                        for c in 0..k {
                            let (ci, cj) = (c * plane + i, c * plane + j);
                            p_grad[base + ci] += g * (log_p[ci] - log_p[cj]);
                            log_p_grad[base + ci] += g * p[ci];
                            log_p_grad[base + cj] -= g * p[ci];
                        }
                    }
                }
            }
        }
        (p_grad, log_p_grad)
    }

    #[test]
    fn the_row_loops_give_the_pair_by_pair_gradients_bit_for_bit() {
        let mut rng = Uniform(0x9e37_79b9_7f4a_7c15);
        let pairs = AffinityPairs { dilations: vec![1, 2, 3], margin: 3.0 };
        for [b, k, h, w] in [[2, 2, 17, 23], [1, 3, 9, 8]] {
            let plane = h * w;
            // Probabilities from random logits; classes and a gate drawn per pixel.
            let mut p = vec![0f32; b * k * plane];
            for image in 0..b {
                for i in 0..plane {
                    let logits: Vec<f32> = (0..k).map(|_| 8.0 * rng.next() - 4.0).collect();
                    let total: f32 = logits.iter().map(|z| z.exp()).sum();
                    for c in 0..k {
                        p[(image * k + c) * plane + i] = (logits[c].exp() / total).clamp(1e-4, 1.0);
                    }
                }
            }
            let log_p: Vec<f32> = p.iter().map(|v| v.ln()).collect();
            let labels: Vec<f32> = (0..b * plane).map(|_| (rng.next() * k as f32).floor()).collect();
            let mask: Vec<f32> = (0..b * plane).map(|_| flag(rng.next() < 0.8)).collect();
            let upstream: Vec<f32> = (0..2 * k + 2).map(|_| 2.0 * rng.next() - 1.0).collect();
            let tensor = |values: &[f32], channels: usize| flex_vec(values.to_vec(), [b, channels, h, w].into());
            let (p_t, log_p_t) = (tensor(&p, k), tensor(&log_p, k));
            let (labels_t, mask_t) = (tensor(&labels, 1), tensor(&mask, 1));
            let (p_grad, log_p_grad) = Flex::affinity_sums_backward(
                p_t.clone(),
                log_p_t.clone(),
                labels_t.clone(),
                mask_t.clone(),
                pairs.clone(),
                flex_vec(upstream.clone(), [2 * k + 2].into()),
            );
            let px = Pixels::of(&p_t, &log_p_t, &labels_t, &mask_t);
            let (want_p, want_log_p) = pair_by_pair_gradients(&px, &pairs, &upstream);
            assert_eq!(p_grad.storage::<f32>(), &want_p[..], "p's gradient, {b}×{k}×{h}×{w}");
            assert_eq!(log_p_grad.storage::<f32>(), &want_log_p[..], "log p's gradient, {b}×{k}×{h}×{w}");
            assert!(want_log_p.iter().any(|&g| g != 0.0));
        }
    }
}
