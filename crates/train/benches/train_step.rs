//! One training step of each student (forward, cross-entropy, backward, Adam update) at batch 8
//! and 1×128×128, paper width, on flex, beside the same step in PyTorch when it can be imported
//! (ci/torch_reference.py, as many threads as flex uses), as a ratio measured in one run. With
//! `--features ndarray`, ENet on the ndarray backend too.
//!
//!     cargo bench -p relkd-train --bench train_step [--features ndarray]
//!     RELKD_TORCH_PYTHON=.venv-torch/bin/python cargo bench -p relkd-train --bench train_step

use std::process::Command;

use burn::tensor::Device;
use relkd_models::Architecture;
use relkd_train::step_time::{StepShape, time_training_step};

const RUNS: usize = 10;

fn shape(architecture: Architecture) -> StepShape {
    StepShape { architecture, batch: 8, size: 128, width: 1.0 }
}

/// PyTorch's median for the same step, or why there is none.
fn pytorch_median_ms(python: &str, architecture: Architecture, threads: usize) -> Result<f64, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ci/torch_reference.py");
    let s = shape(architecture);
    let output = Command::new(python)
        .args([script, "--arch", architecture.name(), "--device", "cpu", "--warmup", "1"])
        .args(["--batch", &s.batch.to_string(), "--size", &s.size.to_string()])
        .args(["--runs", &RUNS.to_string(), "--threads", &threads.to_string()])
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().last().unwrap_or("failed").to_string());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = stdout.split("\"median_ms\": ").nth(1).ok_or("no median_ms in its output")?;
    field.split([',', '}']).next().and_then(|v| v.trim().parse().ok()).ok_or_else(|| "unreadable median_ms".into())
}

fn main() {
    relkd_models::cpu::keep_freed_memory(); // as the `train` binary does
    let python = std::env::var("RELKD_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("training step, batch 8, 1×128×128, paper width, Adam; {threads} threads; median of {RUNS}");
    for architecture in [Architecture::Enet, Architecture::Espnet, Architecture::Erfnet] {
        let timings = time_training_step(shape(architecture), &Device::flex().autodiff(), 1, RUNS);
        let burn = timings.median_ms();
        let versus = match pytorch_median_ms(&python, architecture, threads) {
            Ok(torch) => format!("PyTorch {torch:>7.1} ms   burn/PyTorch {:.2}×", burn / torch),
            Err(why) => format!("PyTorch: not measured ({why})"),
        };
        println!("{:<7} flex {}   {versus}", architecture.display_name(), timings.summary());
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // burn-ndarray is deprecated; measured here to justify flex.
    {
        let timings = time_training_step(shape(Architecture::Enet), &Device::ndarray().autodiff(), 1, 3);
        println!("{:<7} ndarray {}", "ENet", timings.summary());
    }
}
