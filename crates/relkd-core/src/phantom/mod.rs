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

use crate::dataset::SAML_CASES;
use crate::nifti_io::{NiftiError, new_header, write_volume};

/// The in-plane matrix: each site's field of view resampled to `Pixels(n)`², or the
/// distributed data's own 384².
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "NumberOrWord", into = "NumberOrWord")]
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

/// YAML form of [`Matrix`] and [`CaseCount`]: a number, or a word (`native`, `saml`).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum NumberOrWord {
    Number(usize),
    Word(String),
}

impl TryFrom<NumberOrWord> for Matrix {
    type Error = String;
    fn try_from(r: NumberOrWord) -> Result<Self, String> {
        match r {
            NumberOrWord::Number(n) => Ok(Matrix::Pixels(n)),
            NumberOrWord::Word(w) => w.parse(),
        }
    }
}

impl From<Matrix> for NumberOrWord {
    fn from(m: Matrix) -> Self {
        match m {
            Matrix::Native => NumberOrWord::Word("native".into()),
            Matrix::Pixels(n) => NumberOrWord::Number(n),
        }
    }
}

/// Cases per site: one count for every site, or `saml`, each site's count in the distributed
/// dataset (SPEC §2: RUNMC 30, BMC 30, HCRUDB 19, UCL 13, BIDMC 12, HK 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "NumberOrWord", into = "NumberOrWord")]
pub enum CaseCount {
    Each(usize),
    Saml,
}

impl CaseCount {
    /// Cases of the site at `site` (paper order).
    pub fn of_site(self, site: usize) -> usize {
        match self {
            CaseCount::Each(n) => n,
            CaseCount::Saml => SAML_CASES[site],
        }
    }
}

impl fmt::Display for CaseCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseCount::Each(n) => write!(f, "{n}"),
            CaseCount::Saml => f.write_str("saml"),
        }
    }
}

impl FromStr for CaseCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "saml" => Ok(CaseCount::Saml),
            _ => s.parse().map(CaseCount::Each).map_err(|_| format!("'{s}' is neither a case count nor 'saml'")),
        }
    }
}

impl TryFrom<NumberOrWord> for CaseCount {
    type Error = String;
    fn try_from(r: NumberOrWord) -> Result<Self, String> {
        match r {
            NumberOrWord::Number(n) => Ok(CaseCount::Each(n)),
            NumberOrWord::Word(w) => w.parse(),
        }
    }
}

impl From<CaseCount> for NumberOrWord {
    fn from(c: CaseCount) -> Self {
        match c {
            CaseCount::Each(n) => NumberOrWord::Number(n),
            CaseCount::Saml => NumberOrWord::Word("saml".into()),
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
    pub cases: CaseCount,
    /// In-plane matrix (the real data is 384, `native`).
    pub size: Matrix,
    pub seed: u64,
    /// Cases per site of an evaluation pool, written under [`EVAL_POOL`] from their own random
    /// stream: more test cases of a site than its dataset has, for scoring only.
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_cases: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for PhantomConfig {
    /// Small enough for the CPU demo: 6 sites × 8 cases of 128×128 in-plane, no pool.
    fn default() -> Self {
        Self { sites: 6, cases: CaseCount::Each(8), size: Matrix::Pixels(128), seed: 0, eval_cases: 0 }
    }
}

/// Bumped whenever the rendering changes, so cached phantoms are regenerated.
pub const PHANTOM_VERSION: u32 = 4;

impl PhantomConfig {
    /// A line that identifies the dataset this config writes (stored as `phantom.txt`).
    pub fn manifest(&self) -> String {
        let pool = if self.eval_cases > 0 { format!(" eval_cases={}", self.eval_cases) } else { String::new() };
        format!(
            "relkd phantom v{PHANTOM_VERSION} sites={} cases={} size={} seed={}{pool}\n",
            self.sites, self.cases, self.size, self.seed
        )
    }

    /// A folder name for this dataset in a cache.
    pub fn cache_name(&self) -> String {
        let pool = if self.eval_cases > 0 { format!("-eval{}", self.eval_cases) } else { String::new() };
        format!("phantom-v{PHANTOM_VERSION}-{}x{}-{}px-seed{}{pool}", self.sites, self.cases, self.size, self.seed)
    }

    /// Cases the generation writes: every site's, then its pool's.
    pub fn total_cases(&self) -> usize {
        (0..self.sites).map(|s| self.cases.of_site(s) + self.eval_cases).sum()
    }
}

/// The name of the manifest file written at the dataset root.
pub const MANIFEST: &str = "phantom.txt";

/// Folder (under the dataset root) of the evaluation pool, laid out as a dataset of its own:
/// `eval/SITE/CaseNN.nii.gz`. Not a site folder, so [`crate::dataset::Dataset::discover`] of the
/// root never lists its cases.
pub const EVAL_POOL: &str = "eval";

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
    if (0..config.sites).any(|s| config.cases.of_site(s) == 0) {
        return Err(PhantomError::Cases);
    }
    let mut folders = vec![];
    for style in &SITES[..config.sites] {
        folders.push(root.join(style.folder));
        if extras.tissues {
            folders.push(root.join(TISSUES).join(style.folder));
        }
        if config.eval_cases > 0 {
            folders.push(root.join(EVAL_POOL).join(style.folder));
        }
    }
    folders.extend(extras.preview.clone());
    for dir in folders {
        std::fs::create_dir_all(&dir).map_err(|source| PhantomError::Io { path: dir, source })?;
    }
    let jobs: Vec<(usize, Draw)> = (0..config.sites)
        .flat_map(|s| {
            let cases = (0..config.cases.of_site(s)).map(Draw::Case);
            cases.chain((0..config.eval_cases).map(Draw::Pool)).map(move |d| (s, d))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), PhantomError> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(site, draw)) = jobs.get(i) else { return Ok(()) };
                        write_case(config, root, extras, site, draw)?;
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

/// One case to write: the site's own `Case(n)`, or its evaluation pool's `Pool(n)`.
#[derive(Debug, Clone, Copy)]
enum Draw {
    Case(usize),
    Pool(usize),
}

fn write_case(
    config: &PhantomConfig,
    root: &Path,
    extras: &Extras,
    site: usize,
    draw: Draw,
) -> Result<(), PhantomError> {
    let style = &SITES[site];
    // Bit 31 of the stream separates the pool's draws from the site's cases (both under 2³¹).
    let (case, stream, dir) = match draw {
        Draw::Case(n) => (n, n as u64, root.join(style.folder)),
        Draw::Pool(n) => (n, 1 << 31 | n as u64, root.join(EVAL_POOL).join(style.folder)),
    };
    let seed = config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((site as u64) << 32 | stream);
    let rendered = render::render_case(style, config.size.pixels(), &mut ChaCha8Rng::seed_from_u64(seed));
    let header = new_header(rendered.spacing, &rendered.affine);
    let id = format!("Case{case:02}");
    write_volume(&dir.join(format!("{id}.nii.gz")), &rendered.image, rendered.dims, &header)?;
    write_volume(&dir.join(format!("{id}{}.nii.gz", style.mask_suffix)), &rendered.labels, rendered.dims, &header)?;
    // The extras describe the site's own cases; the pool is for scoring only.
    let own = matches!(draw, Draw::Case(_));
    if extras.tissues && own {
        let path = root.join(TISSUES).join(style.folder).join(format!("{id}_tissues.nii.gz"));
        write_volume(&path, &rendered.structures, rendered.dims, &header)?;
    }
    if let (Some(dir), Draw::Case(0)) = (&extras.preview, draw) {
        let path = dir.join(format!("{}.png", style.folder));
        preview::render(&rendered, style).save(&path).map_err(|source| PhantomError::Io { path, source })?;
    }
    Ok(())
}

/// The site folder names the phantom writes, in paper order.
pub fn site_folders(count: usize) -> Vec<&'static str> {
    SITES.iter().take(count).map(|s| s.folder).collect()
}
