//! Several grids of one `train experiment` command side by side: every judged comparison of
//! each grid (its `evidence.csv`) in one table, and their effects against the teacher's
//! guidance in one chart, a colour per grid — where a teacher-side option's cells sit beside
//! the default's.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use relkd_core::files::write_atomic;

use super::evidence::{EVIDENCE_CSV, EVIDENCE_HEADER, save};
use crate::charts::{GuidancePoint, effect_against_guidance};

/// One row of a grid's evidence.csv: what was compared, its interval and its guidance.
struct Row {
    label: String,
    target: String,
    effect: f64,
    low: f64,
    high: f64,
    guidance: f64,
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut lines = text.lines();
    ensure!(lines.next() == Some(EVIDENCE_HEADER), "{}: not an evidence table of this version", path.display());
    // Columns by their names in the header, so the table's column order is stated once.
    let column = |name: &str| EVIDENCE_HEADER.split(',').position(|c| c == name).expect("a column of the header");
    lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let field = |name: &str| {
                f.get(column(name)).copied().with_context(|| format!("{}: short row {line}", path.display()))
            };
            let number = |name: &str| -> anyhow::Result<f64> {
                field(name)?.parse().with_context(|| format!("{}: {name} in {line}", path.display()))
            };
            Ok(Row {
                label: format!("{} ← {} ({})", field("student")?, field("teacher")?, field("distiller")?),
                target: field("target")?.to_string(),
                effect: number("effect")?,
                low: number("low")?,
                high: number("high")?,
                guidance: number("guidance")?,
            })
        })
        .collect()
}

/// Writes `report.md` and `effect_vs_guidance.png` for the grids `(name, folder)` into `out`;
/// returns the report's path.
pub fn compare(grids: &[(String, PathBuf)], out: &Path) -> anyhow::Result<PathBuf> {
    if grids.len() < 2 {
        bail!("a comparison needs at least two grids");
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let mut md = String::from(
        "# Grids compared\n\nEvery distilled cell of each grid: its paired effect on the target with the 95% interval \
         over seeds and cases, and its teacher's Dice on the students' validation cases (guidance).\n\n\
         | grid | student ← teacher (distiller) | target | effect [95% CI] | guidance |\n|---|---|---|---|---|\n",
    );
    let mut points = Vec::new();
    for (series, (name, dir)) in grids.iter().enumerate() {
        for row in read_rows(&dir.join(EVIDENCE_CSV))? {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {:+.3} [{:+.3}, {:+.3}] | {:.3} |",
                row.label, row.target, row.effect, row.low, row.high, row.guidance
            );
            if row.guidance.is_finite() {
                points.push(GuidancePoint {
                    guidance: row.guidance,
                    effect: row.effect,
                    low: row.low,
                    high: row.high,
                    series,
                });
            }
        }
    }
    let names: Vec<&str> = grids.iter().map(|(n, _)| n.as_str()).collect();
    let chart = "effect_vs_guidance.png";
    save(out, chart, effect_against_guidance("paired effect against the teacher's guidance", &names, &points)?)?;
    let _ = write!(md, "\n![effect against guidance]({chart})\n");
    let report = out.join("report.md");
    write_atomic(&report, md.as_bytes()).with_context(|| format!("{}", report.display()))?;
    Ok(report)
}
