//! The grid's report: the paired effects with their intervals ([`super::evidence`]), Table 2 (teachers, w/o and w/ per student, one column per target site),
//! the paired differences w/ − w/o seed by seed, fragmentation, each teacher's Dice on the
//! students' sites, Table 3 (the ablation of LM, AAM and KMM), the comparison distillers of
//! Table 4, a per-site bar chart per teacher–student pair, and every case's scores.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use relkd_core::dataset::paper_site;
use relkd_core::files::write_atomic;
use relkd_core::png::Canvas;
use relkd_models::Architecture;

use super::tables::{Cell, CellKind, Metric, Tables, fragmentation_of, val_dice_of};
use super::{GridSpec, Variant};
use crate::charts::{Spread, grouped_bars};
use crate::evaluate::CaseScore;
use crate::report::{mean, paper_table2};

/// A row of Table 3: (LM, KMM, AAM) switched on, label, the paper's Dice S1…S6.
pub(super) type AblationRow = ((bool, bool, bool), &'static str, [f64; 6]);

/// Table 3 of the paper (ENet student, DeepLabV3+ teacher), row by row in its order.
pub(super) const TABLE3: [AblationRow; 8] = [
    ((false, false, false), "baseline (w/o)", [0.714, 0.604, 0.539, 0.782, 0.701, 0.772]),
    ((true, false, false), "+LM", [0.691, 0.571, 0.505, 0.741, 0.619, 0.721]),
    ((false, false, true), "+AAM", [0.700, 0.599, 0.648, 0.780, 0.691, 0.740]),
    ((false, true, false), "+KMM", [0.698, 0.583, 0.630, 0.767, 0.690, 0.738]),
    ((true, true, false), "+KMM +LM", [0.763, 0.679, 0.659, 0.807, 0.769, 0.775]),
    ((true, false, true), "+AAM +LM", [0.772, 0.691, 0.688, 0.810, 0.762, 0.798]),
    ((false, true, true), "+AAM +KMM", [0.781, 0.611, 0.709, 0.849, 0.781, 0.816]),
    ((true, true, true), "all three (LM + KMM + AAM)", [0.810, 0.642, 0.734, 0.881, 0.796, 0.876]),
];

pub(super) fn paper_column(site: &str) -> Option<usize> {
    Some(paper_site(site)?.0.strip_prefix('S')?.parse::<usize>().ok()? - 1)
}

/// Writes `report.md`, `scores.csv` and the bar charts into `out`; returns the tables, for the
/// terminal.
#[allow(clippy::too_many_arguments)]
pub fn write(
    out: &Path,
    name: &str,
    spec: &GridSpec,
    targets: &[String],
    seeds: &[u64],
    cells: &[Cell],
    data: &str,
    real_data: bool,
) -> anyhow::Result<String> {
    let tables = Tables { targets, seeds, cells, real_data };
    let mut md = String::new();
    let _ = writeln!(md, "# relkd experiment {name}\n");
    let names = |a: &[Architecture]| a.iter().map(|a| a.display_name()).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        md,
        "Data: {data}. Teachers: {}. Students: {}. Target sites: {}. Distillers: {}. Training seeds: {}. \
         Each Dice is the mean over the target site's held-out cases, which no student saw{}.\n",
        names(&spec.teachers),
        names(&spec.students),
        targets.join(", "),
        spec.distillers.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
        if seeds.len() > 1 {
            "; with several seeds, the mean over seeds ± their standard deviation (every seed scores the \
             same cases)"
        } else {
            ""
        }
    );
    if real_data {
        md.push_str("The paper's Dice is in brackets.\n\n");
    } else {
        md.push_str(
            "These are phantom numbers: synthetic data at reduced size and width. They show the pipeline \
             and the direction of effects, not the paper's results (the paper's numbers appear only on the \
             real data).\n\n",
        );
    }
    let (evidence, evidence_files) = super::evidence::write(out, &tables, spec)?;
    let summary = [
        evidence,
        table2(&tables, spec),
        paired_differences(&tables, spec),
        fragmentation(&tables, spec),
        validation(&tables, spec),
        guidance(&tables, spec),
        ablations(&tables, spec),
        comparisons(&tables, spec),
    ]
    .concat();
    md.push_str(&summary);

    md.push_str("\n## Per-site Dice\n\n");
    let mut files = vec!["experiment.yaml".to_string(), "scores.csv".to_string()];
    files.extend(evidence_files);
    for chart in bar_charts(out, &tables, spec)? {
        let _ = writeln!(md, "![{chart}]({chart})\n");
        files.push(chart);
    }
    write_atomic(&out.join("scores.csv"), scores_csv(cells).as_bytes())
        .with_context(|| format!("{}", out.display()))?;
    md.push_str("## Files\n\n");
    for f in files.iter().chain(&["report.md".to_string()]) {
        let _ = writeln!(md, "- `{f}`");
    }
    for t in targets {
        let _ = writeln!(
            md,
            "- `{t}/seed-N/`: config.yaml, one NAME.bpk + NAME.yaml per cell, scores/, metrics.csv (per-term \
             gradient norms in its grad_ columns)"
        );
    }
    write_atomic(&out.join("report.md"), md.as_bytes()).with_context(|| format!("{}", out.display()))?;
    Ok(summary)
}

/// Table 2: teacher rows, then w/o and w/ (the full relational distiller) per student.
fn table2(tables: &Tables, spec: &GridSpec) -> String {
    let mut t2 = String::from("## Dice per target site (Table 2)\n\n");
    t2.push_str(&tables.header("model"));
    for &teacher in &spec.teachers {
        let kind = CellKind::Teacher { teacher };
        t2.push_str(&tables.row(&format!("teacher {}", teacher.display_name()), kind, |site| {
            paper_table2("teacher", teacher, teacher, site)
        }));
    }
    let full = spec.distillers.contains(&Variant::ALL_THREE);
    for &student in &spec.students {
        t2.push_str(&tables.row(&format!("{} w/o", student.display_name()), CellKind::Baseline { student }, |site| {
            paper_table2("baseline", student, spec.teachers[0], site)
        }));
        for &teacher in spec.teachers.iter().filter(|_| full) {
            let kind = CellKind::Distilled { student, teacher, variant: Variant::ALL_THREE };
            t2.push_str(&tables.row(
                &format!("{} w/ {}", student.display_name(), teacher.display_name()),
                kind,
                |site| paper_table2("student", student, teacher, site),
            ));
        }
    }
    t2
}

/// Every distilled cell against its student's baseline, paired seed by seed.
fn paired_differences(tables: &Tables, spec: &GridSpec) -> String {
    let mut out = String::from(
        "\n## Distilled minus baseline, seed by seed (detail)\n\nDice of w/ minus w/o on the same seed and \
         test cases: mean ± sd over the seeds' means, and (seeds where w/ is ahead / seeds). The interval \
         above is the answer; this shows how the seeds spread.\n\n",
    );
    out.push_str(&tables.header("student ← teacher (distiller)"));
    for &student in &spec.students {
        for &teacher in &spec.teachers {
            for &variant in &spec.distillers {
                let kind = CellKind::Distilled { student, teacher, variant };
                let fields: Vec<String> =
                    tables.targets.iter().map(|t| tables.paired(t, kind, CellKind::Baseline { student })).collect();
                let mut fields = fields;
                if tables.targets.len() > 1 {
                    fields.push(String::new());
                }
                let _ = writeln!(
                    out,
                    "| {} ← {} ({}) | {} |",
                    student.display_name(),
                    teacher.display_name(),
                    variant.name(),
                    fields.join(" | ")
                );
            }
        }
    }
    out
}

/// Each teacher's Dice on the students' validation cases, per site: the quality of the guidance
/// it gives where the students train.
fn guidance(tables: &Tables, spec: &GridSpec) -> String {
    let mut out = String::from(
        "\n## Teacher guidance on the students' sites\n\nEach teacher's Dice on the validation cases of the \
         students' training sites (mean over seeds), a site at a time: where the guidance is poor, \
         distillation passes the teacher's errors on.\n\n| target | teacher | Dice per student site |\n|---|---|---|\n",
    );
    for target in tables.targets {
        for &teacher in &spec.teachers {
            let kind = CellKind::Teacher { teacher };
            let scores: Vec<&CaseScore> = tables
                .cells
                .iter()
                .filter(|c| c.target == *target && c.kind == kind)
                .flat_map(|c| &c.guidance)
                .collect();
            let mut sites: Vec<&str> = scores.iter().map(|s| s.site.as_str()).collect();
            sites.sort_unstable();
            sites.dedup();
            let per_site: Vec<String> = sites
                .iter()
                .map(|site| {
                    let dice = mean(scores.iter().filter(|s| s.site == *site).map(|s| s.dice));
                    format!("{site} {dice:.3}")
                })
                .collect();
            let per_site =
                if per_site.is_empty() { "– (no validation cases)".to_string() } else { per_site.join(" · ") };
            let _ = writeln!(out, "| {target} | {} | {per_site} |", teacher.display_name());
        }
    }
    out
}

/// Fragmentation (label changes per predicted foreground voxel) of every model: distilled
/// students should be no more ragged than their baselines.
fn fragmentation(tables: &Tables, spec: &GridSpec) -> String {
    every_model(
        tables,
        spec,
        "Fragmentation",
        "In-plane label changes per predicted foreground voxel, mean over cases (lower is more compact; \
         speckle raises it); – where a seed's model predicted no foreground on any case.",
        fragmentation_of,
    )
}

/// Validation Dice on each model's own training sites: the only numbers settings may be chosen
/// on (the target site's are for reporting).
fn validation(tables: &Tables, spec: &GridSpec) -> String {
    every_model(
        tables,
        spec,
        "Validation Dice on the models' own sites",
        "The best epoch's Dice on held-out cases of the sites each model trained on (never the target \
         site): what chose the epoch kept, and the only numbers on which settings are chosen.",
        val_dice_of,
    )
}

/// A `title` section with `intro` and one row of `metric` per model of the grid: teachers, then
/// each student's baseline and distilled variants.
fn every_model(tables: &Tables, spec: &GridSpec, title: &str, intro: &str, metric: Metric) -> String {
    let mut out = format!("\n## {title}\n\n{intro}\n\n");
    out.push_str(&tables.header("model"));
    let mut row = |label: String, kind: CellKind| out.push_str(&tables.metric_row(&label, kind, metric, |_| None));
    for &teacher in &spec.teachers {
        row(format!("teacher {}", teacher.display_name()), CellKind::Teacher { teacher });
    }
    for &student in &spec.students {
        row(format!("{} w/o", student.display_name()), CellKind::Baseline { student });
        for &teacher in &spec.teachers {
            for &variant in &spec.distillers {
                let label = format!("{} w/ {} ({})", student.display_name(), teacher.display_name(), variant.name());
                row(label, CellKind::Distilled { student, teacher, variant });
            }
        }
    }
    out
}

/// Table 3: the ablation, for each pair, when the grid has more than the full distiller.
fn ablations(tables: &Tables, spec: &GridSpec) -> String {
    let partial = spec.distillers.iter().any(|v| matches!(v, Variant::Relational { .. }) && *v != Variant::ALL_THREE);
    if !partial {
        return String::new();
    }
    let ablation: Vec<&AblationRow> = TABLE3
        .iter()
        .filter(|((lm, kmm, aam), _, _)| {
            let variant = Variant::Relational { lm: *lm, kmm: *kmm, aam: *aam };
            !(*lm || *kmm || *aam) || spec.distillers.contains(&variant)
        })
        .collect();
    per_pair(tables, spec, "Ablation (Table 3)", "distillation", |student, teacher| {
        let paper_pair = teacher == Architecture::Deeplabv3plus && student == Architecture::Enet;
        let mut rows = String::new();
        for ((lm, kmm, aam), label, paper) in ablation.iter().map(|r| **r) {
            let kind = if lm || kmm || aam {
                CellKind::Distilled { student, teacher, variant: Variant::Relational { lm, kmm, aam } }
            } else {
                CellKind::Baseline { student }
            };
            rows.push_str(&tables.row(label, kind, |site| paper_column(site).filter(|_| paper_pair).map(|c| paper[c])));
        }
        rows
    })
}

/// Table 4: the comparison distillers beside the baseline (and the full relational one).
fn comparisons(tables: &Tables, spec: &GridSpec) -> String {
    let others: Vec<Variant> =
        spec.distillers.iter().copied().filter(|v| matches!(v, Variant::Hinton | Variant::Attention)).collect();
    if others.is_empty() {
        return String::new();
    }
    let mut rows = others;
    if spec.distillers.contains(&Variant::ALL_THREE) {
        rows.insert(0, Variant::ALL_THREE);
    }
    per_pair(tables, spec, "Distillers compared (Table 4)", "distiller", |student, teacher| {
        let mut out = tables.row("none (w/o)", CellKind::Baseline { student }, |_| None);
        for &variant in &rows {
            let label = match variant {
                Variant::Hinton => "logit KD (Hinton)",
                Variant::Attention => "attention transfer (AT)",
                _ => "relational (LM + KMM + AAM)",
            };
            out.push_str(&tables.row(label, CellKind::Distilled { student, teacher, variant }, |_| None));
        }
        out
    })
}

/// One table per teacher and student of the grid: a `title` heading, a header whose first
/// column is `first`, and the rows `rows(student, teacher)` gives.
fn per_pair(
    tables: &Tables,
    spec: &GridSpec,
    title: &str,
    first: &str,
    rows: impl Fn(Architecture, Architecture) -> String,
) -> String {
    let mut out = String::new();
    for &teacher in &spec.teachers {
        for &student in &spec.students {
            let _ =
                write!(out, "\n## {title}: {} student, {} teacher\n\n", student.display_name(), teacher.display_name());
            out.push_str(&tables.header(first));
            out.push_str(&rows(student, teacher));
        }
    }
    out
}

/// One per-site bar chart per teacher and student; w/ is the paper's full distiller when the
/// grid has it, else its first. Returns the file names.
fn bar_charts(out: &Path, tables: &Tables, spec: &GridSpec) -> anyhow::Result<Vec<String>> {
    let full = spec.distillers.contains(&Variant::ALL_THREE);
    let distilled = if full { Variant::ALL_THREE } else { spec.distillers[0] };
    let mut files = Vec::new();
    for &teacher in &spec.teachers {
        for &student in &spec.students {
            let chart = format!("dice_{}_{}.png", teacher.name(), student.name());
            let bars = [
                ("teacher", CellKind::Teacher { teacher }),
                ("w/o", CellKind::Baseline { student }),
                ("w/", CellKind::Distilled { student, teacher, variant: distilled }),
            ];
            let title = format!("{} from {} ({})", student.display_name(), teacher.display_name(), distilled.name());
            let canvas = bar_chart(tables, &title, &bars)?;
            let path = out.join(&chart);
            write_atomic(&path, &canvas.to_png()).with_context(|| format!("{}", path.display()))?;
            files.push(chart);
        }
    }
    Ok(files)
}

/// Every case of every cell.
fn scores_csv(cells: &[Cell]) -> String {
    let mut csv = format!("target,seed,cell,student,teacher,distiller,{}\n", CaseScore::CSV_HEADER);
    for c in cells {
        let (student, teacher, distiller) = match c.kind {
            CellKind::Teacher { teacher } => (String::new(), teacher.name().to_string(), String::new()),
            CellKind::Baseline { student } => (student.name().to_string(), String::new(), String::new()),
            CellKind::Distilled { student, teacher, variant } => {
                (student.name().to_string(), teacher.name().to_string(), variant.name())
            }
        };
        for s in &c.scores {
            let _ = writeln!(
                csv,
                "{},{},{},{student},{teacher},{distiller},{}",
                c.target,
                c.seed,
                c.kind.stem(),
                s.csv_fields()
            );
        }
    }
    csv
}

/// Grouped bars: one group per target site, one bar per model, Dice from 0 to 1 (whiskers: ± sd
/// over seeds).
fn bar_chart(tables: &Tables, title: &str, bars: &[(&str, CellKind)]) -> anyhow::Result<Canvas> {
    let groups = tables.site_names();
    let values: Vec<(&str, Vec<Option<Spread>>)> = bars
        .iter()
        .map(|(label, kind)| (*label, tables.targets.iter().map(|t| tables.dice(t, *kind)).collect()))
        .collect();
    grouped_bars(title, "mean 3D Dice on the target site", &groups, &values)
}
