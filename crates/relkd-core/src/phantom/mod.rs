//! A synthetic multi-site prostate MRI dataset in the layout of SPEC §2.
//!
//! Each case is a male pelvis defined once in 3D at true scale ([`anatomy`]: body, fat,
//! muscles, pelvic bones and femoral heads, bladder, rectum, seminal vesicles, and the gland
//! with its zones, capsule and venous plexus), then acquired by its site ([`render`]): the
//! site's field of view, slice thickness and count, echo time, coil, point spread, SNR and
//! intensity scale. That is the domain shift a student must survive on an unseen site. The
//! layout's quirks are reproduced: BMC spells its masks `_Segmentation`, RUNMC labels the
//! central gland 2 and the peripheral zone 1.
//!
//! Deterministic: the same [`PhantomConfig`] writes byte-identical files.

mod anatomy;
mod gland;
mod organs;
mod preview;
mod render;
mod shapes;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use anatomy::Structure;
pub use render::{Coil, NATIVE_MATRIX, SITES, SiteStyle};

use crate::nifti_io::{NiftiError, new_header, write_volume};

/// The in-plane matrix: each site's field of view resampled to `Pixels(n)`², or the
/// distributed data's own 384².
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "MatrixRepr", into = "MatrixRepr")]
pub enum Matrix {
    Native,
    Pixels(usize),
}

impl Matrix {
    pub fn pixels(self) -> usize {
        match self {
            Matrix::Native => NATIVE_MATRIX,
            Matrix::Pixels(n) => n,
        }
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matrix::Native => f.write_str("native"),
            Matrix::Pixels(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Matrix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Matrix::Native),
            _ => s.parse().map(Matrix::Pixels).map_err(|_| format!("'{s}' is neither a pixel count nor 'native'")),
        }
    }
}

/// YAML form of [`Matrix`]: a number or the word `native`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum MatrixRepr {
    Pixels(usize),
    Word(String),
}

impl TryFrom<MatrixRepr> for Matrix {
    type Error = String;
    fn try_from(r: MatrixRepr) -> Result<Self, String> {
        match r {
            MatrixRepr::Pixels(n) => Ok(Matrix::Pixels(n)),
            MatrixRepr::Word(w) => w.parse(),
        }
    }
}

impl From<Matrix> for MatrixRepr {
    fn from(m: Matrix) -> Self {
        match m {
            Matrix::Native => MatrixRepr::Word("native".into()),
            Matrix::Pixels(n) => MatrixRepr::Pixels(n),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhantomConfig {
    /// Number of sites, 1 to 6, taken in paper order (RUNMC, BMC, HCRUDB, UCL, BIDMC, HK).
    pub sites: usize,
    /// Cases per site.
    pub cases: usize,
    /// In-plane matrix (the real data is 384, `native`).
    pub size: Matrix,
    pub seed: u64,
}

impl Default for PhantomConfig {
    /// Small enough for the CPU demo: 6 sites × 8 cases of 128×128 in-plane.
    fn default() -> Self {
        Self { sites: 6, cases: 8, size: Matrix::Pixels(128), seed: 0 }
    }
}

/// Bumped whenever the rendering changes, so cached phantoms are regenerated.
pub const PHANTOM_VERSION: u32 = 3;

impl PhantomConfig {
    /// A line that identifies the dataset this config writes (stored as `phantom.txt`).
    pub fn manifest(&self) -> String {
        format!(
            "relkd phantom v{PHANTOM_VERSION} sites={} cases={} size={} seed={}\n",
            self.sites, self.cases, self.size, self.seed
        )
    }

    /// A folder name for this dataset in a cache.
    pub fn cache_name(&self) -> String {
        format!("phantom-v{PHANTOM_VERSION}-{}x{}-{}px-seed{}", self.sites, self.cases, self.size, self.seed)
    }
}

/// The name of the manifest file written at the dataset root.
pub const MANIFEST: &str = "phantom.txt";

/// Folder (under the dataset root) of the `--tissues` volumes: `tissues/SITE/CaseNN_tissues.nii.gz`.
pub const TISSUES: &str = "tissues";

/// What is written besides the dataset.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The structure volume each image was rendered from ([`Structure`] codes), under [`TISSUES`].
    pub tissues: bool,
    /// One PNG per site (its first case): axial, sagittal and coronal slices through the gland.
    pub preview: Option<PathBuf>,
}

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

/// Writes the phantom under `root` (one folder per site), the manifest and the `extras`.
/// `progress` is called with (cases written, cases in all) as cases finish. Returns the
/// number of cases written.
pub fn generate(
    config: &PhantomConfig,
    root: &Path,
    extras: &Extras,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<usize, PhantomError> {
    if !(1..=6).contains(&config.sites) {
        return Err(PhantomError::Sites(config.sites));
    }
    if config.size.pixels() < 16 {
        return Err(PhantomError::Size(config.size.pixels()));
    }
    if config.cases == 0 {
        return Err(PhantomError::Cases);
    }
    let mut folders = vec![];
    for style in &SITES[..config.sites] {
        folders.push(root.join(style.folder));
        if extras.tissues {
            folders.push(root.join(TISSUES).join(style.folder));
        }
    }
    folders.extend(extras.preview.clone());
    for dir in folders {
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
                        write_case(config, root, extras, site, case)?;
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

fn write_case(
    config: &PhantomConfig,
    root: &Path,
    extras: &Extras,
    site: usize,
    case: usize,
) -> Result<(), PhantomError> {
    let style = &SITES[site];
    let seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((site as u64) << 32 | case as u64);
    let rendered = render::render_case(style, config.size.pixels(), &mut ChaCha8Rng::seed_from_u64(seed));
    let header = new_header(rendered.spacing, &rendered.affine);
    let id = format!("Case{case:02}");
    let dir = root.join(style.folder);
    write_volume(&dir.join(format!("{id}.nii.gz")), &rendered.image, rendered.dims, &header)?;
    write_volume(&dir.join(format!("{id}{}.nii.gz", style.mask_suffix)), &rendered.labels, rendered.dims, &header)?;
    if extras.tissues {
        let path = root.join(TISSUES).join(style.folder).join(format!("{id}_tissues.nii.gz"));
        write_volume(&path, &rendered.structures, rendered.dims, &header)?;
    }
    if let (Some(dir), 0) = (&extras.preview, case) {
        let path = dir.join(format!("{}.png", style.folder));
        preview::render(&rendered, style).save(&path).map_err(|source| PhantomError::Io { path, source })?;
    }
    Ok(())
}

/// The site folder names the phantom writes, in paper order.
pub fn site_folders(count: usize) -> Vec<&'static str> {
    SITES.iter().take(count).map(|s| s.folder).collect()
}
