//! Preprocessing and augmentation, defined once for training and inference.
//!
//! Images are row-major 2D planes (`h` rows of `w` columns); a multi-channel image is its
//! channels one after another (`[c, h, w]`). Resizing uses the half-pixel convention
//! (`align_corners = false`, PyTorch's default and ONNX Resize's `half_pixel`): pixel centres
//! sit at `i + 0.5`, so a resize does not shift the image.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::nifti_io::Volume;

mod resize;
pub use resize::{Bilinear, resize_bilinear, resize_nearest};

/// Per-volume z-score: subtract the mean, divide by the standard deviation of all voxels.
/// A constant volume (σ = 0) is only centred, so it becomes all zeros rather than NaN.
pub fn zscore(data: &mut [f32]) {
    let z = ZScore::of(data);
    for v in data.iter_mut() {
        *v = z.apply(*v);
    }
}

/// A volume's z-score as the map it applies to each voxel, so that a voxel can be normalised
/// where it is read instead of in a normalised copy of the volume.
#[derive(Debug, Clone, Copy)]
struct ZScore {
    mean: f64,
    scale: f64,
}

impl ZScore {
    fn of(data: &[f32]) -> Self {
        if data.is_empty() {
            return Self { mean: 0.0, scale: 1.0 };
        }
        let n = data.len() as f64;
        let mean = data.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        Self { mean, scale: if std > 0.0 { 1.0 / std } else { 1.0 } }
    }

    fn apply(self, v: f32) -> f32 {
        ((v as f64 - self.mean) * self.scale) as f32
    }
}

/// Label binarisation: every non-zero label is prostate (RUNMC/BMC code a zone as 2).
pub fn binarize(labels: &[f32]) -> Vec<u8> {
    labels.iter().map(|&v| (v > 0.0) as u8).collect()
}

/// How volumes become network inputs. Travels with a trained model so inference cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Height and width slices are resized to.
    pub size: usize,
    /// Neighbouring slices on each side used as extra channels (0 = 2D, 1 = 2.5D z−1, z, z+1).
    pub context: usize,
}

impl Preprocessing {
    /// Input channels of the network: the slice and its neighbours.
    pub fn channels(&self) -> usize {
        2 * self.context + 1
    }
}

/// One 2D training or inference sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice2d {
    /// `[channels, size, size]`, z-scored.
    pub image: Vec<f32>,
    /// `[size, size]`, 0 or 1.
    pub mask: Vec<u8>,
    /// Axial index in the source volume.
    pub z: usize,
}

/// A volume z-scored as a whole, ready to cut slices from. Voxels are normalised as the
/// slices are cut (the same values as z-scoring a copy first, without the copy).
pub struct NormalizedVolume<'a> {
    data: &'a [f32],
    dims: [usize; 3],
    zscore: ZScore,
}

impl<'a> NormalizedVolume<'a> {
    pub fn new(volume: &'a Volume) -> Self {
        Self { data: &volume.data, dims: volume.dims, zscore: ZScore::of(&volume.data) }
    }

    pub fn depth(&self) -> usize {
        self.dims[2]
    }

    /// The network input for slice `z`: its context slices (replicated at the ends of the
    /// volume), each resized to `size × size`, channel-first.
    pub fn input(&self, z: usize, prep: &Preprocessing) -> Vec<f32> {
        let [nx, ny, nz] = self.dims;
        let plane = nx * ny;
        let resize = ((ny, nx) != (prep.size, prep.size)).then(|| Bilinear::new(ny, nx, prep.size, prep.size));
        let mut out = Vec::with_capacity(prep.channels() * prep.size * prep.size);
        for offset in 0..prep.channels() {
            let zz = (z + offset).saturating_sub(prep.context).min(nz - 1);
            let src = &self.data[zz * plane..][..plane];
            let z = |v| self.zscore.apply(v);
            match &resize {
                Some(resize) => resize.apply_mapped(src, z, &mut out),
                None => out.extend(src.iter().map(|&v| z(v))),
            }
        }
        out
    }
}

/// The slices of one case as samples. With `foreground_only`, slices whose mask is empty are
/// skipped (the reference practice for training); evaluation always takes every slice.
pub fn case_slices(image: &Volume, mask: &[u8], prep: &Preprocessing, foreground_only: bool) -> Vec<Slice2d> {
    let norm = NormalizedVolume::new(image);
    let [nx, ny, nz] = image.dims;
    (0..nz)
        .filter_map(|z| {
            let m = &mask[z * nx * ny..][..nx * ny];
            if foreground_only && m.iter().all(|&v| v == 0) {
                return None;
            }
            Some(Slice2d { image: norm.input(z, prep), mask: resize_nearest(m, ny, nx, prep.size, prep.size), z })
        })
        .collect()
}

/// Augmentation strengths; each is drawn uniformly in ±range per sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augmentation {
    /// Probability of a left-right flip.
    pub flip_lr: f32,
    /// Probability of an up-down flip.
    pub flip_ud: f32,
    /// Largest rotation, degrees.
    pub rotate_deg: f32,
    /// Largest shift, as a fraction of the image size.
    pub shift: f32,
    /// Largest multiplicative intensity change (0.1 = ×0.9…×1.1).
    pub intensity_scale: f32,
    /// Largest additive intensity change, in z-score units.
    pub intensity_shift: f32,
    /// Largest zoom about the centre (0.3 = ×0.7…×1.3): the sites' fields of view differ by up
    /// to 2.5× (SPEC §2), so one site's gland is another's at a different pixel size.
    #[serde(skip_serializing_if = "is_zero")]
    pub zoom: f32,
    /// Largest |ln γ| of a gamma curve on the sample's own min–max range (0.4 = γ in
    /// e^±0.4): the tissue contrast that the sites' echo times and coils change nonlinearly.
    #[serde(skip_serializing_if = "is_zero")]
    pub gamma: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

impl Default for Augmentation {
    fn default() -> Self {
        Self {
            flip_lr: 0.5,
            flip_ud: 0.0,
            rotate_deg: 10.0,
            shift: 0.05,
            intensity_scale: 0.1,
            intensity_shift: 0.1,
            zoom: 0.0,
            gamma: 0.0,
        }
    }
}

impl Augmentation {
    pub fn none() -> Self {
        Self {
            flip_lr: 0.0,
            flip_ud: 0.0,
            rotate_deg: 0.0,
            shift: 0.0,
            intensity_scale: 0.0,
            intensity_shift: 0.0,
            zoom: 0.0,
            gamma: 0.0,
        }
    }

    /// Augments a square sample in place. The same geometric transform goes to the image
    /// (bilinear, zero-filled: the z-score mean) and the mask (nearest). Deterministic for a
    /// given random-number generator state.
    pub fn apply<R: Rng>(&self, sample: &mut Slice2d, size: usize, rng: &mut R) {
        let flip_lr = rng.random::<f32>() < self.flip_lr;
        let flip_ud = rng.random::<f32>() < self.flip_ud;
        let angle = symmetric(rng, self.rotate_deg).to_radians();
        let (tx, ty) = (symmetric(rng, self.shift) * size as f32, symmetric(rng, self.shift) * size as f32);
        let gain = 1.0 + symmetric(rng, self.intensity_scale);
        let bias = symmetric(rng, self.intensity_shift);
        // Drawn last, and only when switched on, so the earlier draws are those of configs
        // without them.
        let zoom = 1.0 + symmetric(rng, self.zoom);
        let gamma = symmetric(rng, self.gamma).exp();

        let identity = !flip_lr && !flip_ud && angle == 0.0 && tx == 0.0 && ty == 0.0 && zoom == 1.0;
        if !identity {
            let warp = Warp::new(size, angle, tx, ty, zoom, flip_lr, flip_ud);
            let plane = size * size;
            let channels = sample.image.len() / plane;
            let mut image = Vec::with_capacity(sample.image.len());
            for c in 0..channels {
                image.extend(warp.bilinear(&sample.image[c * plane..(c + 1) * plane]));
            }
            sample.image = image;
            sample.mask = warp.nearest(&sample.mask);
        }
        if gamma != 1.0 {
            apply_gamma(&mut sample.image, gamma);
        }
        if gain != 1.0 || bias != 0.0 {
            sample.image.iter_mut().for_each(|v| *v = *v * gain + bias);
        }
    }
}

/// `v ↦ lo + (hi − lo)·((v − lo)/(hi − lo))^γ` over the values' own range [lo, hi].
fn apply_gamma(values: &mut [f32], gamma: f32) {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if hi > lo {
        values.iter_mut().for_each(|v| *v = lo + (hi - lo) * ((*v - lo) / (hi - lo)).powf(gamma));
    }
}

fn symmetric<R: Rng>(rng: &mut R, range: f32) -> f32 {
    if range > 0.0 { rng.random_range(-range..=range) } else { 0.0 }
}

/// Inverse mapping from destination to source pixel centres: rotation and zoom about the
/// centre, then shift, then flips.
struct Warp {
    size: usize,
    /// cos and sin of the angle, divided by the zoom.
    cos: f32,
    sin: f32,
    tx: f32,
    ty: f32,
    flip_lr: bool,
    flip_ud: bool,
}

impl Warp {
    fn new(size: usize, angle: f32, tx: f32, ty: f32, zoom: f32, flip_lr: bool, flip_ud: bool) -> Self {
        Self { size, cos: angle.cos() / zoom, sin: angle.sin() / zoom, tx, ty, flip_lr, flip_ud }
    }

    fn source(&self, r: usize, c: usize) -> (f32, f32) {
        let centre = (self.size as f32 - 1.0) / 2.0;
        let mut x = c as f32;
        let mut y = r as f32;
        if self.flip_lr {
            x = self.size as f32 - 1.0 - x;
        }
        if self.flip_ud {
            y = self.size as f32 - 1.0 - y;
        }
        let (dx, dy) = (x - centre - self.tx, y - centre - self.ty);
        (centre + self.cos * dx + self.sin * dy, centre - self.sin * dx + self.cos * dy)
    }

    fn bilinear(&self, src: &[f32]) -> Vec<f32> {
        let n = self.size as isize;
        let at = |y: isize, x: isize| {
            if (0..n).contains(&y) && (0..n).contains(&x) { src[(y * n + x) as usize] } else { 0.0 }
        };
        let mut out = Vec::with_capacity(src.len());
        for r in 0..self.size {
            for c in 0..self.size {
                let (x, y) = self.source(r, c);
                let (x0, y0) = (x.floor(), y.floor());
                let (fx, fy) = (x - x0, y - y0);
                let (x0, y0) = (x0 as isize, y0 as isize);
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
                let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
        out
    }

    fn nearest(&self, src: &[u8]) -> Vec<u8> {
        let n = self.size as isize;
        let mut out = Vec::with_capacity(src.len());
        for r in 0..self.size {
            for c in 0..self.size {
                let (x, y) = self.source(r, c);
                let (x, y) = (x.round() as isize, y.round() as isize);
                out.push(if (0..n).contains(&x) && (0..n).contains(&y) { src[(y * n + x) as usize] } else { 0 });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn zscore_by_hand() {
        // mean 2.5, population σ = √1.25
        let mut v = [1.0, 2.0, 3.0, 4.0];
        zscore(&mut v);
        let s = 1.25f32.sqrt();
        for (got, want) in v.iter().zip([-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]) {
            assert!((got - want).abs() < 1e-6);
        }
        let mut flat = [7.0; 3];
        zscore(&mut flat);
        assert_eq!(flat, [0.0; 3]);
    }

    #[test]
    fn binarize_keeps_every_zone() {
        assert_eq!(binarize(&[0.0, 1.0, 2.0, 0.0]), vec![0, 1, 1, 0]);
    }

    #[test]
    fn flip_moves_pixels_and_mask_together() {
        let aug = Augmentation { flip_lr: 1.0, ..Augmentation::none() };
        let mut s = Slice2d { image: vec![1.0, 2.0, 3.0, 4.0], mask: vec![1, 0, 0, 0], z: 0 };
        aug.apply(&mut s, 2, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(s.image, vec![2.0, 1.0, 4.0, 3.0]);
        assert_eq!(s.mask, vec![0, 1, 0, 0]);
    }

    #[test]
    fn rotation_by_90_degrees_by_hand() {
        // Destination (r, c) reads source (y, x) = (2 − c, r): rows become reversed columns.
        let warp = Warp::new(3, 90f32.to_radians(), 0.0, 0.0, 1.0, false, false);
        let src: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let out = warp.bilinear(&src);
        for (got, want) in out.iter().zip([6.0, 3.0, 0.0, 7.0, 4.0, 1.0, 8.0, 5.0, 2.0]) {
            assert!((got - want).abs() < 1e-4, "{out:?}");
        }
        let mask = warp.nearest(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask, vec![0, 0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn zoom_by_two_reads_the_central_half() {
        // Size 5, centre 2: destination column c reads source column 2 + (c − 2)/2.
        let warp = Warp::new(5, 0.0, 0.0, 0.0, 2.0, false, false);
        let src: Vec<f32> = (0..25).map(|v| (v % 5) as f32).collect();
        let row: Vec<f32> = warp.bilinear(&src)[10..15].to_vec();
        for (got, want) in row.iter().zip([1.0, 1.5, 2.0, 2.5, 3.0]) {
            assert!((got - want).abs() < 1e-5, "{row:?}");
        }
    }

    #[test]
    fn gamma_by_hand_on_the_samples_range() {
        // Range [−1, 3]: 1 is halfway, 0.5² = 0.25 of the way with γ 2; the ends stay.
        let mut v = [-1.0, 1.0, 3.0];
        apply_gamma(&mut v, 2.0);
        for (got, want) in v.iter().zip([-1.0, 0.0, 3.0]) {
            assert!((got - want).abs() < 1e-6, "{v:?}");
        }
        let mut flat = [0.5; 3];
        apply_gamma(&mut flat, 2.0);
        assert_eq!(flat, [0.5; 3]);
    }

    #[test]
    fn zoom_and_gamma_switched_off_leave_the_other_draws_as_they_were() {
        let base = Slice2d { image: (0..64).map(|v| v as f32).collect(), mask: vec![1; 64], z: 0 };
        let run = |aug: Augmentation| {
            let mut s = base.clone();
            aug.apply(&mut s, 8, &mut ChaCha8Rng::seed_from_u64(3));
            s
        };
        let default = Augmentation::default();
        let explicit = Augmentation { zoom: 0.0, gamma: 0.0, ..default };
        assert_eq!(run(default), run(explicit));
        assert_ne!(run(default), run(Augmentation { zoom: 0.3, gamma: 0.4, ..default }));
        // Switched off, they are left out of a written config, which keeps its hash.
        let yaml = serde_yaml::to_string(&default).unwrap();
        assert!(!yaml.contains("zoom") && !yaml.contains("gamma"), "{yaml}");
    }

    #[test]
    fn augmentation_is_deterministic_per_seed() {
        let aug = Augmentation::default();
        let base = Slice2d { image: (0..64).map(|v| v as f32).collect(), mask: vec![1; 64], z: 0 };
        let run = |seed| {
            let mut s = base.clone();
            aug.apply(&mut s, 8, &mut ChaCha8Rng::seed_from_u64(seed));
            s
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn context_slices_replicate_at_the_ends() {
        // 1×1×3 volume with values 10, 20, 30; 2.5D input of slice 0 is (10, 10, 20).
        let header = nifti::NiftiHeader { pixdim: [1.0; 8], ..Default::default() };
        let vol =
            Volume { data: vec![10.0, 20.0, 30.0], dims: [1, 1, 3], spacing: [1.0; 3], affine: [[0.0; 4]; 4], header };
        let norm = NormalizedVolume::new(&vol);
        let prep = Preprocessing { size: 1, context: 1 };
        let s = 200f32 / 3.0;
        let z = |v: f32| (v - 20.0) / s.sqrt();
        let first = norm.input(0, &prep);
        let last = norm.input(2, &prep);
        for (got, want) in
            first.iter().zip([z(10.0), z(10.0), z(20.0)]).chain(last.iter().zip([z(20.0), z(30.0), z(30.0)]))
        {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }
}
