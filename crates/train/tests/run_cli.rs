//! `train --teacher T --student S` end to end on a tiny phantom: every output, resume after a
//! kill, teacher reuse, and bad input that must neither succeed nor touch an earlier run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = include_str!("../../../tests/fixtures/tiny-run.yaml");

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let s = Self { dir: tempfile::tempdir().unwrap() };
        std::fs::write(s.path("tiny.yaml"), TINY).unwrap();
        s
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_train"));
        c.args(args).current_dir(self.dir.path()).env("RELKD_CACHE", self.path("cache"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn rows(csv: &Path, model: &str) -> Vec<String> {
    let text = std::fs::read_to_string(csv).unwrap_or_default();
    text.lines().filter(|l| l.starts_with(&format!("{model},"))).map(String::from).collect()
}

/// Metrics rows equal field by field, numbers to 1e-3 relative (flex runs its reductions on
/// several threads; the course must be the same, the last bits need not).
fn assert_close(a: &[String], b: &[String]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        for (u, v) in x.split(',').zip(y.split(',')) {
            match (u.parse::<f64>(), v.parse::<f64>()) {
                (Ok(u), Ok(v)) => assert!((u - v).abs() <= 1e-3 * u.abs().max(v.abs()).max(1e-6), "{x} vs {y}"),
                _ => assert_eq!(u, v, "{x} vs {y}"),
            }
        }
    }
}

/// Every file under `dir` with its contents, to show that a failed command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_killed_run_resumes_where_it_stopped_and_writes_every_output() {
    let s = Sandbox::new();
    let run = s.path("run");
    let mut child = s
        .command(&["--teacher", "unetpp", "--student", "enet", "--config", "tiny.yaml", "--out", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the distilled student has finished an epoch (teacher and baseline are final
    // by then): its metrics row is written right after its checkpoint, which holds the KMM
    // adapter and Adam's moments with the network.
    let start = Instant::now();
    while rows(&run.join("metrics.csv"), "student").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(300), "no student checkpoint after 5 minutes");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(run.join("baseline.yaml").exists() && !run.join("student.yaml").exists());
    let before = rows(&run.join("metrics.csv"), "student");
    assert!(!before.is_empty());

    let resumed = s.run(&["--resume", "--out", "run"]);
    let log = text(&resumed);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("teacher: done earlier in this run"), "{log}");
    // The checkpoint may be an epoch ahead of the rows read at the kill, never behind.
    let continued: Option<usize> = log
        .split("student: continuing after epoch ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    match continued {
        Some(epoch) => assert!(epoch >= before.len(), "{log}"),
        None => assert!(before.len() == 3 && log.contains("student: done earlier"), "{log}"),
    }
    let after = rows(&run.join("metrics.csv"), "student");
    assert_eq!(after.len(), 3);
    assert_eq!(after[..before.len()], before[..], "finished epochs are kept, not retrained");
    assert_eq!(rows(&run.join("metrics.csv"), "teacher").len(), 3);
    assert_eq!(rows(&run.join("metrics.csv"), "baseline").len(), 3);

    // Everything the issue lists is there, and nothing half-written is left.
    for f in ["config.yaml", "teacher.bpk", "baseline.bpk", "student.bpk", "scores.csv", "report.md"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    for png in std::iter::once(run.join("loss_curves.png"))
        .chain(std::fs::read_dir(run.join("overlays")).unwrap().map(|e| e.unwrap().path()))
    {
        assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG", "{}", png.display());
    }
    assert!(!run.join("checkpoints").exists(), "training state is dropped once every model is final");
    assert!(snapshot(&run).iter().all(|(p, _)| !p.to_string_lossy().contains(".relkd-partial")));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for row in ["| teacher UNet++ |", "| ENet w/o |", "| ENet w/ UNet++ |", "phantom numbers"] {
        assert!(report.contains(row), "{row} not in\n{report}");
    }
    // S3 has 4 cases; half are test cases, scored by each of the three models.
    let scores = std::fs::read_to_string(run.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 1 + 3 * 2, "{scores}");
    assert!(scores.lines().skip(1).all(|l| l.contains(",HCRUDB,")), "{scores}");
    let student_card = std::fs::read_to_string(run.join("student.yaml")).unwrap();
    assert!(student_card.contains("- AAM λ=0.9") && student_card.contains("target_site: HCRUDB"), "{student_card}");
    assert_eq!(std::fs::read_to_string(s.path("latest")).unwrap(), "run");

    // A second run with the same settings reuses the cached teacher and, the data order and
    // random streams being seeded per epoch, follows the interrupted student's course.
    let again = s.run(&["--teacher", "unetpp", "--student", "enet", "--config", "tiny.yaml", "--out", "again"]);
    let log = text(&again);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("teacher: reusing"), "{log}");
    let same = std::fs::read(run.join("teacher.bpk")).unwrap() == std::fs::read(s.path("again/teacher.bpk")).unwrap();
    assert!(same, "the reused teacher is not the cached one");
    assert_close(&rows(&s.path("again/metrics.csv"), "student"), &after);
    assert_close(&rows(&s.path("again/metrics.csv"), "baseline"), &rows(&run.join("metrics.csv"), "baseline"));

    bad_input_leaves_the_run_untouched(&s, &run);
}

/// Bad input: a clear error, a non-zero exit, and the earlier run in `run` untouched.
fn bad_input_leaves_the_run_untouched(s: &Sandbox, run: &Path) {
    let untouched = snapshot(run);
    std::fs::write(s.path("typo.yaml"), TINY.replace("epochs: 3", "epoch: 3")).unwrap();
    std::fs::create_dir(s.path("empty")).unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--config", "tiny.yaml", "--seeds", "0,1,0", "--out", "x"], "--seeds lists a seed twice"),
        (&["--config", "tiny.yaml", "--seeds", "0,1", "--resume", "--out", "run"], "drop --resume"),
        (&["--config", "typo.yaml", "--out", "run"], "unknown field `epoch`"),
        (&["--config", "tiny.yaml", "--target", "Elsewhere", "--out", "run"], "unknown site 'Elsewhere'"),
        (&["--config", "tiny.yaml", "--data", "empty", "--out", "run"], "no site folders"),
        (&["--config", "tiny.yaml", "--out", "run"], "already exists and is not empty"),
        (&["--config", "tiny.yaml", "--target", "S1", "--resume", "--out", "run"], "another configuration"),
        (
            &[
                "--config",
                "tiny.yaml",
                "--teacher",
                "deeplabv3plus",
                "--teacher-checkpoint",
                "run/teacher.bpk",
                "--out",
                "x",
            ],
            "is a UNet++",
        ),
    ];
    for (args, expected) in cases {
        let out = s.run(args);
        let log = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{log}");
        assert!(log.contains(expected), "{args:?}: expected '{expected}' in\n{log}");
        assert!(!log.contains("panicked"), "{args:?}:\n{log}");
    }
    assert!(snapshot(run) == untouched, "a failed command changed the earlier run");
    assert!(!s.path("x").exists(), "a rejected teacher checkpoint still created a run folder");
}

#[test]
fn devices_train_data_parallel_on_two_cpu_workers() {
    let s = Sandbox::new();
    // Two workers on the CPU: the same path as --devices cuda:0,cuda:1, runnable here.
    let o = s.run(&["--config", "tiny.yaml", "--out", "run", "--devices", "cpu,cpu"]);
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("2 devices, data parallel"), "{log}");
    assert_eq!(rows(&s.path("run/metrics.csv"), "student").len(), 3);
    let report = std::fs::read_to_string(s.path("run/report.md")).unwrap();
    assert!(report.contains("2 devices, data parallel"), "{report}");
}

/// Also run by `.ci/run` against the CUDA build, on a machine without a GPU.
#[test]
fn unavailable_devices_fail_clearly_before_anything_is_written() {
    let s = Sandbox::new();
    // A device that cannot run is an error before anything is trained, never a fallback.
    let o = s.run(&["--config", "tiny.yaml", "--out", "gpu", "--devices", "cuda:0,cuda:1"]);
    let log = text(&o);
    assert!(!o.status.success());
    assert!(log.contains("CUDA"), "{log}");
    assert!(!s.path("gpu").exists(), "{log}");
    let o = s.run(&["--config", "tiny.yaml", "--devices", "cpu,auto"]);
    assert!(!o.status.success() && text(&o).contains("not auto"), "{}", text(&o));
}
