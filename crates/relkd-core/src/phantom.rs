//! A synthetic multi-site prostate MRI dataset in the layout of SPEC §2.
//!
//! Each case is a T2-like pelvis rendered in millimetres: body and subcutaneous fat, fat pads,
//! femoral heads, rectum, bladder, a periprostatic venous rim and the gland itself (central
//! gland and peripheral zone) with a per-case shape, size and position. Each site then applies
//! its own acquisition: field of view, slice count and thickness, tissue contrast, gamma,
//! intensity scale, bias field, blur and Rician noise. That is the domain shift a student must
//! survive on an unseen site. The layout's quirks are reproduced: BMC spells its masks
//! `_Segmentation`, RUNMC labels the central gland 2 and the peripheral zone 1.
//!
//! Deterministic: the same [`PhantomConfig`] writes byte-identical files.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::nifti_io::{Affine, NiftiError, new_header, write_volume};

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhantomConfig {
    /// Number of sites, 1 to 6, taken in paper order (RUNMC, BMC, HCRUDB, UCL, BIDMC, HK).
    pub sites: usize,
    /// Cases per site.
    pub cases: usize,
    /// In-plane size in voxels (the real data is 384).
    pub size: usize,
    pub seed: u64,
}

impl Default for PhantomConfig {
    /// Small enough for the CPU demo: 6 sites × 8 cases of 128×128×(14…30).
    fn default() -> Self {
        Self { sites: 6, cases: 8, size: 128, seed: 0 }
    }
}

/// Bumped whenever the rendering changes, so cached phantoms are regenerated.
pub const PHANTOM_VERSION: u32 = 1;

impl PhantomConfig {
    /// A line that identifies the dataset this config writes (stored as `phantom.txt`).
    pub fn manifest(&self) -> String {
        format!(
            "relkd phantom v{PHANTOM_VERSION} sites={} cases={} size={} seed={}\n",
            self.sites, self.cases, self.size, self.seed
        )
    }
}

/// The name of the manifest file written at the dataset root.
pub const MANIFEST: &str = "phantom.txt";

#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("sites must be between 1 and 6, got {0}")]
    Sites(usize),
    #[error("size must be at least 16 voxels, got {0}")]
    Size(usize),
    #[error("cases must be at least 1")]
    Cases,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Nifti(#[from] NiftiError),
}

/// Tissue classes, in drawing order (later ones paint over earlier ones).
#[derive(Clone, Copy)]
enum Tissue {
    Air,
    Muscle,
    Fat,
    BoneCortex,
    Marrow,
    RectalWall,
    RectalLumen,
    Bladder,
    VenousRim,
    CentralGland,
    PeripheralZone,
}

/// One site's acquisition.
struct SiteStyle {
    folder: &'static str,
    mask_suffix: &'static str,
    /// Central gland 2, peripheral zone 1 (RUNMC's quirk) instead of 1 everywhere.
    zone_labels: bool,
    fov_mm: f32,
    slice_mm: f32,
    slices: (usize, usize),
    /// Peak of the int16 intensity range.
    scale: f32,
    gamma: f32,
    bias: f32,
    /// Noise σ relative to `scale`.
    noise: f32,
    /// Gaussian blur σ in voxels of a 384 grid (scaled with the size).
    blur: f32,
    /// Relative T2 signal of (peripheral zone, central gland, fat, rim).
    contrast: [f32; 4],
}

const SITES: [SiteStyle; 6] = [
    SiteStyle {
        folder: "RUNMC",
        mask_suffix: "_segmentation",
        zone_labels: true,
        fov_mm: 140.0,
        slice_mm: 3.6,
        slices: (18, 24),
        scale: 900.0,
        gamma: 1.0,
        bias: 0.45,
        noise: 0.035,
        blur: 0.6,
        contrast: [0.62, 0.36, 0.78, 0.70],
    },
    SiteStyle {
        folder: "BMC",
        mask_suffix: "_Segmentation",
        zone_labels: false,
        fov_mm: 150.0,
        slice_mm: 4.0,
        slices: (15, 20),
        scale: 1400.0,
        gamma: 1.3,
        bias: 0.25,
        noise: 0.07,
        blur: 1.2,
        contrast: [0.50, 0.40, 0.70, 0.55],
    },
    SiteStyle {
        folder: "HCRUDB",
        mask_suffix: "_segmentation",
        zone_labels: false,
        fov_mm: 115.0,
        slice_mm: 2.0,
        slices: (26, 30),
        scale: 420.0,
        gamma: 0.8,
        bias: 0.12,
        noise: 0.03,
        blur: 0.3,
        contrast: [0.72, 0.30, 0.85, 0.80],
    },
    SiteStyle {
        folder: "UCL",
        mask_suffix: "_segmentation",
        zone_labels: false,
        fov_mm: 165.0,
        slice_mm: 4.0,
        slices: (14, 18),
        scale: 1600.0,
        gamma: 1.1,
        bias: 0.2,
        noise: 0.05,
        blur: 1.6,
        contrast: [0.58, 0.38, 0.74, 0.64],
    },
    SiteStyle {
        folder: "BIDMC",
        mask_suffix: "_segmentation",
        zone_labels: false,
        fov_mm: 130.0,
        slice_mm: 3.0,
        slices: (20, 24),
        scale: 650.0,
        gamma: 0.7,
        bias: 0.35,
        noise: 0.06,
        blur: 0.9,
        contrast: [0.46, 0.34, 0.66, 0.52],
    },
    SiteStyle {
        folder: "HK",
        mask_suffix: "_segmentation",
        zone_labels: false,
        fov_mm: 175.0,
        slice_mm: 3.5,
        slices: (14, 18),
        scale: 1100.0,
        gamma: 1.45,
        bias: 0.15,
        noise: 0.09,
        blur: 1.4,
        contrast: [0.66, 0.44, 0.80, 0.72],
    },
];

/// Writes the phantom under `root` (one folder per site) and the manifest. `progress` is called
/// with (cases written, cases in all) as cases finish. Returns the number of cases written.
pub fn generate(
    config: &PhantomConfig,
    root: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<usize, PhantomError> {
    if !(1..=6).contains(&config.sites) {
        return Err(PhantomError::Sites(config.sites));
    }
    if config.size < 16 {
        return Err(PhantomError::Size(config.size));
    }
    if config.cases == 0 {
        return Err(PhantomError::Cases);
    }
    for style in &SITES[..config.sites] {
        let dir = root.join(style.folder);
        std::fs::create_dir_all(&dir).map_err(|source| PhantomError::Io { path: dir, source })?;
    }
    let jobs: Vec<(usize, usize)> = (0..config.sites).flat_map(|s| (0..config.cases).map(move |c| (s, c))).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), PhantomError> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(site, case)) = jobs.get(i) else { return Ok(()) };
                        write_case(config, root, site, case)?;
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("phantom worker panicked"))
    })?;
    let manifest = root.join(MANIFEST);
    std::fs::write(&manifest, config.manifest()).map_err(|source| PhantomError::Io { path: manifest, source })?;
    Ok(jobs.len())
}

fn write_case(config: &PhantomConfig, root: &Path, site: usize, case: usize) -> Result<(), PhantomError> {
    let style = &SITES[site];
    let seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((site as u64) << 32 | case as u64);
    let rendered = render_case(style, config.size, &mut ChaCha8Rng::seed_from_u64(seed));
    let header = new_header(rendered.spacing, &rendered.affine);
    let dir = root.join(style.folder);
    let id = format!("Case{case:02}");
    write_volume(&dir.join(format!("{id}.nii.gz")), &rendered.image, rendered.dims, &header)?;
    write_volume(&dir.join(format!("{id}{}.nii.gz", style.mask_suffix)), &rendered.labels, rendered.dims, &header)?;
    Ok(())
}

struct Rendered {
    image: Vec<i16>,
    labels: Vec<u8>,
    dims: [usize; 3],
    spacing: [f32; 3],
    affine: Affine,
}

/// A smooth random field: a sum of plane waves with wavelengths around `wavelength_mm`.
struct Waves(Vec<([f32; 3], f32, f32)>);

impl Waves {
    fn new(rng: &mut ChaCha8Rng, count: usize, wavelength_mm: f32) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    let theta = rng.random_range(0.0..PI);
                    let phi = rng.random_range(0.0..2.0 * PI);
                    let k = 2.0 * PI / (wavelength_mm * rng.random_range(0.7..1.4));
                    let dir = [theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos() * 0.5];
                    (dir.map(|d| d * k), rng.random_range(0.0..2.0 * PI), 1.0 / count as f32)
                })
                .collect(),
        )
    }

    /// In roughly [-1, 1].
    fn at(&self, p: [f32; 3]) -> f32 {
        self.0.iter().map(|(k, phase, amp)| amp * (k[0] * p[0] + k[1] * p[1] + k[2] * p[2] + phase).sin()).sum::<f32>()
            * 2.0
    }
}

fn render_case(style: &SiteStyle, size: usize, rng: &mut ChaCha8Rng) -> Rendered {
    let nz = rng.random_range(style.slices.0..=style.slices.1);
    let dxy = style.fov_mm / size as f32;
    let spacing = [dxy, dxy, style.slice_mm];
    let mut u = |lo: f32, hi: f32| rng.random_range(lo..hi);

    // Anatomy, in mm around the centre of the field of view (y grows posterior, z superior).
    let body = (u(105.0, 135.0), u(80.0, 100.0), u(5.0, 15.0)); // semi-axes x, y and y offset
    let gland_c = [u(-6.0, 6.0), u(-6.0, 6.0), u(-4.0, 4.0)];
    let gland_r = [u(16.0, 26.0), u(12.0, 19.0), u(14.0, 22.0)];
    let lobes = (u(0.03, 0.10), u(0.0, 2.0 * PI), u(0.02, 0.06), u(0.0, 2.0 * PI));
    let rectum_c = [gland_c[0] + u(-3.0, 3.0), gland_c[1] + gland_r[1] + u(9.0, 14.0)];
    let rectum_r = u(11.0, 17.0);
    let lumen_gas = u(0.0, 1.0) < 0.6;
    let bladder_c = [gland_c[0] + u(-5.0, 5.0), gland_c[1] - u(10.0, 20.0), gland_c[2] + gland_r[2] + u(14.0, 24.0)];
    let bladder_r = [u(28.0, 45.0), u(22.0, 32.0), u(22.0, 32.0)];
    let femur_x = u(62.0, 80.0);
    let femur_y = u(-5.0, 15.0);
    let femur_r = u(17.0, 24.0);
    let femur_top = gland_c[2] + u(-5.0, 15.0);
    let bias_dir = u(0.0, 2.0 * PI);
    let bias_curve = u(-0.5, 0.5);
    let texture = Waves::new(rng, 6, 18.0);
    let fat_pads = Waves::new(rng, 5, 45.0);

    let [pz, cg, fat, rim] = style.contrast;
    let signal = |t: Tissue| match t {
        Tissue::Air => 0.0,
        Tissue::Muscle => 0.24,
        Tissue::Fat => fat,
        Tissue::BoneCortex => 0.08,
        Tissue::Marrow => 0.5,
        Tissue::RectalWall => 0.3,
        Tissue::RectalLumen => {
            if lumen_gas {
                0.04
            } else {
                0.75
            }
        }
        Tissue::Bladder => 0.95,
        Tissue::VenousRim => rim,
        Tissue::CentralGland => cg,
        Tissue::PeripheralZone => pz,
    };

    let plane = size * size;
    let mut intensity = vec![0f32; plane * nz];
    let mut labels = vec![0u8; plane * nz];
    let half_fov = style.fov_mm / 2.0;
    let z0 = -(nz as f32 - 1.0) * style.slice_mm / 2.0;
    for z in 0..nz {
        let pz_mm = z0 + z as f32 * style.slice_mm;
        for y in 0..size {
            let py = (y as f32 + 0.5) * dxy - half_fov;
            for x in 0..size {
                let px = (x as f32 + 0.5) * dxy - half_fov;
                let p = [px, py, pz_mm];
                let i = x + size * (y + size * z);

                let body_rho = ((px / body.0).powi(2) + ((py - body.2) / body.1).powi(2)).sqrt();
                let mut tissue = if body_rho > 1.0 {
                    Tissue::Air
                } else if body_rho > 1.0 - 12.0 / body.1 || fat_pads.at(p) > 0.45 {
                    Tissue::Fat
                } else {
                    Tissue::Muscle
                };
                if pz_mm < femur_top {
                    let d = ((px.abs() - femur_x).powi(2) + (py - femur_y).powi(2)).sqrt();
                    if d < femur_r {
                        tissue = if d > femur_r - 3.0 { Tissue::BoneCortex } else { Tissue::Marrow };
                    }
                }
                let dr = ((px - rectum_c[0]).powi(2) + (py - rectum_c[1]).powi(2)).sqrt();
                if dr < rectum_r {
                    tissue = if dr > rectum_r - 4.0 { Tissue::RectalWall } else { Tissue::RectalLumen };
                }
                let b = [0, 1, 2].map(|k| (p[k] - bladder_c[k]) / bladder_r[k]);
                if b[0] * b[0] + b[1] * b[1] + b[2] * b[2] < 1.0 {
                    tissue = Tissue::Bladder;
                }
                // The gland narrows towards the apex (inferior).
                let d = [0, 1, 2].map(|k| p[k] - gland_c[k]);
                let taper = 1.0 - 0.2 * (d[2] / gland_r[2]).clamp(-1.0, 1.0).min(0.0).abs();
                let g = [d[0] / (gland_r[0] * taper), d[1] / (gland_r[1] * taper), d[2] / gland_r[2]];
                let rho = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt();
                let angle = g[1].atan2(g[0]);
                let edge = 1.0 + lobes.0 * (2.0 * angle + lobes.1).sin() + lobes.2 * (3.0 * angle + lobes.3).sin();
                if rho < edge {
                    let peripheral = g[1] > 0.05 && rho > 0.55 * edge;
                    tissue = if peripheral { Tissue::PeripheralZone } else { Tissue::CentralGland };
                    labels[i] = if style.zone_labels && !peripheral { 2 } else { 1 };
                } else if rho < edge * 1.12 && matches!(tissue, Tissue::Muscle | Tissue::Fat) {
                    tissue = Tissue::VenousRim;
                }

                let base = signal(tissue);
                if base > 0.0 {
                    let textured = (base * (1.0 + 0.08 * texture.at(p))).clamp(0.0, 1.0);
                    let radial = (px * bias_dir.cos() + py * bias_dir.sin()) / style.fov_mm;
                    let field = 1.0 + style.bias * (radial + bias_curve * (px * px + py * py) / (half_fov * half_fov));
                    intensity[i] = textured.powf(style.gamma) * style.scale * field.max(0.2);
                }
            }
        }
    }

    let sigma = style.blur * size as f32 / 384.0;
    if sigma > 0.05 {
        for slice in intensity.chunks_mut(plane) {
            gaussian_blur(slice, size, sigma);
        }
    }
    let noise_sigma = style.noise * style.scale;
    let image = intensity
        .iter()
        .map(|&v| {
            // Magnitude images carry Rician noise: |signal + complex Gaussian|.
            let (re, im) = (v + gaussian(rng) * noise_sigma, gaussian(rng) * noise_sigma);
            (re * re + im * im).sqrt().round().clamp(0.0, i16::MAX as f32) as i16
        })
        .collect();

    let mut affine = [[0.0; 4]; 4];
    affine[0][0] = spacing[0] as f64;
    affine[1][1] = spacing[1] as f64;
    affine[2][2] = spacing[2] as f64;
    affine[0][3] = -(half_fov as f64);
    affine[1][3] = -(half_fov as f64);
    affine[2][3] = z0 as f64;
    affine[3][3] = 1.0;
    Rendered { image, labels, dims: [size, size, nz], spacing, affine }
}

/// Standard normal draw (Box–Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
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

/// The site folder names the phantom writes, in paper order.
pub fn site_folders(count: usize) -> Vec<&'static str> {
    SITES.iter().take(count).map(|s| s.folder).collect()
}
