//! `train experiment` end to end on a tiny phantom: the Table 3 grid's eight rows and Table 4's
//! comparison distillers, the report's numbers against the per-case scores, resume after a
//! kill, a rerun that trains nothing, and a grid over seeds with its paired statistics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const TINY: &str = include_str!("../../../tests/fixtures/tiny-run.yaml");

const GRID: &str = "
base: tiny.yaml
teachers: [unetpp]
students: [enet]
targets: [S3]
distillers: [lm, aam, kmm, kmm+lm, lm+aam, aam+kmm, lm+kmm+aam, hinton, attention]
";

fn train(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
    c.args(args).current_dir(dir).env("RELKD_CACHE", dir.join("cache"));
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every trained model of the grid: name → (bytes, modification time).
fn weights(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bpk"))
        .map(|p| (p.clone(), (std::fs::read(&p).unwrap(), p.metadata().unwrap().modified().unwrap())))
        .collect()
}

/// The row of `table` (a markdown section) whose label is `label`, as its cells.
fn row<'a>(section: &'a str, label: &str) -> Vec<&'a str> {
    let line = section
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row {label} in\n{section}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

/// Mean Dice of `cell` in the grid's scores.csv, computed here.
fn mean_dice(scores: &str, cell: &str) -> f64 {
    let dice: Vec<f64> = scores
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[2] == cell)
        .map(|f| f[8].parse().unwrap())
        .collect();
    assert!(!dice.is_empty(), "no scores for {cell}");
    dice.iter().sum::<f64>() / dice.len() as f64
}

#[test]
fn table3_grid_reports_eight_rows_resumes_and_skips_finished_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tiny.yaml"), TINY).unwrap();
    std::fs::write(dir.join("grid.yaml"), GRID).unwrap();
    let out = dir.join("experiments/grid");
    let target = out.join("HCRUDB/seed-0"); // S3, by its folder name; the base config's seed

    // First run: interrupted once the baseline is scored.
    let mut child =
        train(dir, &["experiment", "grid.yaml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !target.join("scores/baseline-enet.yaml").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the grid ended before it could be interrupted");
        assert!(started.elapsed() < Duration::from_secs(300), "no baseline after 5 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before: Vec<PathBuf> = weights(&target).into_keys().collect();

    // Second run: the finished cells are skipped, the rest trained.
    let o = train(dir, &["experiment", "grid.yaml"]).output().unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("baseline-enet: done earlier"), "{log}");
    assert!(!log.contains("baseline-enet epoch"), "the finished baseline was trained again:\n{log}");
    assert!(log.contains("enet-unetpp-lm+kmm+aam epoch"), "{log}");
    for p in &before {
        let stem = p.file_stem().unwrap().to_string_lossy();
        assert!(log.contains(&format!("{stem}: done earlier")), "{stem} not skipped:\n{log}");
    }

    let report = check_report(&out, &target);

    // Third run: nothing left to train; every model and the report unchanged.
    let trained = weights(&target);
    assert_eq!(trained.len(), 11);
    let o = train(dir, &["experiment", "grid.yaml"]).output().unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let training = log.lines().any(|l| l.contains(" epoch ") && l.contains(" loss "));
    assert!(!training, "a finished cell was trained again:\n{log}");
    assert_eq!(log.matches("done earlier").count(), 11, "{log}");
    assert_eq!(weights(&target), trained);
    assert_eq!(std::fs::read_to_string(out.join("report.md")).unwrap(), report);
}

/// The report's Table 2, all eight rows of Table 3 and Table 4 equal the means of the per-case
/// scores; metrics.csv has each comparison distiller's own column; cards record the switches.
/// Returns the report.
fn check_report(out: &Path, target: &Path) -> String {
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let table2 = &report[report.find("## Dice per target site").unwrap()..report.find("## Ablation").unwrap()];
    let table3 = &report[report.find("## Ablation").unwrap()..report.find("## Distillers compared").unwrap()];
    let table4 = &report[report.find("## Distillers compared").unwrap()..report.find("## Per-site").unwrap()];
    for (label, cell) in [
        ("teacher UNet++", "teacher-unetpp"),
        ("ENet w/o", "baseline-enet"),
        ("ENet w/ UNet++", "enet-unetpp-lm+kmm+aam"),
    ] {
        let got: f64 = row(table2, label)[1].parse().unwrap();
        assert!((got - mean_dice(&scores, cell)).abs() < 6e-4, "{label}: {got}");
    }
    let rows: Vec<&str> = table3.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| distillation")).collect();
    assert_eq!(rows.len(), 8, "{table3}");
    for (label, cell) in [
        ("baseline (w/o)", "baseline-enet"),
        ("+LM", "enet-unetpp-lm"),
        ("+AAM", "enet-unetpp-aam"),
        ("+KMM", "enet-unetpp-kmm"),
        ("+KMM +LM", "enet-unetpp-lm+kmm"),
        ("+AAM +LM", "enet-unetpp-lm+aam"),
        ("+AAM +KMM", "enet-unetpp-kmm+aam"),
        ("all three (LM + KMM + AAM)", "enet-unetpp-lm+kmm+aam"),
    ] {
        let got: f64 = row(table3, label)[1].parse().unwrap();
        assert!((got - mean_dice(&scores, cell)).abs() < 6e-4, "{label}: {got}");
    }
    for (label, cell) in [
        ("none (w/o)", "baseline-enet"),
        ("relational (LM + KMM + AAM)", "enet-unetpp-lm+kmm+aam"),
        ("logit KD (Hinton)", "enet-unetpp-hinton"),
        ("attention transfer (AT)", "enet-unetpp-attention"),
    ] {
        let got: f64 = row(table4, label)[1].parse().unwrap();
        assert!((got - mean_dice(&scores, cell)).abs() < 6e-4, "{label}: {got}");
    }
    let metrics = std::fs::read_to_string(target.join("metrics.csv")).unwrap();
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (cell, term) in [("enet-unetpp-hinton", "kd"), ("enet-unetpp-attention", "at")] {
        let rows: Vec<&str> = metrics.lines().filter(|l| l.starts_with(&format!("{cell},"))).collect();
        assert_eq!(rows.len(), 3, "{metrics}");
        for r in rows {
            let fields: Vec<&str> = r.split(',').collect();
            let value: f64 = fields[column(term)].parse().unwrap_or_else(|_| panic!("{cell}: no {term} in {r}"));
            assert!(value.is_finite() && value >= 0.0, "{r}");
            assert!(fields[column("aam")].is_empty() && fields[column("lm")].is_empty(), "{r}");
        }
    }
    assert!(report.contains("phantom numbers"), "{report}");
    assert!(!report.contains("(0."), "the paper's numbers appear only on real data:\n{report}");
    let chart = std::fs::read(out.join("dice_unetpp_enet.png")).unwrap();
    assert_eq!(&chart[1..4], b"PNG");
    // Each distilled cell's card records its switches.
    let card = std::fs::read_to_string(target.join("enet-unetpp-lm+aam.yaml")).unwrap();
    assert!(card.contains("LM λ=0.2") && card.contains("AAM λ=0.9") && !card.contains("KMM λ"), "{card}");

    report
}

#[test]
fn bad_experiments_fail_clearly_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tiny.yaml"), TINY).unwrap();
    let cases = [
        (GRID.replace("lm+aam,", "lm+xyz,"), "unknown distiller `lm+xyz`"),
        (GRID.replace("[S3]", "[S9]"), "S9"),
        (GRID.replace("[S3]", "[all, S3]"), "`targets: [all]` stands alone"),
        (GRID.replace("students: [enet]", "students: []"), "`students` must list at least one entry"),
        (GRID.replace("tiny.yaml", "missing.yaml"), "missing.yaml"),
    ];
    for (grid, message) in cases {
        std::fs::write(dir.join("bad.yaml"), &grid).unwrap();
        let o = train(dir, &["experiment", "bad.yaml"]).output().unwrap();
        assert!(!o.status.success());
        let log = text(&o);
        assert!(log.contains(message), "expected `{message}` in:\n{log}");
        assert!(!dir.join("experiments").exists(), "{message}: an output folder was created");
    }
    // An existing folder that is not an experiment's is never written into.
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/notes.txt"), "keep").unwrap();
    std::fs::write(dir.join("grid.yaml"), GRID).unwrap();
    let o = train(dir, &["experiment", "grid.yaml", "--out", "mine"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("not an experiment folder"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(dir.join("mine")).unwrap().count(), 1);
}

/// Per-seed case means of `cell` in scores.csv: seed → mean Dice, and the cases scored.
fn seed_means(scores: &str, cell: &str) -> BTreeMap<u64, (f64, Vec<String>)> {
    let mut by_seed: BTreeMap<u64, Vec<(String, f64)>> = BTreeMap::new();
    for f in scores.lines().skip(1).map(|l| l.split(',').collect::<Vec<_>>()).filter(|f| f[2] == cell) {
        by_seed.entry(f[1].parse().unwrap()).or_default().push((format!("{}/{}", f[6], f[7]), f[8].parse().unwrap()));
    }
    by_seed
        .into_iter()
        .map(|(seed, rows)| {
            let mean = rows.iter().map(|r| r.1).sum::<f64>() / rows.len() as f64;
            (seed, (mean, rows.into_iter().map(|r| r.0).collect()))
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

#[test]
fn seeds_pair_up_on_the_same_test_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tiny.yaml"), TINY).unwrap();
    let grid = "base: tiny.yaml\nteachers: [unetpp]\nstudents: [enet]\ntargets: [S3]\ndistillers: [lm+kmm+aam]\nseeds: [0, 1]\n";
    std::fs::write(dir.join("grid.yaml"), grid).unwrap();
    let o = train(dir, &["experiment", "grid.yaml"]).output().unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("1 target(s) × 2 seed(s)") && log.contains("= 6 cells"), "{log}");
    let out = dir.join("experiments/grid");
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();

    // Every seed is scored on the same cases; the seeds train different networks.
    let baseline = seed_means(&scores, "baseline-enet");
    let distilled = seed_means(&scores, "enet-unetpp-lm+kmm+aam");
    assert_eq!(baseline.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(baseline[&0].1, baseline[&1].1, "the test cases differ between seeds");
    assert_eq!(baseline[&0].1, distilled[&0].1);
    let seed_weights = |seed: u64| std::fs::read(out.join(format!("HCRUDB/seed-{seed}/baseline-enet.bpk"))).unwrap();
    assert_ne!(seed_weights(0), seed_weights(1), "both seeds trained the same network");

    // Table 2: mean ± sd over seeds; the paired row: w/ − w/o seed by seed.
    let table2 = &report[report.find("## Dice per target site").unwrap()..];
    let (m, sd) = mean_sd(&[baseline[&0].0, baseline[&1].0]);
    let cell = row(table2, "ENet w/o")[1].to_string();
    let (got_m, got_sd) = cell.split_once(" ± ").unwrap_or_else(|| panic!("no spread in {cell}"));
    assert!(
        (got_m.parse::<f64>().unwrap() - m).abs() < 6e-4 && (got_sd.parse::<f64>().unwrap() - sd).abs() < 6e-4,
        "{cell}"
    );
    let differences: Vec<f64> = [0, 1].iter().map(|s| distilled[s].0 - baseline[s].0).collect();
    let (dm, dsd) = mean_sd(&differences);
    let positive = differences.iter().filter(|d| **d > 0.0).count();
    let paired = &report[report.find("## Distilled minus baseline").unwrap()..];
    let want = format!("{dm:+.3} ± {dsd:.3} ({positive}/2)");
    assert_eq!(row(paired, "ENet ← UNet++ (lm+kmm+aam)")[1], want, "{paired}");

    // Diagnostics: fragmentation in the report and scores, the teacher on the students' sites,
    // gradient norms of every term in metrics.csv.
    assert!(report.contains("## Fragmentation") && scores.lines().next().unwrap().ends_with(",fragmentation"));
    let guidance = &report[report.find("## Teacher guidance").unwrap()..];
    assert!(guidance.contains("| HCRUDB | UNet++ | "), "{guidance}");
    let metrics = std::fs::read_to_string(out.join("HCRUDB/seed-1/metrics.csv")).unwrap();
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for line in metrics.lines().filter(|l| l.starts_with("enet-unetpp-lm+kmm+aam,")) {
        let f: Vec<&str> = line.split(',').collect();
        for term in ["grad_segmentation", "grad_lm", "grad_kmm", "grad_aam"] {
            let v: f64 = f[column(term)].parse().unwrap_or_else(|_| panic!("no {term} in {line}"));
            assert!(v.is_finite() && v > 0.0, "{term}: {line}");
        }
        assert!(f[column("grad_kd")].is_empty(), "{line}");
    }

    // The report leads with the interval: its effect is the mean over seeds × cases.
    let evidence =
        &report[report.find("## Does distillation help").unwrap()..report.find("## Dice per target").unwrap()];
    let effect = row(evidence, "ENet ← UNet++ (lm+kmm+aam)");
    assert_eq!(effect[1], "HCRUDB");
    assert!(effect[2].starts_with(&format!("{dm:+.3} [")), "{evidence}");
    assert_eq!(effect[4], format!("2 × {}", baseline[&0].1.len()), "{evidence}");
    assert!(out.join("forest_HCRUDB.png").exists() && out.join("effect_vs_guidance.png").exists());

    // The same grid under LOSO reuses both baselines from the cache, byte for byte, with this
    // grid's configuration hash (a rerun finds them done) and their epochs in metrics.csv.
    std::fs::write(dir.join("loso.yaml"), format!("{grid}overrides: {{ protocol: loso }}\n")).unwrap();
    let o = train(dir, &["experiment", "loso.yaml"]).output().unwrap();
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(log.matches("baseline-enet: reusing").count(), 2, "{log}");
    assert!(!log.contains("baseline-enet epoch"), "{log}");
    let loso = dir.join("experiments/loso");
    for seed in [0, 1] {
        let weights = std::fs::read(loso.join(format!("HCRUDB/seed-{seed}/baseline-enet.bpk"))).unwrap();
        assert_eq!(weights, seed_weights(seed), "seed {seed}");
        let metrics = std::fs::read_to_string(loso.join(format!("HCRUDB/seed-{seed}/metrics.csv"))).unwrap();
        assert_eq!(metrics.lines().filter(|l| l.starts_with("baseline-enet,")).count(), 3, "{metrics}");
    }
    // Both grids in one command: nothing retrained, and the two side by side.
    let o = train(dir, &["experiment", "grid.yaml", "loso.yaml"]).output().unwrap();
    let log = text(&o);
    assert!(o.status.success() && log.matches("baseline-enet: done earlier").count() == 4, "{log}");
    let both = std::fs::read_to_string(dir.join("experiments/grid+loso/report.md")).unwrap();
    let cross_row: Vec<&str> = both.lines().find(|l| l.starts_with("| grid | enet")).unwrap().split(" | ").collect();
    assert_eq!(cross_row[1], "enet ← unetpp (lm+kmm+aam)");
    assert!(cross_row[3].starts_with(&format!("{dm:+.3} [")), "{both}");
    assert!(both.contains("| loso | enet ← unetpp (lm+kmm+aam) | HCRUDB |"), "{both}");
    assert!(dir.join("experiments/grid+loso/effect_vs_guidance.png").exists());
}
