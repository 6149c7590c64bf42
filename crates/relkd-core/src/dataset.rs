//! The multi-site prostate layout (SPEC §2): one folder per site holding `CaseNN.nii.gz` images
//! and `CaseNN_segmentation.nii.gz` masks (BMC spells `_Segmentation`).
//!
//! Discovery never stops at the first bad case: every problem is collected per site, so a user
//! sees all of them at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::nifti_io::{Volume, read_volume};
use crate::transforms::binarize;

/// The six sites of the paper, with the folder names seen in the wild.
pub const PAPER_SITES: [(&str, &str, &[&str]); 6] = [
    ("S1", "RUNMC", &["RUNMC", "ISBI"]),
    ("S2", "BMC", &["BMC", "ISBI_1.5"]),
    ("S3", "HCRUDB", &["HCRUDB", "I2CVB"]),
    ("S4", "UCL", &["UCL"]),
    ("S5", "BIDMC", &["BIDMC"]),
    ("S6", "HK", &["HK"]),
];

/// Cases per site in the distributed dataset, in the order of [`PAPER_SITES`] (SPEC §2).
pub const SAML_CASES: [usize; 6] = [30, 30, 19, 13, 12, 12];

/// The paper's id ("S1"…"S6") and canonical name of a site folder, if it is one of the six.
pub fn paper_site(folder: &str) -> Option<(&'static str, &'static str)> {
    PAPER_SITES
        .iter()
        .find(|(_, _, aliases)| aliases.iter().any(|a| a.eq_ignore_ascii_case(folder)))
        .map(|(id, name, _)| (*id, *name))
}

/// One image with its mask, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFiles {
    /// `Case07`.
    pub id: String,
    pub image: PathBuf,
    pub mask: PathBuf,
}

/// A site folder and the cases found in it.
#[derive(Debug, Clone)]
pub struct Site {
    /// The folder name, as the user's configs refer to it.
    pub name: String,
    pub dir: PathBuf,
    pub cases: Vec<CaseFiles>,
    /// Files that could not be paired (image without mask, mask without image).
    pub problems: Vec<Problem>,
    /// NIfTI files that are not SAML case names (`CaseNN`, `CaseNN_segmentation`), left out:
    /// e.g. `infer`'s masks written beside the images. Reported, never a failure.
    pub ignored: Vec<PathBuf>,
}

impl Site {
    /// "S2 BMC" for a paper site, else the folder name.
    pub fn label(&self) -> String {
        match paper_site(&self.name) {
            Some((id, _)) => format!("{id} {}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Something wrong with one case; the case is unusable but the rest of the dataset is not.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub site: String,
    pub case: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: {}", self.site, self.case, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no site folders with CaseNN.nii[.gz] images found (expected a folder per site, SPEC §2)")]
    Empty { path: PathBuf },
    #[error(
        "{path} holds CaseNN images itself: it looks like one site's folder; give the folder above it, \
         which holds one folder per site ({parent})"
    )]
    SiteFolder { path: PathBuf, parent: PathBuf },
    #[error("unknown site '{name}'; the data at {root} has: {}", available.join(", "))]
    UnknownSite { name: String, root: PathBuf, available: Vec<String> },
}

/// All sites under a data root.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    /// In paper order (S1…S6) first, then other folders by name.
    pub sites: Vec<Site>,
}

impl Dataset {
    /// Finds the site folders and pairs each image with its mask.
    pub fn discover(root: &Path) -> Result<Self, DatasetError> {
        let io = |source| DatasetError::Io { path: root.into(), source };
        let mut sites = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(root).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let site = discover_site(&dir)?;
            if !site.cases.is_empty() || !site.problems.is_empty() {
                sites.push(site);
            }
        }
        if sites.is_empty() {
            let as_site = discover_site(root)?;
            if !as_site.cases.is_empty() || !as_site.problems.is_empty() {
                let parent = root.canonicalize().ok().and_then(|p| p.parent().map(Path::to_path_buf));
                return Err(DatasetError::SiteFolder { path: root.into(), parent: parent.unwrap_or_default() });
            }
            return Err(DatasetError::Empty { path: root.into() });
        }
        let order = |s: &Site| match paper_site(&s.name) {
            Some((id, _)) => (0, id.to_string()),
            None => (1, s.name.clone()),
        };
        sites.sort_by_key(order);
        Ok(Self { root: root.into(), sites })
    }

    /// The site named `name` (folder name, canonical name or paper id, any case).
    pub fn site(&self, name: &str) -> Result<&Site, DatasetError> {
        self.sites
            .iter()
            .find(|s| {
                s.name.eq_ignore_ascii_case(name)
                    || paper_site(&s.name)
                        .is_some_and(|(id, canon)| id.eq_ignore_ascii_case(name) || canon.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| DatasetError::UnknownSite {
                name: name.into(),
                root: self.root.clone(),
                available: self.sites.iter().map(|s| s.name.clone()).collect(),
            })
    }
}

/// A SAML case name, any letter case: `Case` and digits (`Case07`).
fn is_case_name(stem: &str) -> bool {
    stem.len() > 4 && stem[..4].eq_ignore_ascii_case("case") && stem[4..].bytes().all(|b| b.is_ascii_digit())
}

fn discover_site(dir: &Path) -> Result<Site, DatasetError> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let mut images = BTreeMap::new();
    let mut masks = BTreeMap::new();
    let mut ignored = Vec::new();
    let io = |source| DatasetError::Io { path: dir.into(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".nii.gz").or_else(|| file.strip_suffix(".nii")) else {
            continue;
        };
        let lower = stem.to_ascii_lowercase();
        match lower.strip_suffix("_segmentation") {
            Some(case) if is_case_name(case) => {
                masks.insert(case.to_string(), (stem[..case.len()].to_string(), path));
            }
            None if is_case_name(&lower) => {
                images.insert(lower, (stem.to_string(), path));
            }
            _ => ignored.push(path),
        }
    }
    ignored.sort();
    let mut site = Site { name: name.clone(), dir: dir.into(), cases: Vec::new(), problems: Vec::new(), ignored };
    for (key, (id, image)) in &images {
        match masks.get(key) {
            Some((_, mask)) => site.cases.push(CaseFiles { id: id.clone(), image: image.clone(), mask: mask.clone() }),
            None => site.problems.push(Problem {
                site: name.clone(),
                case: id.clone(),
                message: format!("no mask {id}_segmentation.nii.gz beside {}", image.display()),
            }),
        }
    }
    for (key, (id, mask)) in &masks {
        if !images.contains_key(key) {
            site.problems.push(Problem {
                site: name.clone(),
                case: id.clone(),
                message: format!("mask {} has no image {id}.nii.gz", mask.display()),
            });
        }
    }
    Ok(site)
}

/// A case read from disk: the image and its binarised mask on the same grid.
#[derive(Debug, Clone)]
pub struct Case {
    pub site: String,
    pub id: String,
    pub image: Volume,
    /// 0/1 per voxel, same layout as `image.data`.
    pub mask: Vec<u8>,
    /// Distinct raw label values before binarisation (e.g. [0, 1, 2] for RUNMC).
    pub label_values: Vec<i32>,
}

/// Largest difference tolerated between the image's and the mask's affine entries (mm).
const AFFINE_TOLERANCE: f64 = 1e-3;

/// Why a label volume (called `what`) is not on the image's grid: another shape, or an affine
/// that differs by more than [`AFFINE_TOLERANCE`]; `None` when it is.
pub fn grid_mismatch(image: &Volume, labels: &Volume, what: &str) -> Option<String> {
    if image.dims != labels.dims {
        return Some(format!("image shape {:?} but {what} shape {:?}", image.dims, labels.dims));
    }
    let max_diff = image
        .affine
        .iter()
        .flatten()
        .zip(labels.affine.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    (max_diff > AFFINE_TOLERANCE).then(|| format!("image and {what} affines differ by up to {max_diff:.4} mm"))
}

/// Reads a case and checks that image and mask share shape and affine.
pub fn load_case(site: &str, files: &CaseFiles) -> Result<Case, Problem> {
    let problem = |message: String| Problem { site: site.into(), case: files.id.clone(), message };
    let image = read_volume(&files.image).map_err(|e| problem(e.to_string()))?;
    let labels = read_volume(&files.mask).map_err(|e| problem(e.to_string()))?;
    if let Some(mismatch) = grid_mismatch(&image, &labels, "mask") {
        return Err(problem(mismatch));
    }
    let mut label_values: Vec<i32> = labels.data.iter().map(|&v| v.round() as i32).collect();
    label_values.sort_unstable();
    label_values.dedup();
    let mask = binarize(&labels.data);
    Ok(Case { site: site.into(), id: files.id.clone(), image, mask, label_values })
}

/// Splits a site's cases into (train, validation) at the case level, so no patient's slices
/// land on both sides. Deterministic per seed; at least one case goes to validation when there
/// are two or more.
pub fn split_cases(cases: &[CaseFiles], val_fraction: f32, seed: u64) -> (Vec<CaseFiles>, Vec<CaseFiles>) {
    let mut shuffled = cases.to_vec();
    shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut n_val = (cases.len() as f32 * val_fraction).round() as usize;
    if cases.len() >= 2 {
        n_val = n_val.clamp(1, cases.len() - 1);
    } else {
        n_val = 0;
    }
    let val = shuffled.split_off(cases.len() - n_val);
    (shuffled, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<CaseFiles> {
        (0..n)
            .map(|i| CaseFiles {
                id: format!("Case{i:02}"),
                image: format!("{i}.nii").into(),
                mask: format!("{i}m.nii").into(),
            })
            .collect()
    }

    #[test]
    fn splits_are_by_case_and_deterministic() {
        let cases = files(10);
        let (train, val) = split_cases(&cases, 0.2, 1);
        assert_eq!((train.len(), val.len()), (8, 2));
        assert!(train.iter().all(|t| !val.contains(t)));
        assert_eq!(split_cases(&cases, 0.2, 1), (train, val));
        assert_eq!(split_cases(&files(2), 0.01, 0).1.len(), 1);
        assert_eq!(split_cases(&files(1), 0.5, 0).1.len(), 0);
    }

    #[test]
    fn only_saml_case_names_are_cases() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("HK");
        std::fs::create_dir(&site).unwrap();
        for f in ["Case00.nii.gz", "Case00_segmentation.nii.gz", "case01.nii", "Case01_Segmentation.nii"] {
            std::fs::write(site.join(f), b"").unwrap();
        }
        // infer's outputs beside the images, and a folder of its masks: not cases, not problems.
        for f in ["Case00_mask.nii.gz", "Case00_prob.nii.gz", "notes.txt"] {
            std::fs::write(site.join(f), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join("HK_masks")).unwrap();
        std::fs::write(dir.path().join("HK_masks/Case00_mask.nii.gz"), b"").unwrap();
        let data = Dataset::discover(dir.path()).unwrap();
        assert_eq!(data.sites.len(), 1);
        let hk = &data.sites[0];
        assert_eq!(hk.cases.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["Case00", "case01"]);
        assert!(hk.problems.is_empty(), "{:?}", hk.problems);
        let ignored: Vec<_> = hk.ignored.iter().map(|p| p.file_name().unwrap().to_string_lossy()).collect();
        assert_eq!(ignored, ["Case00_mask.nii.gz", "Case00_prob.nii.gz"]);
        assert!((is_case_name("Case12") && is_case_name("CASE3")) && !(is_case_name("Case") || is_case_name("Case1a")));

        // A site folder given as the root: the error says to pass its parent.
        let err = Dataset::discover(&site).unwrap_err().to_string();
        assert!(err.contains("looks like one site's folder") && err.contains("folder above it"), "{err}");
    }

    #[test]
    fn paper_site_aliases() {
        assert_eq!(paper_site("ISBI_1.5"), Some(("S2", "BMC")));
        assert_eq!(paper_site("i2cvb"), Some(("S3", "HCRUDB")));
        assert_eq!(paper_site("Elsewhere"), None);
    }
}
