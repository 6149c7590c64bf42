//! The affinity loss's passes over one image's pixel pairs, forward and backward.
//!
//! Both go through an offset's pairs a row at a time, each step a branch-free loop over the
//! row that the compiler vectorises (a pair-by-pair loop with a branch per pair cost 5 to 8 ns
//! a pair where the teacher's classes alternate). The gradients are added to each pixel in the
//! order of a pair-by-pair loop, so they are the same bit for bit (tested below).

use super::super::lane_sum;

/// One image's inputs to the pair passes: the student's (clamped) probabilities and their
/// logarithms, `[k, h·w]` each; the teacher's classes (as floats) and the gate, `[h·w]` each.
pub(super) struct Image<'a> {
    pub p: &'a [f32],
    pub log_p: &'a [f32],
    pub classes: &'a [f32],
    pub mask: &'a [f32],
    /// `[k, h, w]`.
    pub shape: [usize; 3],
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

impl Image<'_> {
    fn plane(&self) -> usize {
        self.shape[1] * self.shape[2]
    }

    /// w = Σ_k p_ik (log p_ik − log p_jk) for each pair of `row`, into `out[..n]`.
    fn divergences(&self, row: RowPairs, out: &mut [f32]) {
        let plane = self.plane();
        let out = &mut out[..row.n];
        out.fill(0.0);
        for c in 0..self.shape[0] {
            let p_i = &self.p[c * plane + row.i..][..row.n];
            let (log_i, log_j) = (&self.log_p[c * plane + row.i..][..row.n], &self.log_p[c * plane + row.j..][..row.n]);
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
pub(super) fn flag(condition: bool) -> f32 {
    f32::from(u8::from(condition))
}

/// The image's pair sums, `[pos_sum (k), neg_sum, pos_count (k), neg_count]`.
pub(super) fn image_sums(image: &Image, offsets: &[(isize, isize)], margin: f32) -> Vec<f64> {
    let [k, h, w] = image.shape;
    let (classes, mask) = (image.classes, image.mask);
    // Per row, each sum in f32 lanes (at most w terms), then added up in f64.
    let mut sums = vec![0f64; 2 * k + 2];
    let [mut divergence, mut weight, mut weighted, mut hinge, mut flags] = [(); 5].map(|_| vec![0f32; w]);
    for &offset in offsets {
        for row in row_pairs(h, w, offset) {
            let n = row.n;
            image.divergences(row, &mut divergence);
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

/// Adds the image's gradients with respect to `p` and `log_p` (`[k, h·w]` each) for the output
/// gradient `upstream`.
pub(super) fn image_gradients(
    image: &Image,
    offsets: &[(isize, isize)],
    margin: f32,
    upstream: &[f32],
    p_grad: &mut [f32],
    log_p_grad: &mut [f32],
) {
    let [k, h, w] = image.shape;
    let plane = h * w;
    let negative_grad = -upstream[k];
    let (p, log_p, classes, mask) = (image.p, image.log_p, image.classes, image.mask);
    let [mut divergence, mut weight, mut g] = [(); 3].map(|_| vec![0f32; w]);
    for &(dy, dx) in offsets {
        for row in row_pairs(h, w, (dy, dx)) {
            image.divergences(row, &mut divergence);
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

#[cfg(test)]
mod tests {
    use super::super::{AffinityPairs, Uniform};
    use super::*;

    /// Every pair (i, j = i + offset) inside an `h × w` plane as plane indices, offset by offset,
    /// then row by row: the order of a plain loop over the pairs.
    fn pairs_inside(h: usize, w: usize, pairs: &AffinityPairs) -> impl Iterator<Item = (usize, usize)> {
        let (h, w) = (h as isize, w as isize);
        pairs.offsets().into_iter().flat_map(move |(dy, dx)| {
            (0..h).flat_map(move |y| (0..w).map(move |x| (y, x))).filter_map(move |(y, x)| {
                let (jy, jx) = (y + dy, x + dx);
                let inside = (0..h).contains(&jy) && (0..w).contains(&jx);
                inside.then(|| ((y * w + x) as usize, (jy * w + jx) as usize))
            })
        })
    }

    /// The gradients as a plain loop over the pairs computes them, one pair after another.
    fn pair_by_pair_gradients(image: &Image, pairs: &AffinityPairs, upstream: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let [k, h, w] = image.shape;
        let plane = h * w;
        let (p, log_p, classes, mask) = (image.p, image.log_p, image.classes, image.mask);
        let (mut p_grad, mut log_p_grad) = (vec![0f32; p.len()], vec![0f32; p.len()]);
        for (i, j) in pairs_inside(h, w, pairs) {
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
                p_grad[ci] += g * (log_p[ci] - log_p[cj]);
                log_p_grad[ci] += g * p[ci];
                log_p_grad[cj] -= g * p[ci];
            }
        }
        (p_grad, log_p_grad)
    }

    /// The sums as a plain loop over the pairs computes them, in f64.
    fn pair_by_pair_sums(image: &Image, pairs: &AffinityPairs) -> Vec<f64> {
        let [k, h, w] = image.shape;
        let plane = h * w;
        let mut sums = vec![0f64; 2 * k + 2];
        for (i, j) in pairs_inside(h, w, pairs) {
            let weight = f64::from(image.mask[i]) * f64::from(image.mask[j]);
            let divergence: f64 = (0..k)
                .map(|c| {
                    let (pi, li, lj) = (image.p[c * plane + i], image.log_p[c * plane + i], image.log_p[c * plane + j]);
                    f64::from(pi) * (f64::from(li) - f64::from(lj))
                })
                .sum();
            let (a, b) = (image.classes[i] as usize, image.classes[j] as usize);
            if a == b {
                sums[a] += weight * divergence;
                sums[k + 1 + a] += weight;
            } else {
                sums[k] += weight * (f64::from(pairs.margin) - divergence).max(0.0);
                sums[2 * k + 1] += weight;
            }
        }
        sums
    }

    /// The gradients bit for bit, and the forward's sums within f32 rounding (the counts
    /// exactly), against plain loops over the pairs; rows long enough for the lanes and short
    /// enough for the tail alone.
    #[test]
    fn the_row_loops_give_the_pair_by_pair_gradients_bit_for_bit() {
        let mut rng = Uniform(0x9e37_79b9_7f4a_7c15);
        let pairs = AffinityPairs { dilations: vec![1, 2, 3], margin: 3.0, probability_floor: 1e-4 };
        for [k, h, w] in [[2, 17, 23], [3, 9, 8]] {
            let plane = h * w;
            // Probabilities from random logits; classes and a gate drawn per pixel.
            let mut p = vec![0f32; k * plane];
            for i in 0..plane {
                let logits: Vec<f32> = (0..k).map(|_| 8.0 * rng.next() - 4.0).collect();
                let total: f32 = logits.iter().map(|z| z.exp()).sum();
                for c in 0..k {
                    p[c * plane + i] = (logits[c].exp() / total).clamp(1e-4, 1.0);
                }
            }
            let log_p: Vec<f32> = p.iter().map(|v| v.ln()).collect();
            let classes: Vec<f32> = (0..plane).map(|_| (rng.next() * k as f32).floor()).collect();
            let mask: Vec<f32> = (0..plane).map(|_| flag(rng.next() < 0.8)).collect();
            let upstream: Vec<f32> = (0..2 * k + 2).map(|_| 2.0 * rng.next() - 1.0).collect();
            let image = Image { p: &p, log_p: &log_p, classes: &classes, mask: &mask, shape: [k, h, w] };
            let (mut p_grad, mut log_p_grad) = (vec![0f32; k * plane], vec![0f32; k * plane]);
            image_gradients(&image, &pairs.offsets(), pairs.margin, &upstream, &mut p_grad, &mut log_p_grad);
            let (want_p, want_log_p) = pair_by_pair_gradients(&image, &pairs, &upstream);
            // The sums: the counts exactly, the sums of divergences to f32 rounding.
            let (sums, want_sums) =
                (image_sums(&image, &pairs.offsets(), pairs.margin), pair_by_pair_sums(&image, &pairs));
            for (index, (&got, &want)) in sums.iter().zip(&want_sums).enumerate() {
                let count = index > k;
                let tolerance = if count { 0.0 } else { 1e-5 * want.abs().max(1.0) };
                assert!((got - want).abs() <= tolerance, "sum {index} of {k}×{h}×{w}: {got} against {want}");
            }
            assert_eq!(p_grad, want_p, "p's gradient, {k}×{h}×{w}");
            assert_eq!(log_p_grad, want_log_p, "log p's gradient, {k}×{h}×{w}");
            assert!(want_log_p.iter().any(|&g| g != 0.0));
        }
    }
}
