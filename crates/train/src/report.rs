//! What a run writes for people: `metrics.csv` (per epoch), `scores.csv` (per case),
//! `report.md` (the Table 2-shaped summary), `loss_curves.png`, and overlay pictures.

use std::fmt::Write;

use relkd_core::dataset::paper_site;
use relkd_core::png::Canvas;
use relkd_models::Architecture;

use crate::config::TeacherSpec;

use crate::charts::{LinePanel, Series, line_panels};
use crate::checkpoint::ModelCard;
use crate::evaluate::{CaseScore, paired_dice_differences};
use crate::losses::Term;
use crate::trainer::EpochLog;

/// One model of the run with its scores on the evaluation cases.
pub struct Evaluated {
    /// `teacher`, `baseline` or `student`.
    pub model: String,
    /// How relkd trained it; None for a teacher given as an ONNX file.
    pub card: Option<ModelCard>,
    pub scores: Vec<CaseScore>,
}

impl Evaluated {
    /// The row label of Table 2: `teacher UNet++`, `ENet w/o`, `ENet w/ UNet++`, and for a
    /// teacher from a file `teacher unetpp.onnx`, `ENet w/ unetpp.onnx`.
    pub fn label(&self, teacher: &TeacherSpec) -> String {
        match (self.model.as_str(), &self.card) {
            ("teacher", _) => format!("teacher {}", teacher.display_name()),
            (_, None) => self.model.clone(),
            ("baseline", Some(card)) => format!("{} w/o", card.architecture.display_name()),
            (_, Some(card)) => format!("{} w/ {}", card.architecture.display_name(), teacher.display_name()),
        }
    }

    /// The architecture's short name, or for a teacher from a file the file's name.
    fn architecture(&self, teacher: &TeacherSpec) -> String {
        self.card.as_ref().map_or_else(|| teacher.short_name(), |c| c.architecture.name().to_string())
    }
}

fn csv_number(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.6}"))
}

/// Every epoch of every model: loss terms (empty when off), learning rate, validation Dice and
/// each weighted term's gradient norm on the first batch (`grad_…`).
pub fn metrics_csv(models: &[(&str, &[EpochLog])]) -> String {
    let columns: Vec<&str> = Term::ALL.iter().map(|t| t.key()).collect();
    let gradients: Vec<String> = columns.iter().map(|c| format!("grad_{c}")).collect();
    let mut out = format!("model,epoch,lr,{},total,val_dice,{}\n", columns.join(","), gradients.join(","));
    for (model, history) in models {
        for e in *history {
            let terms: Vec<String> = Term::ALL.iter().map(|&t| csv_number(e.terms.get(t).copied())).collect();
            let grads: Vec<String> = Term::ALL.iter().map(|&t| csv_number(e.grad_norms.get(t).copied())).collect();
            let _ = writeln!(
                out,
                "{model},{},{:.3e},{},{:.6},{:.6},{}",
                e.epoch,
                e.lr,
                terms.join(","),
                e.total,
                e.val_dice,
                grads.join(",")
            );
        }
    }
    out
}

/// Per case and model: Dice, HD95 and ASD (mm; `inf` when exactly one mask is empty) and
/// fragmentation (`NaN` for an empty prediction).
pub fn scores_csv(models: &[Evaluated], teacher: &TeacherSpec) -> String {
    let mut out = format!("model,architecture,{}\n", CaseScore::CSV_HEADER);
    for m in models {
        for s in &m.scores {
            let _ = writeln!(out, "{},{},{}", m.model, m.architecture(teacher), s.csv_fields());
        }
    }
    out
}

pub(crate) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// Table 2 of the paper for a row (`role` teacher, baseline or student; the model's
/// architecture; the teacher it learnt from) and a site, when the site is one of the paper's six.
pub fn paper_table2(role: &str, architecture: Architecture, teacher: Architecture, site: &str) -> Option<f64> {
    let column = paper_site(site)?.0.strip_prefix('S')?.parse::<usize>().ok()? - 1;
    let t = match teacher {
        Architecture::Deeplabv3plus => 0,
        Architecture::Unetpp => 1,
        _ => return None,
    };
    let row: [f64; 6] = match (role, architecture) {
        ("teacher", Architecture::Deeplabv3plus) => [0.895, 0.886, 0.889, 0.874, 0.878, 0.885],
        ("teacher", Architecture::Unetpp) => [0.901, 0.893, 0.883, 0.880, 0.869, 0.871],
        ("baseline", Architecture::Enet) => [0.714, 0.604, 0.539, 0.782, 0.701, 0.772],
        ("baseline", Architecture::Espnet) => [0.703, 0.482, 0.573, 0.738, 0.745, 0.715],
        ("baseline", Architecture::Erfnet) => [0.788, 0.720, 0.736, 0.760, 0.725, 0.694],
        ("student", a) => {
            let rows = match a {
                Architecture::Enet => {
                    [[0.810, 0.642, 0.734, 0.881, 0.796, 0.876], [0.808, 0.637, 0.684, 0.858, 0.894, 0.869]]
                }
                Architecture::Espnet => {
                    [[0.819, 0.563, 0.604, 0.826, 0.819, 0.832], [0.837, 0.594, 0.643, 0.842, 0.836, 0.808]]
                }
                Architecture::Erfnet => {
                    [[0.823, 0.751, 0.799, 0.869, 0.801, 0.861], [0.843, 0.746, 0.752, 0.892, 0.877, 0.852]]
                }
                _ => return None,
            };
            rows[t]
        }
        _ => return None,
    };
    Some(row[column])
}

/// What the report says about the run besides the models.
pub struct RunSummary<'a> {
    pub run_id: &'a str,
    pub data: String,
    /// The data is the real multi-site set (the paper's numbers are shown beside ours).
    pub real_data: bool,
    pub target: &'a str,
    pub teacher: &'a TeacherSpec,
    /// Where the teacher comes from, for the report's first paragraph: the sites it trained on,
    /// or the file it was given as.
    pub teacher_origin: String,
    pub student_sites: &'a [String],
    pub test_cases: usize,
    pub device: &'a str,
    /// (model, seconds, how it was obtained: trained / reused …).
    pub timings: &'a [(String, f64, String)],
    /// The teacher's mean Dice on the students' validation cases, per site: the quality of its
    /// guidance where the students train.
    pub teacher_guidance: &'a [(String, f64)],
    pub files: &'a [String],
}

/// `report.md`: Table 2 for the target site, then training details and the files written.
pub fn report_md(run: &RunSummary, models: &[Evaluated]) -> String {
    let mut md = String::new();
    let site_label = match paper_site(run.target) {
        Some((id, _)) => format!("{} ({id})", run.target),
        None => run.target.to_string(),
    };
    let _ = writeln!(md, "# relkd run {}\n", run.run_id);
    let _ = writeln!(
        md,
        "Data: {}. {}; students trained on {}; all evaluated on {} held-out case(s) of {}, which no \
         student saw. Device: {}.\n",
        run.data,
        run.teacher_origin,
        run.student_sites.join(", "),
        run.test_cases,
        site_label,
        run.device
    );
    if !run.real_data {
        md.push_str(
            "These are phantom numbers: synthetic data at reduced size and width. They show the \
             pipeline working and the direction of effects, not the paper's results.\n\n",
        );
    }
    md.push_str(&one_seed_difference(models));
    md.push_str(&dice_table(run, models, &site_label));
    md.push_str(&training_table(run, models));
    let _ = writeln!(md, "\n![loss curves](loss_curves.png)\n\n## Files\n");
    for f in run.files {
        let _ = writeln!(md, "- `{f}`");
    }
    md
}

/// The distilled student's paired difference over its baseline on this run's cases, and why it
/// is not yet an answer.
fn one_seed_difference(models: &[Evaluated]) -> String {
    let find = |role: &str| models.iter().find(|m| m.model == role);
    let (Some(with), Some(without)) = (find("student"), find("baseline")) else { return String::new() };
    let differences: Vec<f64> = paired_dice_differences(&with.scores, &without.scores).into_iter().flatten().collect();
    format!(
        "## Distilled minus baseline\n\nw/ − w/o on the same {} case(s): {:+.3}. One training seed is an anecdote: \
         seeds alone move a student by up to 0.25 on the phantom. For a 95% interval over seeds and cases, run \
         `train --teacher … --student … --seeds 0,1,2,3,4` or a grid (`train experiment`).\n\n",
        differences.len(),
        mean(differences.into_iter())
    )
}

/// Table 2's row per model on the target site, with the surface distances and fragmentation.
fn dice_table(run: &RunSummary, models: &[Evaluated], site_label: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Dice on the target site (Table 2)\n");
    let mut header = format!("| model | {site_label} Dice | HD95 mm | ASD mm | fragmentation | live params |");
    let mut rule = String::from("|---|---|---|---|---|---|");
    if run.real_data {
        header.push_str(" paper Dice |");
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for m in models {
        let finite = |f: fn(&CaseScore) -> f64| mean(m.scores.iter().map(f).filter(|v| v.is_finite()));
        let mm = |v: f64| if v.is_finite() { format!("{v:.2}") } else { "–".into() };
        let _ = write!(
            md,
            "| {} | {:.3} | {} | {} | {:.2} | {} |",
            m.label(run.teacher),
            mean(m.scores.iter().map(|s| s.dice)),
            mm(finite(|s| s.hd95)),
            mm(finite(|s| s.asd)),
            finite(|s| s.fragmentation),
            m.card.as_ref().map_or("–".into(), |c| c.live_params.to_string())
        );
        if run.real_data {
            // The paper's rows exist for its own architectures only.
            let paper = m.card.as_ref().zip(run.teacher.network()).and_then(|(card, teacher)| {
                paper_table2(&m.model, card.architecture, teacher.architecture, run.target)
            });
            let _ = write!(md, " {} |", paper.map_or("–".into(), |v| format!("{v:.3}")));
        }
        md.push('\n');
    }
    let infinite = models.iter().flat_map(|m| &m.scores).filter(|s| !s.hd95.is_finite()).count();
    if infinite > 0 {
        let _ = writeln!(md, "\nHD95 and ASD average the finite cases; {infinite} case score(s) had an empty mask.");
    }
    md.push_str(
        "\nFragmentation: in-plane label changes per predicted foreground voxel (a compact gland \
         scores low, speckle high), averaged over the cases with a non-empty prediction.\n",
    );
    md
}

/// How each model was trained, and the teacher's guidance on the students' sites.
fn training_table(run: &RunSummary, models: &[Evaluated]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "\n## Training\n");
    let _ =
        writeln!(md, "| model | sites | width | epochs | best epoch | val Dice (own sites) | distillation | time |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for m in models {
        let Some(c) = &m.card else {
            let _ = writeln!(md, "| {} | given as an ONNX file, not trained here | | | | | | |", m.label(run.teacher));
            continue;
        };
        let (seconds, how) = run
            .timings
            .iter()
            .find(|(name, _, _)| *name == c.model)
            .map_or((f64::NAN, String::new()), |(_, s, h)| (*s, h.clone()));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.label(run.teacher),
            c.trained_sites.join(", "),
            c.width,
            c.epochs,
            c.best_epoch.map_or("–".into(), |e| e.to_string()),
            c.best_val_dice.map_or("–".into(), |d| format!("{d:.3}")),
            if c.distillation.is_empty() { "–".into() } else { c.distillation.join(" + ") },
            if seconds.is_finite() { format!("{seconds:.0} s {how}").trim_end().to_string() } else { how },
        );
    }
    if !run.teacher_guidance.is_empty() {
        let per_site: Vec<String> = run.teacher_guidance.iter().map(|(site, d)| format!("{site} {d:.3}")).collect();
        let _ = writeln!(
            md,
            "\nThe teacher's Dice on the students' validation cases (the quality of its guidance on their \
             sites): {}.",
            per_site.join(" · ")
        );
    }
    md
}

/// Two panels, training loss and validation Dice per epoch, one colour per model.
pub fn loss_curves(models: &[(&str, &[EpochLog])]) -> anyhow::Result<Canvas> {
    let panel = |title, y_label, value: fn(&EpochLog) -> f64| LinePanel {
        title,
        y_label,
        series: models
            .iter()
            .map(|(name, history)| Series {
                name,
                points: history.iter().map(|e| (e.epoch as f64, value(e))).collect(),
            })
            .collect(),
    };
    line_panels(
        &[
            panel("Training loss (eq. 8 total)", "loss", |e| e.total),
            panel("Validation Dice, own sites", "Dice", |e| e.val_dice),
        ],
        "epoch",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charts::PALETTE;

    fn log(epoch: usize, total: f64, val_dice: f64) -> EpochLog {
        let terms = [(Term::Segmentation, total), (Term::Kmm, 0.5)].into_iter().collect();
        let grad_norms = [(Term::Segmentation, 0.25), (Term::Kmm, 2.0)].into_iter().collect();
        EpochLog { epoch, lr: 1e-3, terms, total, val_dice, grad_norms }
    }

    #[test]
    fn metrics_rows_leave_switched_off_terms_empty() {
        let h = [log(1, 0.75, 0.5)];
        let csv = metrics_csv(&[("baseline", &h)]);
        assert!(csv.starts_with("model,epoch,lr,segmentation,lm,kmm,aam,kd,at,total,val_dice,grad_segmentation,"));
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "baseline,1,1.000e-3,0.750000,,0.500000,,,,0.750000,0.500000,0.250000,,2.000000,,,"
        );
    }

    #[test]
    fn curves_draw_each_model_in_its_colour() {
        let a = [log(1, 1.0, 0.1), log(2, 0.5, 0.6)];
        let b = [log(1, 0.8, 0.2), log(2, 0.4, 0.7)];
        let c = loss_curves(&[("teacher", &a), ("baseline", &b)]).unwrap();
        let count = |c2: plotters::style::RGBColor| c.pixels.iter().filter(|p| **p == [c2.0, c2.1, c2.2]).count();
        assert!(count(PALETTE[0]) > 100 && count(PALETTE[1]) > 100);
        assert_eq!(count(PALETTE[2]), 0);
    }
}
