//! Which int8 form runs faster on this CPU. Whether int8 activations pay depends on the network
//! and the machine (issue #32: ERFNet's run in 0.43× its float32 time here, ESPNet's in 1.18×,
//! the quick run's half-width ENet's in 1.2–1.6×), so `export --int8` times both forms, and the
//! float32 file beside them, with ONNX Runtime before choosing, as TensorRT's builder times its
//! kernels.
//!
//! The files run in turns, a block of runs of one and then the next's, so that the machine's
//! drift falls on all of them alike. After a run, ONNX Runtime's threads spin for a while (its
//! default), and they took the cores from the next file's block: ESPNet's first run of a block
//! took 2–3× the others' here, and runs of a few milliseconds (the quick run's ENet) came out
//! bimodal, 2.7 or 6.7 ms. So each block starts after a pause and with an untimed run.

use std::path::Path;
use std::time::{Duration, Instant};

use onnx_protobuf::{Message, ModelProto};
use relkd_core::files::Pending;
use relkd_core::timing::Timings;

use crate::quantize::Activations;
use crate::{ExportError, OnnxPredictor, Probe};

/// Runs of one file before the next file's, the first untimed.
const BLOCK: usize = 4;
/// Blocks of each file: at least `MIN_ROUNDS`, then more until `ROUNDS` or `BUDGET`.
const MIN_ROUNDS: usize = 2;
const ROUNDS: usize = 20;
const BUDGET: Duration = Duration::from_secs(10);
/// ONNX Runtime's intra-op threads, as the export's checks use.
const THREADS: usize = 2;
/// Before each block, long enough for the other sessions' threads to stop spinning.
const PAUSE: Duration = Duration::from_millis(30);
/// Slices a run: `infer`'s default batch. A single small slice measures ONNX Runtime's own
/// overhead more than the network (the quick run's ENet: 0.4 ms at 64×64).
const SLICES: usize = 8;

/// ONNX Runtime's median time of one run of each form on a batch of calibration slices, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Int8Timing {
    pub int8_activations_ms: f64,
    pub float_activations_ms: f64,
    pub float32_ms: f64,
    /// Slices a run.
    pub slices: usize,
    /// Runs behind each median.
    pub runs: usize,
}

impl Int8Timing {
    /// The faster form; on an exact tie float32 activations, the closer to the float32 network.
    pub fn faster(&self) -> Activations {
        if self.float_activations_ms <= self.int8_activations_ms { Activations::Float } else { Activations::Int8 }
    }

    /// The chosen form's time over the float32 file's.
    pub fn chosen_over_float32(&self) -> f64 {
        let chosen = match self.faster() {
            Activations::Int8 => self.int8_activations_ms,
            Activations::Float => self.float_activations_ms,
        };
        chosen / self.float32_ms
    }
}

/// Times `float32` and the two int8 forms of it (`[int8 activations, float activations]`) on the
/// first [`SLICES`] slices of `input`, each written to a temporary file beside `out`.
pub fn time_int8_forms(
    float32: &ModelProto,
    forms: [&ModelProto; 2],
    input: &Probe,
    out: &Path,
) -> Result<Int8Timing, ExportError> {
    let [n, c, h, w] = input.shape;
    let slices = n.min(SLICES);
    assert!(slices > 0, "slices to time on");
    let batch = Probe {
        what: format!("{slices} slices of {}", input.what),
        shape: [slices, c, h, w],
        data: input.data[..slices * c * h * w].to_vec(),
        unpool_ties: input.unpool_ties,
    };
    let files = [float32, forms[0], forms[1]]
        .into_iter()
        .map(|model| {
            let file = Pending::beside(out);
            let io = |message: String| ExportError::Io { path: file.to_path_buf(), message };
            let bytes = model.write_to_bytes().map_err(|e| io(e.to_string()))?;
            std::fs::write(&file, bytes).map_err(|e| io(e.to_string()))?;
            Ok(file)
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    let paths: Vec<&Path> = files.iter().map(|f| f.as_ref()).collect();
    let medians = medians_in_turns(&paths, &batch)?;
    Ok(Int8Timing {
        float32_ms: medians[0].median_ms(),
        int8_activations_ms: medians[1].median_ms(),
        float_activations_ms: medians[2].median_ms(),
        slices,
        runs: medians[0].runs(),
    })
}

/// The timings of each model on `input`, in turns of [`BLOCK`] runs after one warm-up run each.
fn medians_in_turns(models: &[&Path], input: &Probe) -> Result<Vec<Timings>, ExportError> {
    let predictors = models.iter().map(|m| OnnxPredictor::new(m, THREADS)).collect::<Result<Vec<_>, _>>()?;
    for predictor in &predictors {
        predictor.run(input.shape, &input.data)?;
    }
    let started = Instant::now();
    let mut times = vec![Vec::new(); predictors.len()];
    for round in 0..ROUNDS {
        if round >= MIN_ROUNDS && started.elapsed() > BUDGET {
            break;
        }
        for (predictor, times) in predictors.iter().zip(&mut times) {
            std::thread::sleep(PAUSE);
            predictor.run(input.shape, &input.data)?;
            for _ in 1..BLOCK {
                let start = Instant::now();
                predictor.run(input.shape, &input.data)?;
                times.push(start.elapsed());
            }
        }
    }
    Ok(times.into_iter().map(Timings::from).collect())
}

/// What `export --int8` says about the form it wrote.
pub fn describe(activations: Activations, timing: Option<&Int8Timing>) -> String {
    let Some(t) = timing else {
        return format!("int8 form: {} (as asked)", activations.describe());
    };
    let mut line = format!(
        "int8 form: {}, the faster here: {} slice(s) in {:.2} ms with int8 activations, {:.2} ms with float32 \
         activations, {:.2} ms for the float32 file (ONNX Runtime, CPU, {THREADS} threads, medians of {} runs \
         in turns); --int8-activations int8|float fixes the form",
        activations.describe(),
        t.slices,
        t.int8_activations_ms,
        t.float_activations_ms,
        t.float32_ms,
        t.runs
    );
    if t.chosen_over_float32() > 1.05 {
        line.push_str(&format!(
            "\nnote: on this CPU the float32 file runs faster (this one takes {:.2}× its time): export without \
             --int8 for speed; this file is for size",
            t.chosen_over_float32()
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faster_form_is_chosen_and_compared_with_float32() {
        let timing = |int8, float| Int8Timing {
            int8_activations_ms: int8,
            float_activations_ms: float,
            float32_ms: 10.0,
            slices: 8,
            runs: 9,
        };
        // ESPNet-like: int8 activations slower than float ones.
        let espnet = timing(12.0, 9.5);
        assert_eq!(espnet.faster(), Activations::Float);
        assert!((espnet.chosen_over_float32() - 0.95).abs() < 1e-12);
        // ERFNet-like.
        let erfnet = timing(4.3, 12.7);
        assert_eq!(erfnet.faster(), Activations::Int8);
        assert!((erfnet.chosen_over_float32() - 0.43).abs() < 1e-12);
        assert_eq!(timing(5.0, 5.0).faster(), Activations::Float);
        // The note appears only where the chosen form is over 5% slower than float32.
        assert!(!describe(Activations::Float, Some(&espnet)).contains("note"));
        let slow = timing(12.0, 11.0);
        assert!(describe(slow.faster(), Some(&slow)).contains("takes 1.10× its time"));
    }
}
