//! One site's acquisition of an [`Anatomy`]: axial T2-weighted slices on the site's grid.
//!
//! Per voxel, the anatomy is sampled at the pixel centre every millimetre or less through the
//! slice and the signals are averaged (partial volume at the site's slice thickness); the
//! tissue's texture (spatially correlated, per tissue), the coil's sensitivity, the in-plane
//! point spread and Rician noise at the site's SNR follow, then the site's intensity scale.
//!
//! Relative T2-weighted signal per structure, at an echo time of 100 ms (urine = 1), with the
//! T2 that shifts it at other echo times (`S · exp(−(TE − 100) / T2)`). The values are rounded
//! picks that keep the ordering and rough ratios of the literature, not measurements:
//! - urine brightest (T2 > 1 s; de Bazelaire et al., Radiology 2004, pelvic tissues at 3 T);
//! - fat bright on fast spin echo (J-coupling; T2 ≈ 130–180 ms, ibid.);
//! - peripheral zone bright, transition zone darker and heterogeneous (BPH nodules: glandular
//!   bright, stromal dark), anterior fibromuscular stroma and capsule dark (PI-RADS v2.1,
//!   Turkbey et al., Eur Urol 2019; prostate T2 ≈ 75–90 ms overall, de Bazelaire 2004). The
//!   transition zone's T2 is about two thirds of the peripheral zone's (T2 mapping of the
//!   normal gland, e.g. Gibbs et al., MRM 2001), which at TE 100 ms puts its signal at about
//!   three quarters of the peripheral zone's: darker, not dark;
//! - skeletal muscle dark (T2 ≈ 30–50 ms; de Bazelaire 2004, Stanisz et al., MRM 2005);
//!   cortical bone darkest; fatty marrow bright; seminal vesicle fluid and the periprostatic
//!   venous plexus bright.
//!
//! The gland's and muscle's levels (phantom v4) follow the spin-echo signal
//! `PD · (1 − e^(−TR/T1)) · e^(−TE/T2)` at TR ≈ 4 s and TE 100 ms, relative to urine's
//! (PD 1, T1 ≈ 4 s, T2 > 1.5 s: 0.59), with proton densities rounded from tissue water and
//! fat content (urine 1, fat 0.9, gland 0.85, muscle 0.75) and relaxation at 3 T from
//! de Bazelaire 2004 (T1: prostate 1597 ms, fat 382 ms, muscle 898 ms) and Simpkin et al.,
//! Br J Radiol 2013 (T2: peripheral zone 149 ± 49 ms): fat 0.9 · 1.0 · e^(−100/170) / 0.59
//! ≈ 0.85 (fast spin echo's apparent T2 for fat; 0.80 kept), peripheral zone
//! 0.85 · 0.92 · e^(−100/150) / 0.59 ≈ 0.68, transition zone (T2 100 ms) ≈ 0.49, muscle
//! (T2 29–50 ms) 0.04–0.16. So the normal peripheral zone comes out nearly as bright as
//! the periprostatic fat, as radiology texts describe it, and muscle darker than v3 had it.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::anatomy::{Anatomy, Structure};
use super::shapes::{Field, V3, gaussian};
use crate::nifti_io::Affine;

/// How a site receives its signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coil {
    /// Pelvic phased array on the body surface: brighter towards the front and back skin.
    PhasedArray,
    /// Body coil: nearly flat, a gentle random tilt.
    Body,
    /// Endorectal coil (with the phased array): a balloon in the rectum and a steep rise of
    /// signal towards it, as left after the vendor's intensity normalisation.
    Endorectal,
}

/// One site's protocol, after SPEC §2's acquisition table (in-plane pixel of the distributed
/// 384×384 images, slice thickness, coil); echo time, SNR and intensity scale are plausible
/// picks per vendor and field strength, not published protocol values.
pub struct SiteStyle {
    pub folder: &'static str,
    pub mask_suffix: &'static str,
    /// Central gland 2, peripheral zone 1 (RUNMC's quirk) instead of 1 everywhere.
    pub zone_labels: bool,
    /// In-plane pixel of the native 384×384 images, mm (a case draws within the range).
    pub pixel_mm: (f32, f32),
    pub slice_mm: (f32, f32),
    pub coil: Coil,
    pub echo_ms: f32,
    /// Urine signal over the noise σ at the native matrix.
    pub snr: f32,
    /// In-plane point spread (Gaussian σ, mm).
    pub blur_mm: f32,
    /// int16 value of urine at unit coil gain.
    pub scale: f32,
    /// What the style imitates, for `--preview` and the README.
    pub summary: &'static str,
}

/// The in-plane matrix of the distributed data (SPEC §2).
pub const NATIVE_MATRIX: usize = 384;

pub const SITES: [SiteStyle; 6] = [
    SiteStyle {
        folder: "RUNMC",
        mask_suffix: "_segmentation",
        zone_labels: true,
        pixel_mm: (0.6, 0.625),
        slice_mm: (3.6, 4.0),
        coil: Coil::PhasedArray,
        echo_ms: 104.0,
        snr: 26.0,
        blur_mm: 0.6,
        scale: 1000.0,
        summary: "3 T Siemens, pelvic phased array, 0.6 mm / 3.6-4 mm, zone labels",
    },
    SiteStyle {
        folder: "BMC",
        mask_suffix: "_Segmentation",
        zone_labels: false,
        pixel_mm: (0.4, 0.4),
        slice_mm: (3.0, 3.0),
        coil: Coil::Endorectal,
        echo_ms: 120.0,
        snr: 16.0,
        blur_mm: 0.7,
        scale: 1800.0,
        summary: "1.5 T Philips, endorectal coil, 0.4 mm / 3 mm",
    },
    SiteStyle {
        folder: "HCRUDB",
        mask_suffix: "_segmentation",
        zone_labels: false,
        pixel_mm: (0.67, 0.79),
        slice_mm: (1.25, 1.25),
        coil: Coil::Body,
        echo_ms: 128.0,
        snr: 14.0,
        blur_mm: 0.9,
        scale: 450.0,
        summary: "3 T Siemens, no endorectal coil, 0.67-0.79 mm / 1.25 mm thin slices",
    },
    SiteStyle {
        folder: "UCL",
        mask_suffix: "_segmentation",
        zone_labels: false,
        pixel_mm: (0.325, 0.625),
        slice_mm: (3.0, 3.6),
        coil: Coil::Body,
        echo_ms: 96.0,
        snr: 20.0,
        blur_mm: 0.6,
        scale: 1600.0,
        summary: "1.5 and 3 T Siemens, no endorectal coil, 0.325-0.625 mm / 3-3.6 mm",
    },
    SiteStyle {
        folder: "BIDMC",
        mask_suffix: "_segmentation",
        zone_labels: false,
        pixel_mm: (0.25, 0.25),
        slice_mm: (2.2, 3.0),
        coil: Coil::Endorectal,
        echo_ms: 110.0,
        snr: 18.0,
        blur_mm: 0.5,
        scale: 700.0,
        summary: "3 T GE, endorectal coil, 0.25 mm (96 mm field of view) / 2.2-3 mm",
    },
    SiteStyle {
        folder: "HK",
        mask_suffix: "_segmentation",
        zone_labels: false,
        pixel_mm: (0.625, 0.625),
        slice_mm: (3.6, 3.6),
        coil: Coil::Endorectal,
        echo_ms: 90.0,
        snr: 13.0,
        blur_mm: 0.8,
        scale: 1100.0,
        summary: "1.5 T Siemens, endorectal coil, 0.625 mm / 3.6 mm",
    },
];

/// Relative signal at TE = 100 ms, T2 (ms) and texture amplitude of each structure.
fn tissue(s: Structure) -> (f32, f32, f32) {
    use Structure::*;
    match s {
        Air | RectalGas | EndorectalBalloon => (0.0, 10.0, 0.0),
        Skin => (0.40, 60.0, 0.05),
        SubcutaneousFat => (0.80, 180.0, 0.05),
        PelvicFat => (0.78, 180.0, 0.07),
        Gluteus | ThighMuscle | Iliopsoas | RectusAbdominis | ObturatorInternus | LevatorAni => (0.13, 45.0, 0.08),
        CorticalBone => (0.03, 5.0, 0.0),
        PubicBone | PelvicBone | FemoralHead | Coccyx => (0.62, 150.0, 0.12),
        Cartilage => (0.30, 40.0, 0.05),
        Bladder => (1.0, 1500.0, 0.01),
        BladderWall => (0.24, 45.0, 0.05),
        RectalWall => (0.28, 55.0, 0.08),
        RectalContent => (0.38, 70.0, 0.25),
        RectalFluid => (0.85, 600.0, 0.02),
        SeminalVesicle => (0.88, 300.0, 0.18),
        PeripheralZone => (0.67, 150.0, 0.10),
        TransitionZone => (0.50, 100.0, 0.14),
        GlandularNodule => (0.62, 120.0, 0.10),
        StromalNodule => (0.26, 60.0, 0.08),
        AnteriorStroma => (0.20, 45.0, 0.05),
        Capsule => (0.16, 45.0, 0.0),
        VenousPlexus => (0.72, 200.0, 0.10),
    }
}

pub struct Rendered {
    pub image: Vec<i16>,
    pub labels: Vec<u8>,
    /// The [`Structure`] code of each voxel (the most common one through the slice).
    pub structures: Vec<u8>,
    pub dims: [usize; 3],
    pub spacing: [f32; 3],
    pub affine: Affine,
}

/// Renders one case of `style` on a `matrix`² grid (the site's field of view resampled).
pub fn render_case(style: &SiteStyle, matrix: usize, rng: &mut ChaCha8Rng) -> Rendered {
    let fov = NATIVE_MATRIX as f32 * draw(rng, style.pixel_mm);
    let dxy = fov / matrix as f32;
    let thickness = (draw(rng, style.slice_mm) * 20.0).round() / 20.0;
    // The technologist centres the field of view near the gland.
    let gland_xy = [rng.random_range(-8.0..8.0), rng.random_range(-8.0..8.0)];
    let half = fov / 2.0 + 20.0;
    let (lo, hi): (V3, V3) = ([-half, -half, -80.0], [half, half, 100.0]);
    let anatomy = Anatomy::new(rng, style.coil == Coil::Endorectal, (lo, hi));
    // The stack covers the gland with margins below the apex and above the base (vesicles).
    let extent = anatomy.gland_extent();
    let below = extent.inferior + rng.random_range(8.0..16.0);
    let above = extent.superior + rng.random_range(14.0..26.0);
    let nz = (((below + above) / thickness).round() as usize).max(3);
    let first_z = -below + thickness / 2.0;

    let fine = Field::new(rng, lo, hi, 2.0);
    let coarse = Field::new(rng, lo, hi, 7.0);
    let coil = CoilProfile::new(style.coil, &anatomy, rng);
    let signal: Vec<(f32, f32)> = Structure::ALL
        .iter()
        .map(|&s| {
            let (s_ref, t2, texture) = tissue(s);
            (s_ref * (-(style.echo_ms - 100.0) / t2).exp(), texture)
        })
        .collect();

    let samples = VoxelSamples::new(dxy, thickness);
    let plane = matrix * matrix;
    let mut intensity = vec![0f32; plane * nz];
    let mut labels = vec![0u8; plane * nz];
    let mut structures = vec![0u8; plane * nz];
    let centre = (matrix as f32 - 1.0) / 2.0;
    let mut hits = Vec::with_capacity(samples.offsets.len());
    for k in 0..nz {
        let z = first_z + k as f32 * thickness;
        for j in 0..matrix {
            // Radiological storage: the first row is anterior, the first column patient right.
            let y = (centre - j as f32) * dxy - gland_xy[1];
            for i in 0..matrix {
                let x = (centre - i as f32) * dxy - gland_xy[0];
                hits.clear();
                let mut sum = 0.0;
                for offset in &samples.offsets {
                    let p = [x + offset[0], y + offset[1], z + offset[2]];
                    let structure = anatomy.at(p);
                    let (value, texture) = signal[structure as usize];
                    if value > 0.0 {
                        sum += value * (1.0 + texture * (0.7 * fine.at(p) + 0.7 * coarse.at(p)));
                    }
                    hits.push(structure);
                }
                let v = i + matrix * (j + matrix * k);
                intensity[v] = sum / hits.len() as f32 * coil.gain(&anatomy, [x, y, z]);
                let gland = hits.iter().filter(|s| s.is_gland()).count();
                if 2 * gland >= hits.len() {
                    let peripheral = hits.iter().filter(|&&s| s == Structure::PeripheralZone).count();
                    labels[v] = if style.zone_labels && 2 * peripheral < gland { 2 } else { 1 };
                }
                structures[v] = most_common(&hits) as u8;
            }
        }
    }

    let sigma = style.blur_mm / dxy;
    if sigma > 0.3 {
        for slice in intensity.chunks_mut(plane) {
            gaussian_blur(slice, matrix, sigma);
        }
    }
    // Noise σ at the native matrix; resampling to a coarser grid averages it down.
    let noise = matrix as f32 / NATIVE_MATRIX as f32 / style.snr;
    let image = intensity
        .iter()
        .map(|&v| {
            // Magnitude images carry Rician noise: |signal + complex Gaussian|.
            let (re, im) = (v + gaussian(rng) * noise, gaussian(rng) * noise);
            ((re * re + im * im).sqrt() * style.scale).round().clamp(0.0, i16::MAX as f32) as i16
        })
        .collect();

    let mut affine = [[0.0; 4]; 4];
    affine[0][0] = -dxy as f64;
    affine[1][1] = -dxy as f64;
    affine[2][2] = thickness as f64;
    affine[0][3] = (centre * dxy) as f64;
    affine[1][3] = (centre * dxy) as f64;
    affine[2][3] = first_z as f64;
    affine[3][3] = 1.0;
    Rendered { image, labels, structures, dims: [matrix, matrix, nz], spacing: [dxy, dxy, thickness], affine }
}

/// Where a voxel is sampled, relative to its centre (mm): a voxel's signal is the mean over its
/// whole volume, in-plane as well as through the slice. Without the in-plane part a coarse grid
/// (1.8 mm at 128 px for a 230 mm field) point-samples the anatomy: edges alias into stairs and a
/// 1 mm capsule appears or vanishes pixel by pixel, where a scanner's pixel (and a real scan
/// resampled to that grid) averages them into partial volume.
struct VoxelSamples {
    offsets: Vec<V3>,
}

impl VoxelSamples {
    /// 2×2 in-plane sub-pixels for pixels coarser than [`Self::IN_PLANE_MM`] (every site's
    /// field at 128 px but BIDMC's), through-slice strata at most 1 mm apart (up to 4). Rather
    /// than their product, each sample takes its own stratum, as in a Latin hypercube:
    /// `max(in-plane², strata)` samples cover both, so that a 128 px matrix costs no more
    /// samples than the through-slice partial volume alone did.
    const IN_PLANE_MM: f32 = 1.0;

    fn new(pixel: f32, thickness: f32) -> Self {
        let per_side = if pixel > Self::IN_PLANE_MM { 2 } else { 1 };
        let strata = (thickness.ceil() as usize).clamp(1, 4);
        let n = (per_side * per_side).max(strata);
        // A stride coprime with n, nearest n/φ, spreads each row and column of sub-pixels
        // across the slice (n = 4: strata 0, 3, 2, 1).
        let golden = n as f32 / 1.618;
        let stride = (1..n.max(2))
            .filter(|&m| gcd(m, n) == 1)
            .min_by(|&a, &b| (a as f32 - golden).abs().total_cmp(&(b as f32 - golden).abs()))
            .unwrap_or(1);
        let offsets = (0..n)
            .map(|s| {
                let (a, b) = (s % per_side, (s / per_side) % per_side);
                let sub_pixel = |c: usize| ((c as f32 + 0.5) / per_side as f32 - 0.5) * pixel;
                let stratum = (s * stride) % n;
                [sub_pixel(a), sub_pixel(b), ((stratum as f32 + 0.5) / n as f32 - 0.5) * thickness]
            })
            .collect();
        Self { offsets }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn draw(rng: &mut ChaCha8Rng, (lo, hi): (f32, f32)) -> f32 {
    if hi > lo { rng.random_range(lo..hi) } else { lo }
}

fn most_common(hits: &[Structure]) -> Structure {
    *hits.iter().max_by_key(|s| hits.iter().filter(|t| t == s).count()).expect("at least one sample")
}

/// The receive coil's sensitivity at a point.
enum CoilProfile {
    /// Nearly flat: a gentle linear tilt in x and y.
    Body { tilt: [f32; 2] },
    /// Surface elements front and back, normalised to 1 at the gland's centre.
    PhasedArray { surface: Surface },
    /// A weaker surface array plus the balloon's gain, falling off over `length` mm.
    Endorectal { surface: Surface, gain: f32, length: f32 },
}

/// A surface array's sensitivity: 1 + weight · (e^(−front/length) + e^(−back/length)), over
/// its value at the gland's centre.
struct Surface {
    length: f32,
    weight: f32,
    centre: f32,
}

impl Surface {
    fn new(anatomy: &Anatomy, length: f32, weight: f32) -> Self {
        let mut surface = Self { length, weight, centre: 1.0 };
        surface.centre = surface.raw(anatomy, [0.0; 3]);
        surface
    }

    fn raw(&self, anatomy: &Anatomy, p: V3) -> f32 {
        let (front, back) = anatomy.skin_distances(p);
        1.0 + self.weight * ((-front / self.length).exp() + (-back / self.length).exp())
    }

    fn gain(&self, anatomy: &Anatomy, p: V3) -> f32 {
        self.raw(anatomy, p) / self.centre
    }
}

impl CoilProfile {
    fn new(coil: Coil, anatomy: &Anatomy, rng: &mut ChaCha8Rng) -> Self {
        match coil {
            Coil::Body => Self::Body { tilt: [rng.random_range(-0.1..0.1), rng.random_range(-0.1..0.1)] },
            Coil::PhasedArray => {
                let (length, weight) = (rng.random_range(50.0..80.0), rng.random_range(0.5..0.9));
                Self::PhasedArray { surface: Surface::new(anatomy, length, weight) }
            }
            Coil::Endorectal => Self::Endorectal {
                surface: Surface::new(anatomy, 70.0, 0.4),
                gain: rng.random_range(0.4..0.6),
                length: rng.random_range(15.0..25.0),
            },
        }
    }

    fn gain(&self, anatomy: &Anatomy, p: V3) -> f32 {
        match self {
            Self::Body { tilt } => 1.0 + tilt[0] * p[0] / 150.0 + tilt[1] * p[1] / 150.0,
            Self::PhasedArray { surface } => surface.gain(anatomy, p),
            Self::Endorectal { surface, gain, length } => {
                let d = anatomy.coil_distance(p).unwrap_or(f32::INFINITY);
                surface.gain(anatomy, p) + gain * (-d / length).exp()
            }
        }
    }
}

/// Separable Gaussian blur of a square plane, clamping at the borders.
fn gaussian_blur(plane: &mut [f32], size: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius).map(|k| (-(k * k) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let norm: f32 = kernel.iter().sum();
    let mut tmp = vec![0f32; plane.len()];
    let clamp = |v: isize| v.clamp(0, size as isize - 1) as usize;
    for y in 0..size {
        for x in 0..size {
            tmp[y * size + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * plane[y * size + clamp(x as isize + k as isize - radius)])
                .sum::<f32>()
                / norm;
        }
    }
    for y in 0..size {
        for x in 0..size {
            plane[y * size + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * tmp[clamp(y as isize + k as isize - radius) * size + x])
                .sum::<f32>()
                / norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample pattern must average over the whole voxel: centred in every axis, and for a
    /// 2×2 in-plane grid every row and every column spans the slice's thickness.
    #[test]
    fn voxel_samples_cover_the_voxel_in_plane_and_through_the_slice() {
        let mean = |s: &VoxelSamples, d: usize| s.offsets.iter().map(|o| o[d]).sum::<f32>() / s.offsets.len() as f32;
        // 1.8 mm pixels, 3.6 mm slices (RUNMC at 128 px): 2×2 sub-pixels 0.9 mm apart, 4 strata.
        let coarse = VoxelSamples::new(1.8, 3.6);
        assert_eq!(coarse.offsets.len(), 4);
        let mut strata: Vec<f32> = coarse.offsets.iter().map(|o| o[2]).collect();
        strata.sort_by(f32::total_cmp);
        for (got, want) in strata.iter().zip([-1.35, -0.45, 0.45, 1.35]) {
            assert!((got - want).abs() < 1e-5, "strata {strata:?}");
        }
        for d in 0..3 {
            assert!(mean(&coarse, d).abs() < 1e-6, "axis {d} off centre");
        }
        for (axis, side) in [0, 1].into_iter().flat_map(|axis| [(axis, -0.45f32), (axis, 0.45)]) {
            let line: Vec<f32> = coarse.offsets.iter().filter(|o| o[axis] == side).map(|o| o[2]).collect();
            assert_eq!(line.len(), 2);
            assert!(
                line[0].signum() != line[1].signum(),
                "axis {axis} at {side} samples one half of the slice: {line:?}"
            );
        }
        // 0.6 mm pixels (native): no in-plane sub-pixels; 1.25 mm slices: two strata.
        let fine = VoxelSamples::new(0.6, 1.25);
        assert_eq!(fine.offsets, vec![[0.0, 0.0, -0.3125], [0.0, 0.0, 0.3125]]);
    }
}
