//! The grid's trained models (cells) and their aggregation into table values: a metric per
//! target, mean ± sd over seeds, and paired differences seed by seed.

use std::fmt::Write;

use relkd_core::dataset::paper_site;
use relkd_core::stats::{PairedEffect, StatsError, paired_effect};
use relkd_models::Architecture;

use super::Variant;
use crate::charts::Spread;
use crate::evaluate::{CaseScore, paired_dice_differences};
use crate::report::mean;

/// What a trained model of the grid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    Teacher { teacher: Architecture },
    Baseline { student: Architecture },
    Distilled { student: Architecture, teacher: Architecture, variant: Variant },
}

impl CellKind {
    /// File stem of the cell's weights, card and scores in the target's folder.
    pub fn stem(&self) -> String {
        match self {
            CellKind::Teacher { teacher } => format!("teacher-{}", teacher.name()),
            CellKind::Baseline { student } => format!("baseline-{}", student.name()),
            CellKind::Distilled { student, teacher, variant } => {
                format!("{}-{}-{}", student.name(), teacher.name(), variant.name())
            }
        }
    }
}

/// One trained model of the grid, scored on its target site's held-out cases.
#[derive(Debug, Clone)]
pub struct Cell {
    pub target: String,
    pub seed: u64,
    pub kind: CellKind,
    pub scores: Vec<CaseScore>,
    /// A teacher's scores on the students' validation cases (empty for students).
    pub guidance: Vec<CaseScore>,
    /// The best validation Dice on the model's own training sites (its card), what chose its
    /// epoch and what may choose settings; NaN without validation cases.
    pub val_dice: f64,
}

/// The tables with one column per target (and their mean when there are several). A value is
/// the mean over seeds of the mean over the target's held-out cases, ± the standard deviation
/// over seeds when there are several.
pub(super) struct Tables<'a> {
    pub targets: &'a [String],
    pub seeds: &'a [u64],
    pub cells: &'a [Cell],
    pub real_data: bool,
}

/// What a table shows of one cell.
pub(super) type Metric = fn(&Cell) -> f64;

/// Mean Dice over the target's held-out cases.
pub(super) fn dice_of(c: &Cell) -> f64 {
    mean(c.scores.iter().map(|s| s.dice))
}

/// Mean fragmentation over the cases with a non-empty prediction.
pub(super) fn fragmentation_of(c: &Cell) -> f64 {
    mean(c.scores.iter().map(|s| s.fragmentation).filter(|v| v.is_finite()))
}

pub(super) fn val_dice_of(c: &Cell) -> f64 {
    c.val_dice
}

impl Tables<'_> {
    /// `metric` of the cell, seed by seed, in the order of `seeds`; `None` for a seed without
    /// the cell.
    pub(super) fn per_seed(&self, target: &str, kind: CellKind, metric: Metric) -> Vec<Option<f64>> {
        self.seeds
            .iter()
            .map(|&seed| {
                let cell = self.cells.iter().find(|c| c.target == target && c.seed == seed && c.kind == kind)?;
                Some(metric(cell))
            })
            .collect()
    }

    /// Mean and spread over the seeds, when every seed has the cell.
    fn spread(&self, target: &str, kind: CellKind, metric: Metric) -> Option<Spread> {
        let values: Option<Vec<f64>> = self.per_seed(target, kind, metric).into_iter().collect();
        values.map(|v| spread(&v))
    }

    pub(super) fn dice(&self, target: &str, kind: CellKind) -> Option<Spread> {
        self.spread(target, kind, dice_of)
    }

    /// The target sites as columns: `HK (S6)` where the site is one of the paper's.
    pub(super) fn site_names(&self) -> Vec<String> {
        self.targets.iter().map(|t| paper_site(t).map_or(t.clone(), |(id, _)| format!("{t} ({id})"))).collect()
    }

    pub(super) fn header(&self, first: &str) -> String {
        let mut columns = self.site_names();
        if self.targets.len() > 1 {
            columns.push("mean".into());
        }
        format!("| {first} | {} |\n|---|{}\n", columns.join(" | "), "---|".repeat(columns.len()))
    }

    /// A row: our Dice per target (the paper's in brackets on the real data), and the mean.
    pub(super) fn row(&self, label: &str, kind: CellKind, paper: impl Fn(&str) -> Option<f64>) -> String {
        self.metric_row(label, kind, dice_of, paper)
    }

    pub(super) fn metric_row(
        &self,
        label: &str,
        kind: CellKind,
        metric: Metric,
        paper: impl Fn(&str) -> Option<f64>,
    ) -> String {
        let ours: Vec<Option<Spread>> = self.targets.iter().map(|t| self.spread(t, kind, metric)).collect();
        let mut fields: Vec<String> = self
            .targets
            .iter()
            .zip(&ours)
            .map(|(t, d)| {
                // Undefined (no foreground predicted on a seed's cases, no validation cases): "–".
                let mut f = d.filter(|d| d.mean.is_finite()).map_or("–".into(), |d| self.format(d));
                if let Some(p) = paper(t).filter(|_| self.real_data) {
                    let _ = write!(f, " ({p:.3})");
                }
                f
            })
            .collect();
        if self.targets.len() > 1 {
            let all: Vec<f64> = ours.iter().flatten().map(|s| s.mean).collect();
            fields.push(if all.len() == ours.len() { format!("{:.3}", mean(all.into_iter())) } else { "–".into() });
        }
        format!("| {label} | {} |\n", fields.join(" | "))
    }

    /// `0.712`, or `0.712 ± 0.030` over several seeds.
    fn format(&self, s: Spread) -> String {
        if self.seeds.len() > 1 { format!("{:.3} ± {:.3}", s.mean, s.sd) } else { format!("{:.3}", s.mean) }
    }

    /// Per-case differences `kind − baseline` of one target, a row per seed (cases matched by
    /// site and id, in the baseline's order); `None` when a seed lacks either cell or a case.
    pub(super) fn differences(&self, target: &str, kind: CellKind, baseline: CellKind) -> Option<Vec<Vec<f64>>> {
        self.seeds
            .iter()
            .map(|&seed| {
                let find =
                    |k: CellKind| self.cells.iter().find(|c| c.target == target && c.seed == seed && c.kind == k);
                let (with, without) = (find(kind)?, find(baseline)?);
                paired_dice_differences(&with.scores, &without.scores).into_iter().collect()
            })
            .collect()
    }

    /// The paired effect of `kind` over `baseline` on `target` with its 95% interval; `None`
    /// when the grid lacks a cell, else why it cannot be judged (one seed, one case).
    pub(super) fn effect(
        &self,
        target: &str,
        kind: CellKind,
        baseline: CellKind,
    ) -> Option<Result<PairedEffect, StatsError>> {
        self.differences(target, kind, baseline).map(|d| paired_effect(&d))
    }

    /// The paired difference `kind − baseline` of one target: per seed, then its mean ± sd and
    /// on how many seeds it is positive, e.g. `+0.034 ± 0.020 (3/3)`.
    pub(super) fn paired(&self, target: &str, kind: CellKind, baseline: CellKind) -> String {
        let differences: Option<Vec<f64>> = self
            .per_seed(target, kind, dice_of)
            .into_iter()
            .zip(self.per_seed(target, baseline, dice_of))
            .map(|(w, wo)| Some(w? - wo?))
            .collect();
        let Some(differences) = differences else { return "–".into() };
        let s = spread(&differences);
        let positive = differences.iter().filter(|d| **d > 0.0).count();
        let sd = if differences.len() > 1 { format!(" ± {:.3}", s.sd) } else { String::new() };
        format!("{:+.3}{sd} ({positive}/{})", s.mean, differences.len())
    }
}

/// Mean and sample standard deviation (n − 1; 0 for a single value).
fn spread(values: &[f64]) -> Spread {
    let m = mean(values.iter().copied());
    let n = values.len();
    let sd = if n > 1 { (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
    Spread { mean: m, sd }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(seed: u64, fragmentation: &[f64]) -> Cell {
        let scores = fragmentation
            .iter()
            .map(|&f| CaseScore {
                site: "HK".into(),
                case: "Case00".into(),
                dice: 0.5,
                hd95: 1.0,
                asd: 1.0,
                fragmentation: f,
            })
            .collect();
        let kind = CellKind::Baseline { student: Architecture::Enet };
        Cell { target: "HK".into(), seed, kind, scores, guidance: vec![], val_dice: f64::NAN }
    }

    #[test]
    fn a_metric_undefined_on_some_seed_prints_a_dash_not_nan() {
        let kind = CellKind::Baseline { student: Architecture::Enet };
        let targets = ["HK".to_string()];
        // Seed 1 predicted no foreground on any case: its fragmentation is undefined.
        let cells = [cell(0, &[0.2, f64::NAN, 0.4]), cell(1, &[f64::NAN, f64::NAN])];
        let tables = Tables { targets: &targets, seeds: &[0, 1], cells: &cells, real_data: false };
        assert_eq!(tables.metric_row("ENet w/o", kind, fragmentation_of, |_| None), "| ENet w/o | – |\n");
        assert_eq!(tables.metric_row("ENet w/o", kind, val_dice_of, |_| None), "| ENet w/o | – |\n");
        // Seed 0 alone: the mean over its cases with a prediction, (0.2 + 0.4) / 2.
        let tables = Tables { seeds: &[0], ..tables };
        assert_eq!(tables.metric_row("ENet w/o", kind, fragmentation_of, |_| None), "| ENet w/o | 0.300 |\n");
    }

    #[test]
    fn differences_pair_each_case_with_its_twin_seed_by_seed() {
        let score = |case: &str, dice| CaseScore {
            site: "HK".into(),
            case: case.into(),
            dice,
            hd95: 1.0,
            asd: 1.0,
            fragmentation: 0.3,
        };
        let baseline = CellKind::Baseline { student: Architecture::Enet };
        let distilled = CellKind::Distilled {
            student: Architecture::Enet,
            teacher: Architecture::Unetpp,
            variant: Variant::ALL_THREE,
        };
        let cell = |seed, kind, scores: Vec<CaseScore>| Cell {
            target: "HK".into(),
            seed,
            kind,
            scores,
            guidance: vec![],
            val_dice: 0.8,
        };
        // The distilled cells list their cases in another order.
        let cells = [
            cell(0, baseline, vec![score("Pool00", 0.5), score("Pool01", 0.7)]),
            cell(0, distilled, vec![score("Pool01", 0.6), score("Pool00", 0.8)]),
            cell(1, baseline, vec![score("Pool00", 0.4), score("Pool01", 0.9)]),
            cell(1, distilled, vec![score("Pool01", 0.95), score("Pool00", 0.5)]),
        ];
        let targets = ["HK".to_string()];
        let tables = Tables { targets: &targets, seeds: &[0, 1], cells: &cells, real_data: false };
        let d = tables.differences("HK", distilled, baseline).unwrap();
        let expected = [[0.3, -0.1], [0.1, 0.05]];
        for (row, want) in d.iter().zip(expected) {
            assert!(row.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{d:?}");
        }
        let effect = tables.effect("HK", distilled, baseline).unwrap().unwrap();
        assert!((effect.mean - 0.0875).abs() < 1e-12);
        // A seed without its distilled cell: no comparison.
        let tables = Tables { seeds: &[0, 1, 2], ..tables };
        assert!(tables.differences("HK", distilled, baseline).is_none());
    }
}
