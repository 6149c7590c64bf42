//! `train data`: what is in a dataset, per site, and what is wrong with it.

use std::collections::BTreeSet;
use std::fmt::Write;

use relkd_core::dataset::{Dataset, Problem, load_case};

/// Statistics of one site's readable cases.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSummary {
    /// "S2 BMC" for a paper site, else the folder name.
    pub label: String,
    pub cases: usize,
    pub unusable: usize,
    pub slices: usize,
    /// Distinct in-plane shapes `(nx, ny)`.
    pub shapes: BTreeSet<(usize, usize)>,
    /// Fewest and most slices of a case.
    pub depth: (usize, usize),
    /// Median voxel size in mm.
    pub spacing: [f32; 3],
    pub intensity: (f32, f32),
    /// Mean fraction of voxels labelled foreground.
    pub foreground: f64,
    /// Raw label values seen before binarisation.
    pub labels: BTreeSet<i32>,
    /// Mask suffixes seen (`_segmentation`, `_Segmentation`).
    pub mask_spellings: BTreeSet<String>,
}

pub struct Report {
    pub sites: Vec<SiteSummary>,
    pub problems: Vec<Problem>,
    /// Files that are not SAML case names, left out of the dataset (not a failure).
    pub ignored: Vec<std::path::PathBuf>,
}

/// Reads every case once; `tick` is called after each.
pub fn summarize(dataset: &Dataset, tick: &dyn Fn()) -> Report {
    let mut problems = Vec::new();
    let mut sites = Vec::new();
    let mut ignored = Vec::new();
    for site in &dataset.sites {
        problems.extend(site.problems.iter().cloned());
        ignored.extend(site.ignored.iter().cloned());
        // An image without its mask (or a mask without its image) is a case too, and a bad one.
        let unpaired: BTreeSet<&str> = site.problems.iter().map(|p| p.case.as_str()).collect();
        let mut s = SiteSummary {
            label: site.label(),
            cases: site.cases.len() + unpaired.len(),
            unusable: unpaired.len(),
            slices: 0,
            shapes: BTreeSet::new(),
            depth: (usize::MAX, 0),
            spacing: [0.0; 3],
            intensity: (f32::INFINITY, f32::NEG_INFINITY),
            foreground: 0.0,
            labels: BTreeSet::new(),
            mask_spellings: BTreeSet::new(),
        };
        let mut spacings: [Vec<f32>; 3] = Default::default();
        let mut fractions = Vec::new();
        for files in &site.cases {
            let mask_name = files.mask.file_name().unwrap_or_default().to_string_lossy();
            if let Some(at) = mask_name.find("_segmentation").or_else(|| mask_name.find("_Segmentation")) {
                s.mask_spellings.insert(mask_name[at..at + "_segmentation".len()].to_string());
            }
            match load_case(&site.name, files) {
                Ok(case) => {
                    let (low, high) = case
                        .image
                        .data
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    if low == high {
                        s.unusable += 1;
                        problems.push(Problem {
                            site: site.name.clone(),
                            case: files.id.clone(),
                            message: format!("the image is constant ({low}): there is nothing to segment"),
                        });
                    }
                    let [nx, ny, nz] = case.image.dims;
                    s.slices += nz;
                    s.shapes.insert((nx, ny));
                    s.depth = (s.depth.0.min(nz), s.depth.1.max(nz));
                    for (axis, v) in spacings.iter_mut().zip(case.image.spacing) {
                        axis.push(v);
                    }
                    s.intensity = (s.intensity.0.min(low), s.intensity.1.max(high));
                    let fg = case.mask.iter().filter(|&&m| m != 0).count();
                    fractions.push(fg as f64 / case.mask.len() as f64);
                    s.labels.extend(case.label_values);
                }
                Err(problem) => {
                    s.unusable += 1;
                    problems.push(problem);
                }
            }
            tick();
        }
        s.spacing = spacings.map(|mut v| median(&mut v));
        if !fractions.is_empty() {
            s.foreground = fractions.iter().sum::<f64>() / fractions.len() as f64;
        }
        if s.depth.0 == usize::MAX {
            s.depth = (0, 0);
        }
        sites.push(s);
    }
    Report { sites, problems, ignored }
}

fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

impl Report {
    /// The per-site table as aligned text.
    pub fn table(&self) -> String {
        let header =
            ["site", "cases", "slices", "shape", "depth", "spacing mm", "intensity", "fg %", "labels", "mask file"];
        let rows: Vec<[String; 10]> = self
            .sites
            .iter()
            .map(|s| {
                let shape = match (s.shapes.first(), s.shapes.len()) {
                    (Some((x, y)), 1) => format!("{x}×{y}"),
                    (None, _) => "-".into(),
                    _ => format!("{} shapes", s.shapes.len()),
                };
                let cases =
                    if s.unusable > 0 { format!("{} ({} bad)", s.cases, s.unusable) } else { s.cases.to_string() };
                let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(" ");
                [
                    s.label.clone(),
                    cases,
                    s.slices.to_string(),
                    shape,
                    format!("{}–{}", s.depth.0, s.depth.1),
                    // A site without one readable case has no spacing or intensity to show.
                    if s.slices == 0 {
                        "-".into()
                    } else {
                        format!("{:.2}×{:.2}×{:.2}", s.spacing[0], s.spacing[1], s.spacing[2])
                    },
                    if s.slices == 0 { "-".into() } else { format!("{:.0}..{:.0}", s.intensity.0, s.intensity.1) },
                    format!("{:.2}", 100.0 * s.foreground),
                    s.labels.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(","),
                    join(&s.mask_spellings),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap())
            .collect();
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            writeln!(out, "{}", padded.join("  ").trim_end()).unwrap();
        };
        line(&mut out, &header.map(String::from));
        for r in &rows {
            line(&mut out, r);
        }
        out
    }
}
