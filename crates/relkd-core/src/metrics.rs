//! Segmentation metrics on binary masks: Dice, HD95, average symmetric surface distance, and
//! fragmentation (how ragged a mask is).
//!
//! Masks are `u8` slices (non-zero = foreground) laid out like [`crate::nifti_io::Volume::data`]:
//! x fastest, then y, then z. Distances are in millimetres, using the voxel spacing.
//!
//! Empty masks are defined, never a crash:
//! - both empty: Dice 1, HD95 0, ASD 0 (the prediction is exactly right);
//! - one empty: Dice 0, HD95 and ASD `f64::INFINITY` ([`SurfaceDistances::is_defined`] is false),
//!   so a mean over cases shows the failure instead of hiding it.

/// Dice coefficient 2|A∩B| / (|A|+|B|); 1 when both masks are empty.
pub fn dice(pred: &[u8], truth: &[u8]) -> f64 {
    assert_eq!(pred.len(), truth.len(), "masks of different sizes");
    let (mut inter, mut sum) = (0usize, 0usize);
    for (&p, &t) in pred.iter().zip(truth) {
        let (p, t) = (p != 0, t != 0);
        inter += (p && t) as usize;
        sum += p as usize + t as usize;
    }
    if sum == 0 { 1.0 } else { 2.0 * inter as f64 / sum as f64 }
}

/// Dice of every axial slice (`slice_len` voxels each), with the same empty-mask rule.
pub fn dice_per_slice(pred: &[u8], truth: &[u8], slice_len: usize) -> Vec<f64> {
    assert_eq!(pred.len(), truth.len(), "masks of different sizes");
    pred.chunks(slice_len).zip(truth.chunks(slice_len)).map(|(p, t)| dice(p, t)).collect()
}

/// Label changes per foreground voxel: the in-plane 4-neighbour pairs (each counted once) whose
/// labels differ, over the foreground voxel count; NaN for an empty mask. A compact blob scores
/// low (a 10 × 10 square: 40 / 100 = 0.4); speckle scores high (an isolated voxel: 4). Counted
/// within axial slices only, because slices are segmented independently and are often several
/// times thicker than the in-plane pixels.
pub fn fragmentation(mask: &[u8], dims: [usize; 3]) -> f64 {
    let [nx, ny, nz] = dims;
    assert_eq!(mask.len(), nx * ny * nz, "mask and grid of different sizes");
    let on = |x: usize, y: usize, z: usize| mask[x + nx * (y + ny * z)] != 0;
    let (mut changes, mut foreground) = (0usize, 0usize);
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let here = on(x, y, z);
                foreground += here as usize;
                changes += (x + 1 < nx && here != on(x + 1, y, z)) as usize;
                changes += (y + 1 < ny && here != on(x, y + 1, z)) as usize;
            }
        }
    }
    if foreground == 0 { f64::NAN } else { changes as f64 / foreground as f64 }
}

/// Surface distances between two masks, in millimetres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurfaceDistances {
    /// 95th percentile Hausdorff distance: the larger of the two directed 95th percentiles
    /// (MedPy's `hd95` convention), percentiles interpolated linearly as numpy does.
    pub hd95: f64,
    /// Average symmetric surface distance: the mean over the union of both directed distance
    /// sets, Σd(A→B) + Σd(B→A) over |∂A| + |∂B| (Heimann et al., 2009).
    pub asd: f64,
}

impl SurfaceDistances {
    /// False when exactly one mask was empty and the distances are infinite.
    pub fn is_defined(&self) -> bool {
        self.hd95.is_finite() && self.asd.is_finite()
    }
}

/// HD95 and ASD between two masks on the grid `dims` with voxel `spacing` (mm).
///
/// A surface voxel is a foreground voxel with a background 6-neighbour; outside the grid counts
/// as background, so foreground touching the border is surface.
pub fn surface_distances(pred: &[u8], truth: &[u8], dims: [usize; 3], spacing: [f32; 3]) -> SurfaceDistances {
    assert_eq!(pred.len(), truth.len(), "masks of different sizes");
    assert_eq!(pred.len(), dims.iter().product::<usize>(), "mask size does not match dims");
    let pred_surface = surface(pred, dims);
    let truth_surface = surface(truth, dims);
    let (n_pred, n_truth) = (count(&pred_surface), count(&truth_surface));
    match (n_pred, n_truth) {
        (0, 0) => return SurfaceDistances { hd95: 0.0, asd: 0.0 },
        (0, _) | (_, 0) => return SurfaceDistances { hd95: f64::INFINITY, asd: f64::INFINITY },
        _ => {}
    }
    let to_truth = distances_at(&pred_surface, &distance_to(&truth_surface, dims, spacing));
    let to_pred = distances_at(&truth_surface, &distance_to(&pred_surface, dims, spacing));
    let hd95 = percentile(&to_truth, 95.0).max(percentile(&to_pred, 95.0));
    let total: f64 = to_truth.iter().chain(&to_pred).sum();
    SurfaceDistances { hd95, asd: total / (to_truth.len() + to_pred.len()) as f64 }
}

fn count(mask: &[bool]) -> usize {
    mask.iter().filter(|&&v| v).count()
}

fn surface(mask: &[u8], [nx, ny, nz]: [usize; 3]) -> Vec<bool> {
    let fg = |x: isize, y: isize, z: isize| {
        x >= 0
            && y >= 0
            && z >= 0
            && (x as usize) < nx
            && (y as usize) < ny
            && (z as usize) < nz
            && mask[x as usize + nx * (y as usize + ny * z as usize)] != 0
    };
    let mut out = vec![false; mask.len()];
    for z in 0..nz as isize {
        for y in 0..ny as isize {
            for x in 0..nx as isize {
                if !fg(x, y, z) {
                    continue;
                }
                let interior = fg(x - 1, y, z)
                    && fg(x + 1, y, z)
                    && fg(x, y - 1, z)
                    && fg(x, y + 1, z)
                    && fg(x, y, z - 1)
                    && fg(x, y, z + 1);
                out[x as usize + nx * (y as usize + ny * z as usize)] = !interior;
            }
        }
    }
    out
}

fn distances_at(where_: &[bool], distance: &[f64]) -> Vec<f64> {
    where_.iter().zip(distance).filter(|(w, _)| **w).map(|(_, d)| *d).collect()
}

/// Exact Euclidean distance (mm) from every voxel to the nearest `true` voxel, by the separable
/// lower-envelope algorithm of Felzenszwalb & Huttenlocher, one pass per axis with its spacing.
fn distance_to(features: &[bool], dims: [usize; 3], spacing: [f32; 3]) -> Vec<f64> {
    let mut sq: Vec<f64> = features.iter().map(|&f| if f { 0.0 } else { f64::INFINITY }).collect();
    let strides = [1, dims[0], dims[0] * dims[1]];
    let mut line = Vec::new();
    let mut out_line = Vec::new();
    for axis in 0..3 {
        let (n, stride, step) = (dims[axis], strides[axis], spacing[axis] as f64);
        let others: Vec<usize> = (0..3).filter(|&a| a != axis).collect();
        for i in 0..dims[others[0]] {
            for j in 0..dims[others[1]] {
                let start = i * strides[others[0]] + j * strides[others[1]];
                line.clear();
                line.extend((0..n).map(|k| sq[start + k * stride]));
                squared_distance_1d(&line, step, &mut out_line);
                for (k, v) in out_line.iter().enumerate() {
                    sq[start + k * stride] = *v;
                }
            }
        }
    }
    sq.into_iter().map(f64::sqrt).collect()
}

/// d(p) = min_q ((step·(p−q))² + f(q)), in O(n).
fn squared_distance_1d(f: &[f64], step: f64, out: &mut Vec<f64>) {
    let n = f.len();
    out.clear();
    out.resize(n, f64::INFINITY);
    let finite: Vec<usize> = (0..n).filter(|&q| f[q].is_finite()).collect();
    if finite.is_empty() {
        return;
    }
    let pos = |q: usize| q as f64 * step;
    // Parabola apexes of the lower envelope and the boundaries between them.
    let mut apex: Vec<usize> = Vec::with_capacity(finite.len());
    let mut bound: Vec<f64> = Vec::with_capacity(finite.len() + 1);
    for &q in &finite {
        loop {
            let Some(&v) = apex.last() else {
                apex.push(q);
                bound.clear();
                bound.push(f64::NEG_INFINITY);
                break;
            };
            let s = ((f[q] + pos(q).powi(2)) - (f[v] + pos(v).powi(2))) / (2.0 * (pos(q) - pos(v)));
            if s <= *bound.last().unwrap() {
                apex.pop();
                bound.pop();
                if apex.is_empty() {
                    continue;
                }
            } else {
                apex.push(q);
                bound.push(s);
                break;
            }
        }
    }
    let mut k = 0;
    for (p, slot) in out.iter_mut().enumerate() {
        let x = pos(p);
        while k + 1 < apex.len() && bound[k + 1] < x {
            k += 1;
        }
        let q = apex[k];
        *slot = (x - pos(q)).powi(2) + f[q];
    }
}

/// Linear-interpolation percentile (numpy's default method) of a non-empty set.
pub fn percentile(values: &[f64], pct: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = pct / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(dims: [usize; 3], on: &[[usize; 3]]) -> Vec<u8> {
        let mut m = vec![0u8; dims.iter().product()];
        for [x, y, z] in on {
            m[x + dims[0] * (y + dims[1] * z)] = 1;
        }
        m
    }

    #[test]
    fn dice_by_hand() {
        // |A| = 3, |B| = 2, |A∩B| = 1 → 2/5.
        assert_eq!(dice(&[1, 1, 1, 0], &[0, 0, 1, 2]), 0.4);
        assert_eq!(dice(&[0, 0], &[0, 0]), 1.0);
        assert_eq!(dice(&[1, 0], &[0, 0]), 0.0);
        assert_eq!(dice_per_slice(&[1, 0, 0, 0], &[1, 0, 1, 0], 2), vec![1.0, 0.0]);
    }

    #[test]
    fn single_voxels_anisotropic() {
        // A at (0,0,0), B at (1,1,1) with spacing (2,3,4) mm: √(4+9+16) = √29 both ways.
        let dims = [3, 3, 3];
        let a = mask(dims, &[[0, 0, 0]]);
        let b = mask(dims, &[[1, 1, 1]]);
        let d = surface_distances(&a, &b, dims, [2.0, 3.0, 4.0]);
        assert!((d.hd95 - 29f64.sqrt()).abs() < 1e-9, "{d:?}");
        assert!((d.asd - 29f64.sqrt()).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn asymmetric_sets_by_hand() {
        // One row along x (spacing 1.5 mm), a single slice. A = {x=0}, B = {x=0, x=4}.
        // d(A→B) = {0}; d(B→A) = {0, 6}. p95 of {0, 6} = 0 + 0.95·6 = 5.7.
        // ASD = (0 + 0 + 6) / 3 = 2.
        let dims = [5, 1, 1];
        let a = mask(dims, &[[0, 0, 0]]);
        let b = mask(dims, &[[0, 0, 0], [4, 0, 0]]);
        let d = surface_distances(&a, &b, dims, [1.5, 1.0, 1.0]);
        assert!((d.hd95 - 5.7).abs() < 1e-9, "{d:?}");
        assert!((d.asd - 2.0).abs() < 1e-9, "{d:?}");
    }

    #[test]
    fn interior_voxels_are_not_surface() {
        // A 3×3×3 cube fills the grid (all border → all surface except the centre voxel).
        // B is the same cube: every distance is 0.
        let dims = [5, 5, 5];
        let cube: Vec<[usize; 3]> =
            (1..4).flat_map(|z| (1..4).flat_map(move |y| (1..4).map(move |x| [x, y, z]))).collect();
        let a = mask(dims, &cube);
        assert_eq!(count(&surface(&a, dims)), 26);
        let d = surface_distances(&a, &a, dims, [1.0, 1.0, 1.0]);
        assert_eq!((d.hd95, d.asd), (0.0, 0.0));
    }

    #[test]
    fn distance_transform_matches_brute_force() {
        let dims = [7, 5, 4];
        let spacing = [0.7f32, 1.3, 2.9];
        let pts = [[0usize, 0, 0], [6, 4, 3], [3, 2, 1], [5, 0, 2]];
        let mut feat = vec![false; 140];
        for [x, y, z] in pts {
            feat[x + 7 * (y + 5 * z)] = true;
        }
        let d = distance_to(&feat, dims, spacing);
        for z in 0..4 {
            for y in 0..5 {
                for x in 0..7 {
                    let brute = pts
                        .iter()
                        .map(|p| {
                            let dx = (x as f64 - p[0] as f64) * 0.7f32 as f64;
                            let dy = (y as f64 - p[1] as f64) * 1.3f32 as f64;
                            let dz = (z as f64 - p[2] as f64) * 2.9f32 as f64;
                            (dx * dx + dy * dy + dz * dz).sqrt()
                        })
                        .fold(f64::INFINITY, f64::min);
                    assert!((d[x + 7 * (y + 5 * z)] - brute).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn empty_masks_are_defined() {
        let dims = [2, 2, 1];
        let empty = vec![0u8; 4];
        let one = mask(dims, &[[1, 1, 0]]);
        let both = surface_distances(&empty, &empty, dims, [1.0; 3]);
        assert_eq!((both.hd95, both.asd), (0.0, 0.0));
        assert!(both.is_defined());
        let missing = surface_distances(&empty, &one, dims, [1.0; 3]);
        assert!(missing.hd95.is_infinite() && !missing.is_defined());
        assert_eq!(dice(&empty, &one), 0.0);
        assert_eq!(dice(&empty, &empty), 1.0);
    }

    #[test]
    fn fragmentation_by_hand() {
        // A 2×2 square in the middle of a 4×4 slice: 8 changes over 4 voxels.
        let dims = [4, 4, 1];
        let square = mask(dims, &[[1, 1, 0], [2, 1, 0], [1, 2, 0], [2, 2, 0]]);
        assert_eq!(fragmentation(&square, dims), 2.0);
        // Four isolated voxels: (0,0) in a corner has 2 in-grid neighbours, (2,0) on an edge 3,
        // (1,2) inside 4, (3,3) in a corner 2 → 11 / 4.
        let speckle = mask(dims, &[[0, 0, 0], [2, 0, 0], [1, 2, 0], [3, 3, 0]]);
        assert_eq!(fragmentation(&speckle, dims), 11.0 / 4.0);
        // Changes across slices do not count; an empty mask is undefined.
        let column = mask([1, 1, 3], &[[0, 0, 1]]);
        assert_eq!(fragmentation(&column, [1, 1, 3]), 0.0);
        assert!(fragmentation(&[0, 0], [2, 1, 1]).is_nan());
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85
        assert!((percentile(&[4.0, 1.0, 3.0, 2.0], 95.0) - 3.85).abs() < 1e-12);
    }
}
