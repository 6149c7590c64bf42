//! The grid's answer to "does distillation help on the unseen site, and by how much": every
//! distilled cell's paired effect over its student's baseline with a 95% interval over seeds and
//! test cases ([`relkd_core::stats`]), beside the paper's difference for the pair; the variance
//! components, the smallest effect the grid could detect and the seeds a ±0.03 interval needs;
//! a forest plot per target site and the effects against the teacher's guidance.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use relkd_core::files::write_atomic;
use relkd_core::stats::{Components, PairedEffect};
use relkd_models::Architecture;

use super::report::{TABLE3, paper_column};
use super::tables::{CellKind, Tables};
use super::{GridSpec, Variant};
use crate::charts::{ForestRow, GuidancePoint, effect_against_guidance, forest};
use crate::report::{mean, paper_table2};

/// The interval half-width the grids aim for: narrower than the paper's smallest claimed
/// effect (+0.04, Table 2), so an effect of the paper's size would be told from none.
pub const TARGET_HALF_WIDTH: f64 = 0.03;

/// The evaluation pool's size the planner also sizes seeds for.
const POOL_CASES: usize = 40;

/// Seeds the planner looks up to.
const MAX_SEEDS: usize = 200;

/// One distilled cell against its baseline on one target.
struct Comparison {
    target: String,
    student: Architecture,
    teacher: Architecture,
    variant: Variant,
    /// `None` when a cell is missing; else the effect or why it cannot be judged.
    effect: Option<Result<PairedEffect, String>>,
    paper: Option<f64>,
    /// The teacher's mean Dice on the students' validation cases, over seeds.
    guidance: f64,
}

impl Comparison {
    fn label(&self) -> String {
        format!("{} ← {} ({})", self.student.display_name(), self.teacher.display_name(), self.variant.name())
    }
}

fn comparisons(tables: &Tables, spec: &GridSpec) -> Vec<Comparison> {
    let mut out = Vec::new();
    for target in tables.targets {
        for &student in &spec.students {
            for &teacher in &spec.teachers {
                let teacher_cells =
                    tables.cells.iter().filter(|c| c.target == *target && c.kind == CellKind::Teacher { teacher });
                let guidance = mean(teacher_cells.flat_map(|c| &c.guidance).map(|s| s.dice));
                for &variant in &spec.distillers {
                    let kind = CellKind::Distilled { student, teacher, variant };
                    let effect = tables
                        .effect(target, kind, CellKind::Baseline { student })
                        .map(|e| e.map_err(|e| e.to_string()));
                    let paper = paper_difference(student, teacher, variant, target);
                    out.push(Comparison { target: target.clone(), student, teacher, variant, effect, paper, guidance });
                }
            }
        }
    }
    out
}

/// The paper's w/ − w/o for the pair on `site`: Table 2 for the full distiller, Table 3 for
/// the ablation of its own pair (ENet ← DeepLabV3+); `None` elsewhere.
fn paper_difference(student: Architecture, teacher: Architecture, variant: Variant, site: &str) -> Option<f64> {
    let baseline = paper_table2("baseline", student, teacher, site)?;
    if variant == Variant::ALL_THREE {
        return Some(paper_table2("student", student, teacher, site)? - baseline);
    }
    let Variant::Relational { lm, kmm, aam } = variant else { return None };
    if (student, teacher) != (Architecture::Enet, Architecture::Deeplabv3plus) {
        return None;
    }
    let row = TABLE3.iter().find(|(switches, _, _)| *switches == (lm, kmm, aam))?;
    Some(row.2[paper_column(site)?] - baseline)
}

/// The report's evidence section; writes the forest plots and the guidance chart into `out` and
/// returns (markdown, file names).
pub(super) fn write(out: &Path, tables: &Tables, spec: &GridSpec) -> anyhow::Result<(String, Vec<String>)> {
    let comparisons = comparisons(tables, spec);
    let mut md = String::from(
        "## Does distillation help on the target site? Paired effects with 95% intervals\n\n\
         Each distilled student against its own baseline, w/ − w/o on the same seeds and test cases: the \
         mean over seeds × cases, and a 95% confidence interval that counts both sources of noise (a \
         two-way random-effects ANOVA of the paired differences with Satterthwaite's degrees of freedom; \
         README, \"How sure is a grid?\"). Detectable: the smallest true effect this grid finds (interval \
         clear of 0) 80% of the time. Paper: its difference for the same pair and site (Table 2 for LM + \
         KMM + AAM, Table 3 for ENet ← DeepLabV3+'s ablation), inside or outside our interval.\n\n\
         | student ← teacher (distiller) | target | effect [95% CI] | ± | seeds × cases | detectable | paper | paper in CI? |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for c in &comparisons {
        let paper = c.paper.map_or("–".into(), |p| format!("{p:+.3}"));
        let row = match &c.effect {
            None => "– (a cell is missing) | | | | | ".to_string(),
            Some(Err(why)) => format!("– ({why}) | | | | | "),
            Some(Ok(e)) => {
                let inside = c.paper.map_or("–", |p| if e.contains(p) { "inside" } else { "**outside**" });
                format!(
                    "{e} | {:.3} | {} × {} | {:.3} | {paper} | {inside}",
                    e.half_width(),
                    e.seeds,
                    e.cases,
                    e.detectable
                )
            }
        };
        let _ = writeln!(md, "| {} | {} | {row} |", c.label(), c.target);
    }
    md.push_str(&components_table(&comparisons));
    let csv = evidence_csv(&comparisons);
    write_atomic(&out.join(EVIDENCE_CSV), csv.as_bytes()).with_context(|| format!("{}", out.display()))?;
    let mut files = vec![EVIDENCE_CSV.to_string()];
    for target in tables.targets {
        let rows: Vec<ForestRow> = comparisons
            .iter()
            .filter(|c| c.target == *target)
            .filter_map(|c| {
                let e = c.effect.as_ref()?.as_ref().ok()?;
                Some(ForestRow { label: c.label(), effect: e.mean, low: e.low, high: e.high, paper: c.paper })
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let name = format!("forest_{target}.png");
        let title = format!("w/ − w/o on {target}, 95% intervals over seeds and cases");
        let x_label = "paired Dice difference (dot: effect; line: 95% interval; red ×: the paper's)";
        save(out, &name, forest(&title, x_label, &rows)?)?;
        let _ = write!(md, "\n![forest plot, {target}]({name})\n");
        files.push(name);
    }
    let teachers: Vec<&str> = spec.teachers.iter().map(|t| t.display_name()).collect();
    let points: Vec<GuidancePoint> = comparisons
        .iter()
        .filter_map(|c| {
            let e = c.effect.as_ref()?.as_ref().ok()?;
            let series = spec.teachers.iter().position(|t| *t == c.teacher)?;
            c.guidance.is_finite().then_some(GuidancePoint {
                guidance: c.guidance,
                effect: e.mean,
                low: e.low,
                high: e.high,
                series,
            })
        })
        .collect();
    if !points.is_empty() {
        let name = "effect_vs_guidance.png".to_string();
        save(out, &name, effect_against_guidance("paired effect against the teacher's guidance", &teachers, &points)?)?;
        let _ = write!(
            md,
            "\n![effect against guidance]({name})\n\nEach point is one distilled cell: its paired effect on the \
             target (with its interval) against its teacher's mean Dice on the validation cases of the students' \
             own sites, the images the distillation losses run on.\n\n"
        );
        files.push(name);
    }
    Ok((md, files))
}

/// The file every grid writes its judged comparisons to, one per row; `compare` reads it.
pub const EVIDENCE_CSV: &str = "evidence.csv";

/// Columns of [`EVIDENCE_CSV`].
pub const EVIDENCE_HEADER: &str = "student,teacher,distiller,target,seeds,cases,effect,low,high,detectable,sd_seed,sd_case,sd_interaction,df,guidance,paper";

fn evidence_csv(comparisons: &[Comparison]) -> String {
    let mut csv = format!("{EVIDENCE_HEADER}\n");
    for c in comparisons {
        let Some(Ok(e)) = &c.effect else { continue };
        let k = e.components;
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.6},{}",
            c.student.name(),
            c.teacher.name(),
            c.variant.name(),
            c.target,
            e.seeds,
            e.cases,
            e.mean,
            e.low,
            e.high,
            e.detectable,
            k.seed.sqrt(),
            k.case.sqrt(),
            k.residual.sqrt(),
            e.df,
            c.guidance,
            c.paper.map_or(String::new(), |p| format!("{p:.6}"))
        );
    }
    csv
}

pub(super) fn save(out: &Path, name: &str, canvas: relkd_core::png::Canvas) -> anyhow::Result<()> {
    let path = out.join(name);
    write_atomic(&path, &canvas.to_png()).with_context(|| format!("{}", path.display()))
}

/// The variance components behind each interval and the seeds a ±0.03 interval would need.
fn components_table(comparisons: &[Comparison]) -> String {
    let mut md = format!(
        "\n### What the intervals are made of\n\nStandard deviations of the seed effect (training randomness), \
         the case effect (how much more one test case gains than another) and their interaction; the \
         interval's degrees of freedom; and how many seeds an interval of ±{TARGET_HALF_WIDTH} would need at \
         this grid's cases and at an evaluation pool of {POOL_CASES} (expected half-width from these \
         components).\n\n\
         | student ← teacher (distiller) | target | sd seed | sd case | sd interaction | df | seeds for ±{TARGET_HALF_WIDTH} here | at {POOL_CASES} cases |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    for c in comparisons {
        let Some(Ok(e)) = &c.effect else { continue };
        let k = e.components;
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {} | {} |",
            c.label(),
            c.target,
            k.seed.sqrt(),
            k.case.sqrt(),
            k.residual.sqrt(),
            e.df,
            seeds_needed(&k, e.cases),
            seeds_needed(&k, POOL_CASES)
        );
    }
    md
}

/// The fewest seeds whose expected interval at `cases` is within ±[`TARGET_HALF_WIDTH`].
fn seeds_needed(components: &Components, cases: usize) -> String {
    (2..=MAX_SEEDS)
        .find(|&s| components.expected_half_width(s, cases) <= TARGET_HALF_WIDTH)
        .map_or(format!("> {MAX_SEEDS}"), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_differences_come_from_tables_2_and_3() {
        // Table 2, ENet ← UNet++ on HK: 0.869 − 0.772.
        let d = paper_difference(Architecture::Enet, Architecture::Unetpp, Variant::ALL_THREE, "HK").unwrap();
        assert!((d - 0.097).abs() < 1e-9, "{d}");
        // Table 3, + KMM alone on HK (ENet ← DeepLabV3+): 0.738 − 0.772.
        let kmm = Variant::Relational { lm: false, kmm: true, aam: false };
        let d = paper_difference(Architecture::Enet, Architecture::Deeplabv3plus, kmm, "HK").unwrap();
        assert!((d + 0.034).abs() < 1e-9, "{d}");
        // No paper value for an ablation of another pair, Table 4's distillers or a site of ours.
        assert_eq!(paper_difference(Architecture::Erfnet, Architecture::Deeplabv3plus, kmm, "HK"), None);
        assert_eq!(paper_difference(Architecture::Enet, Architecture::Unetpp, Variant::Hinton, "HK"), None);
        assert_eq!(paper_difference(Architecture::Enet, Architecture::Unetpp, Variant::ALL_THREE, "Elsewhere"), None);
    }

    #[test]
    fn the_planner_finds_the_fewest_seeds() {
        // Seed variance only: half-width t_{S−1} · 0.05/√S ≤ 0.03 first at S = 14 (2.160 · 0.05/√14 = 0.0289;
        // S = 13: 2.179 · 0.05/√13 = 0.0302).
        let only_seeds = Components { seed: 0.0025, case: 0.0, residual: 0.0 };
        assert_eq!(seeds_needed(&only_seeds, 40), "14");
        let hopeless = Components { seed: 1.0, case: 0.0, residual: 0.0 };
        assert_eq!(seeds_needed(&hopeless, 40), "> 200");
    }
}
