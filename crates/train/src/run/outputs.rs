//! What a finished run shows: every model scored on the target site's test cases, the CSVs,
//! the loss curves, Fig. 3-style overlays and report.md.

use std::fs;
use std::path::Path;

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use relkd_core::dataset::Case;
use relkd_core::files::write_atomic;
use relkd_core::png::{Canvas, WHITE, overlay, row};
use relkd_models::Segmenter;

use relkd_runs::data::Cases;
use relkd_runs::progress::progress_bar;

use super::stage::Stage;
use crate::checkpoint::{ModelCard, load_model};
use crate::config::{ExperimentConfig, TeacherSpec};
use crate::evaluate::{CaseScore, mean_dice_per_site, predict_volume, score};
use crate::report::{Evaluated, RunSummary, loss_curves, metrics_csv, report_md, scores_csv};
use crate::teacher::Teacher;

/// Segments every case with `logits` (a model's logits of a batch of slices) and scores it;
/// `tick` after each case.
pub fn score_cases(
    logits: &dyn Fn(Tensor<4>) -> Tensor<4>,
    cases: &[Case],
    config: &ExperimentConfig,
    device: &Device,
    tick: &dyn Fn(),
) -> (Vec<CaseScore>, Vec<Vec<u8>>) {
    cases
        .iter()
        .map(|case| {
            let mask = predict_volume(&case.image, &config.preprocessing, config.training.batch_size, device, logits);
            tick();
            (score(case, &mask), mask)
        })
        .unzip()
}

/// Scores the three models on the test cases and writes metrics, scores, curves, overlays
/// and the report into the run folder. `teacher_card` is None for a teacher given as an ONNX
/// file.
pub(super) fn evaluate_and_report(
    stage: &Stage,
    root: &Path,
    cases: &Cases,
    teacher: &Teacher,
    teacher_card: Option<&ModelCard>,
    timings: Vec<(String, f64, String)>,
) -> anyhow::Result<()> {
    let (config, run_dir, run_id, devices) = (stage.config, stage.run_dir, stage.run_id, stage.devices);
    let device = &devices.main;
    let target = &config.target;
    let plan = config.sites.as_ref().expect("planned");
    let plain = device.clone().without_autodiff();
    let teacher_logits = |x| teacher.logits(x);
    let mut models = Vec::new();
    let mut predictions = Vec::new();
    let bar = progress_bar((3 * cases.test.len()) as u64, "scoring");
    let (scores, masks) = score_cases(&teacher_logits, &cases.test, config, &plain, &|| bar.inc(1));
    predictions.push(masks);
    models.push(Evaluated { model: "teacher".into(), card: teacher_card.cloned(), scores });
    for name in ["baseline", "student"] {
        let (net, card) = load_model(&run_dir.join(format!("{name}.bpk")), device)?;
        let net = net.valid();
        let (scores, masks) = score_cases(&|x| net.forward(x), &cases.test, config, &plain, &|| bar.inc(1));
        predictions.push(masks);
        models.push(Evaluated { model: name.into(), card: Some(card), scores });
    }
    let (guidance, _) = score_cases(&teacher_logits, &cases.student_val, config, &plain, &|| ());
    bar.finish_and_clear();
    let teacher_guidance = mean_dice_per_site(&guidance);

    let histories: Vec<(&str, &[crate::trainer::EpochLog])> =
        models.iter().filter_map(|m| m.card.as_ref()).map(|c| (c.model.as_str(), c.history.as_slice())).collect();
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<String> {
        let path = run_dir.join(name);
        write_atomic(&path, bytes).with_context(|| format!("{}", path.display()))?;
        Ok(name.to_string())
    };
    let mut files = vec!["config.yaml".to_string()];
    let trained: &[&str] =
        if teacher_card.is_some() { &["teacher", "baseline", "student"] } else { &["baseline", "student"] };
    files.extend(trained.iter().flat_map(|m| [format!("{m}.bpk"), format!("{m}.yaml")]));
    files.push(write("metrics.csv", metrics_csv(&histories).as_bytes())?);
    files.push(write("scores.csv", scores_csv(&models, &config.teacher).as_bytes())?);
    files.push(write("loss_curves.png", &loss_curves(&histories)?.to_png())?);
    files.extend(write_overlays(run_dir, &cases.test, &predictions)?);
    files.push("report.md".to_string());
    let real_data = config.data.root.is_some();
    let summary = RunSummary {
        run_id,
        data: if real_data { format!("{}", root.display()) } else { format!("phantom ({})", root.display()) },
        real_data,
        target,
        teacher: &config.teacher,
        teacher_origin: teacher_origin(config, teacher, &plan.teacher_sites),
        student_sites: &plan.student_sites,
        test_cases: cases.test.len(),
        device: &devices.description,
        timings: &timings,
        teacher_guidance: &teacher_guidance,
        files: &files,
    };
    let report = report_md(&summary, &models);
    write("report.md", report.as_bytes())?;
    let table_end = report.find("\n## Training").unwrap_or(report.len());
    println!("\n{}", &report[report.find("## Dice").unwrap_or(0)..table_end].trim_end());
    println!("\nwrote {}", run_dir.join("report.md").display());
    Ok(())
}

/// Where the teacher comes from, for the report: the sites relkd trained it on, or the file it
/// was given as and what it distilled through.
fn teacher_origin(config: &ExperimentConfig, teacher: &Teacher, sites: &[String]) -> String {
    match (&config.teacher, teacher) {
        (TeacherSpec::Onnx(spec), Teacher::Onnx(onnx)) => {
            let through = match onnx.feature_name() {
                Some(name) => format!("distilling from its tensor '{name}'"),
                None => "with no feature named (teacher.features), so it distilled through its logits only: KMM \
                         and attention transfer were off"
                    .to_string(),
            };
            format!(
                "Teacher: {} ({}), given as an ONNX file and run frozen on ONNX Runtime, {through}",
                spec.path.display(),
                onnx.info.provenance()
            )
        }
        _ => format!("Teacher trained on {}", sites.join(", ")),
    }
}

/// Fig. 3-style pictures: for the first two test cases, three slices across the gland, each
/// with the teacher's, the baseline's and the student's prediction (green) over the ground
/// truth (red).
fn write_overlays(run_dir: &Path, test: &[Case], predictions: &[Vec<Vec<u8>>]) -> anyhow::Result<Vec<String>> {
    let dir = run_dir.join("overlays");
    fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let mut written = Vec::new();
    for (c, case) in test.iter().enumerate().take(2) {
        let [nx, ny, nz] = case.image.dims;
        let plane = nx * ny;
        let gland: Vec<usize> = (0..nz).filter(|&z| case.mask[z * plane..][..plane].iter().any(|&v| v != 0)).collect();
        let (Some(&first), Some(&last)) = (gland.first(), gland.last()) else { continue };
        let zoom = (256 / nx.max(ny)).max(1);
        for z in [first + (last - first) / 4, (first + last) / 2, last - (last - first) / 4] {
            let image = case.image.slice(z);
            let truth = &case.mask[z * plane..][..plane];
            let panels: Vec<(&str, Canvas)> = ["TEACHER", "W/O", "W/"]
                .iter()
                .enumerate()
                .map(|(m, label)| {
                    (*label, overlay(image, Some(truth), &predictions[m][c][z * plane..][..plane], ny, nx, zoom))
                })
                .collect();
            let canvas = row(&panels, 6, WHITE);
            let name = format!("overlays/{}_{}_z{z:02}.png", case.site, case.id);
            canvas.save(&run_dir.join(&name)).with_context(|| name.clone())?;
            written.push(name);
        }
    }
    Ok(written)
}
