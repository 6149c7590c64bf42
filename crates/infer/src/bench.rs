//! `infer bench`: the efficiency table (Table 1 and the paper's time and storage claim),
//! measured. Each model runs in its own child process (`infer bench-one`), so its peak
//! resident memory is its own, and the models are measured one after another in one run.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use relkd_core::nifti_io::{Volume, new_header};
use relkd_core::timing::Timings;

use crate::graph::cost;
use crate::model::Model;
use crate::runtime::Provider;

/// One model's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    pub model: String,
    pub file: PathBuf,
    pub params: usize,
    /// NaN when the graph's shapes could not be followed (see [`crate::graph`]).
    pub gflops: f64,
    pub file_bytes: u64,
    /// Per batch size: (batch, median ms per slice, p95 ms per slice, runs).
    pub latency: Vec<(usize, f64, f64, usize)>,
    /// Median ms for a whole volume file, read to mask written (batched at the largest batch
    /// size).
    pub volume_ms: f64,
    /// That time over the time spent inside ONNX Runtime (median of the volume runs).
    pub volume_overhead: f64,
    pub volume_slices: usize,
    /// Peak resident set of the process that ran it, MiB.
    pub peak_rss_mib: f64,
    pub provider: String,
}

/// What `bench-one` is asked to do.
pub struct BenchPlan<'a> {
    pub size: usize,
    pub batches: &'a [usize],
    pub provider: Provider,
    pub threads: usize,
    pub runs: usize,
    pub volume_runs: usize,
    pub volume: Option<&'a Path>,
}

/// Peak resident set size of this process (Linux `VmHWM`), MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .map_or(f64::NAN, |kib: f64| kib / 1024.0)
}

/// A deterministic 384×384×24-like test volume when none is given (timing does not depend on
/// the voxel values).
fn synthetic_volume(size: usize, depth: usize) -> Volume {
    let (dims, spacing) = ([size, size, depth], [1.0, 1.0, 3.0]);
    let affine = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let data = (0..size * size * depth).map(|i| ((i * 7919) % 1000) as f32).collect();
    Volume { data, dims, spacing, affine, header: new_header(spacing, &affine) }
}

/// Measures one model in this process (the child's side of `infer bench`).
pub fn measure(path: &Path, plan: &BenchPlan) -> anyhow::Result<BenchRow> {
    let mut model = Model::open(path, plan.provider, plan.threads)?;
    let channels = model.info.in_channels.unwrap_or(1);
    let graph = cost(path, channels, plan.size, plan.size)?;
    // A graph whose shapes cannot be followed is still timed; its GFLOPs are unknown.
    let gflops = graph.gflops.unwrap_or_else(|e| {
        eprintln!("warning: {e}");
        f64::NAN
    });
    let s = plan.size;
    let mut latency = Vec::new();
    for &batch in plan.batches {
        let input: Vec<f32> = (0..batch * channels * s * s).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let shape = [batch, channels, s, s];
        for _ in 0..3 {
            model.logits(shape, &input)?;
        }
        let mut times = Vec::with_capacity(plan.runs);
        for _ in 0..plan.runs {
            let start = Instant::now();
            model.logits(shape, &input)?;
            times.push(start.elapsed() / batch as u32);
        }
        let t = Timings::from(times);
        latency.push((batch, t.median_ms(), t.percentile_ms(95.0), plan.runs));
    }
    // End to end on a volume file: read, segment, write the mask, as `infer --volume` does.
    let scratch = std::env::temp_dir().join(format!("relkd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let source = match plan.volume {
        Some(p) => p.to_path_buf(),
        None => {
            let path = scratch.join("volume.nii.gz");
            // Stored as int16, as MRI volumes are.
            let v = synthetic_volume(384, 24);
            let voxels: Vec<i16> = v.data.iter().map(|&x| x as i16).collect();
            relkd_core::nifti_io::write_volume(&path, &voxels, v.dims, &v.header)?;
            path
        }
    };
    let prep = relkd_core::transforms::Preprocessing { size: s, context: channels.saturating_sub(1) / 2 };
    let batch = plan.batches.iter().copied().max().unwrap_or(1);
    let (mut times, mut overheads, mut slices) = (Vec::new(), Vec::new(), 0);
    for _ in 0..plan.volume_runs.max(1) {
        model.session_time = std::time::Duration::ZERO;
        let start = Instant::now();
        let volume = relkd_core::nifti_io::read_volume(&source)?;
        let seg = model.segment(&volume, &prep, batch, false)?;
        relkd_core::nifti_io::write_mask(&scratch.join("mask.nii.gz"), &seg.mask, &volume)?;
        let elapsed = start.elapsed();
        times.push(elapsed);
        overheads.push(elapsed.as_secs_f64() / model.session_time.as_secs_f64());
        slices = volume.dims[2];
    }
    let _ = std::fs::remove_dir_all(&scratch);
    overheads.sort_by(f64::total_cmp);
    Ok(BenchRow {
        model: model.info.name.clone(),
        file: path.into(),
        params: graph.params,
        gflops,
        file_bytes: std::fs::metadata(path)?.len(),
        latency,
        volume_ms: Timings::from(times).median_ms(),
        volume_overhead: overheads[overheads.len() / 2],
        volume_slices: slices,
        peak_rss_mib: peak_rss_mib(),
        provider: format!("{:?}", model.provider).to_lowercase(),
    })
}

/// The child's report, one tab-separated line (parsed by [`BenchRow::parse`]).
impl BenchRow {
    pub fn to_line(&self) -> String {
        let latency: Vec<String> = self.latency.iter().map(|(b, m, p, r)| format!("{b}:{m}:{p}:{r}")).collect();
        format!(
            "BENCH\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.model,
            self.file.display(),
            self.params,
            self.gflops,
            self.file_bytes,
            latency.join(","),
            self.volume_ms,
            self.volume_slices,
            self.peak_rss_mib,
            self.provider,
            self.volume_overhead
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.strip_prefix("BENCH\t")?.split('\t').collect();
        let latency = f
            .get(5)?
            .split(',')
            .map(|l| {
                let p: Vec<&str> = l.split(':').collect();
                Some((
                    p.first()?.parse().ok()?,
                    p.get(1)?.parse().ok()?,
                    p.get(2)?.parse().ok()?,
                    p.get(3)?.parse().ok()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            model: f.first()?.to_string(),
            file: PathBuf::from(f.get(1)?),
            params: f.get(2)?.parse().ok()?,
            gflops: f.get(3)?.parse().ok()?,
            file_bytes: f.get(4)?.parse().ok()?,
            latency,
            volume_ms: f.get(6)?.parse().ok()?,
            volume_slices: f.get(7)?.parse().ok()?,
            peak_rss_mib: f.get(8)?.parse().ok()?,
            provider: f.get(9)?.to_string(),
            volume_overhead: f.get(10)?.parse().ok()?,
        })
    }
}

/// The table, markdown: one row per model, ratios against the first.
pub fn markdown(rows: &[BenchRow], plan: &BenchPlan) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Input 1×{s}×{s}; provider {:?}, {} thread(s); latency per slice: median and p95 of {} runs after 3 warm-ups; \
         volume: {} slices at batch {}.\n",
        plan.provider,
        plan.threads,
        plan.runs,
        rows.first().map_or(0, |r| r.volume_slices),
        plan.batches.iter().max().unwrap_or(&1),
        s = plan.size
    );
    let mut header = "| model | params (M) | GFLOPs | file MB |".to_string();
    let mut rule = "|---|---|---|---|".to_string();
    for &b in plan.batches {
        let _ = write!(header, " ms/slice b{b} (p95) |");
        rule.push_str("---|");
    }
    header.push_str(" s/volume | ÷ ORT time | peak RSS MiB | speed-up | size ratio |");
    rule.push_str("---|---|---|---|---|");
    let _ = writeln!(md, "{header}\n{rule}");
    let first = rows.first();
    for r in rows {
        let _ = write!(
            md,
            "| {} | {:.3} | {} | {:.2} |",
            r.model,
            r.params as f64 / 1e6,
            if r.gflops.is_nan() { "unknown".into() } else { format!("{:.2}", r.gflops) },
            r.file_bytes as f64 / 1e6
        );
        for (_, median, p95, _) in &r.latency {
            let _ = write!(md, " {median:.1} ({p95:.1}) |");
        }
        let (speedup, size) =
            first.map_or((1.0, 1.0), |f| (f.latency[0].1 / r.latency[0].1, f.file_bytes as f64 / r.file_bytes as f64));
        let _ = writeln!(
            md,
            " {:.2} | {:.2} | {:.0} | {speedup:.1}× | {size:.1}× |",
            r.volume_ms / 1e3,
            r.volume_overhead,
            r.peak_rss_mib
        );
    }
    let _ = writeln!(
        md,
        "\ns/volume: reading the file, segmenting, writing the mask; ÷ ORT time: that over the time inside ONNX Runtime. \
         speed-up: the first model's median ms/slice (batch {}) over this one's; size ratio: the first model's file over this one's.",
        plan.batches[0]
    );
    md
}

/// The same as CSV.
pub fn csv(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "model,file,params,gflops,file_bytes,batch,median_ms_per_slice,p95_ms_per_slice,runs,volume_ms,volume_overhead,volume_slices,peak_rss_mib,provider\n",
    );
    for r in rows {
        for (b, m, p, n) in &r.latency {
            let _ = writeln!(
                out,
                "{},{},{},{:.3},{},{b},{m:.3},{p:.3},{n},{:.1},{:.3},{},{:.1},{}",
                r.model,
                r.file.display(),
                r.params,
                r.gflops,
                r.file_bytes,
                r.volume_ms,
                r.volume_overhead,
                r.volume_slices,
                r.peak_rss_mib,
                r.provider
            );
        }
    }
    out
}
