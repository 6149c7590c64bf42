//! Repeated timing for benchmarks: medians and tails of wall-clock runs after a warm-up.

use std::time::{Duration, Instant};

/// Sorted wall-clock durations of repeated runs.
#[derive(Debug, Clone)]
pub struct Timings(Vec<Duration>);

/// Runs `f` `warmup` times untimed, then `runs` times timed.
pub fn time_runs(warmup: usize, runs: usize, mut f: impl FnMut()) -> Timings {
    assert!(runs > 0, "at least one timed run");
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    Timings(times)
}

impl From<Vec<Duration>> for Timings {
    /// Durations measured elsewhere (e.g. interleaved with other variants).
    fn from(mut times: Vec<Duration>) -> Self {
        assert!(!times.is_empty(), "at least one timed run");
        times.sort();
        Timings(times)
    }
}

impl Timings {
    pub fn runs(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (linear interpolation, as numpy), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let ms: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        crate::metrics::percentile(&ms, p)
    }

    pub fn median_ms(&self) -> f64 {
        self.percentile_ms(50.0)
    }

    pub fn min_ms(&self) -> f64 {
        self.0[0].as_secs_f64() * 1e3
    }

    pub fn max_ms(&self) -> f64 {
        self.0[self.0.len() - 1].as_secs_f64() * 1e3
    }

    /// `median 12.34 ms   min …   max …   (N runs)`.
    pub fn summary(&self) -> String {
        format!(
            "median {:>9.2} ms   min {:>9.2}   max {:>9.2}   ({} runs)",
            self.median_ms(),
            self.min_ms(),
            self.max_ms(),
            self.runs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_as_numpy() {
        let t = Timings((1..=20).map(Duration::from_millis).collect());
        // numpy.percentile(range(1, 21), [50, 95]) = [10.5, 19.05]
        assert!((t.median_ms() - 10.5).abs() < 1e-9);
        assert!((t.percentile_ms(95.0) - 19.05).abs() < 1e-9);
        assert_eq!((t.min_ms(), t.max_ms()), (1.0, 20.0));
    }
}
