//! `train step-time`: one plain training step of a network — forward, cross-entropy on random
//! labels, backward, Adam update — timed over repeated runs. `ci/torch_reference.py` times the
//! same step in PyTorch, so the two frameworks compare side by side (ci/gpu-check.sh).

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use relkd_core::timing::{Timings, time_runs};
use relkd_models::{Architecture, NetworkConfig, Segmenter};

/// Which step to time.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    pub architecture: Architecture,
    pub batch: usize,
    /// Input height and width (one channel).
    pub size: usize,
    /// Channel multiplier; 1.0 is the paper's network.
    pub width: f64,
}

/// Times `runs` training steps after `warmup` untimed ones (the first steps of a GPU backend
/// compile and tune its kernels). `device` must be an autodiff device.
pub fn time_training_step(shape: StepShape, device: &Device, warmup: usize, runs: usize) -> Timings {
    let StepShape { architecture, batch, size, width } = shape;
    device.seed(0);
    let mut model = NetworkConfig::new(architecture).with_width(width).init(device);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let images = Tensor::<4>::random([batch, 1, size, size], Distribution::Normal(0.0, 1.0), device);
    let labels = Tensor::<1, Int>::random([batch * size * size], Distribution::Uniform(0.0, 2.0), device);
    time_runs(warmup, runs, || {
        let logits = model.forward(images.clone()); // [b, 2, h, w]
        let flat = logits.permute([0, 2, 3, 1]).reshape([batch * size * size, 2]);
        let loss = loss_fn.forward(flat, labels.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-3, model.clone(), grads);
        // Reading the loss waits for every queued operation, on any backend.
        loss.into_data();
    })
}

/// One line of JSON, the fields ci/torch_reference.py prints for the same step.
pub fn json_line(shape: StepShape, device: &str, timings: &Timings) -> String {
    format!(
        "{{\"framework\": \"burn\", \"arch\": \"{}\", \"width\": {}, \"batch\": {}, \
         \"size\": {}, \"device\": \"{device}\", \"runs\": {}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \
         \"max_ms\": {:.3}}}",
        shape.architecture.name(),
        shape.width,
        shape.batch,
        shape.size,
        timings.runs(),
        timings.median_ms(),
        timings.min_ms(),
        timings.max_ms()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_trains_and_reports_every_run() {
        let shape = StepShape { architecture: Architecture::Enet, batch: 2, size: 32, width: 0.25 };
        let device = Device::flex().autodiff();
        let timings = time_training_step(shape, &device, 1, 3);
        assert_eq!(timings.runs(), 3);
        let line = json_line(shape, "cpu", &timings);
        assert!(line.starts_with("{\"framework\": \"burn\""), "{line}");
        assert!(line.contains("\"arch\": \"enet\"") && line.contains("\"runs\": 3"), "{line}");
    }
}
