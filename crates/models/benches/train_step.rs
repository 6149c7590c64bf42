//! One ENet training step (forward, cross-entropy, backward, Adam update) at batch 8 and
//! 128×128, paper width, on flex and, with `--features ndarray`, on the ndarray backend.
//!
//!     cargo bench -p relkd-models --bench train_step [--features ndarray]

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use relkd_core::timing::time_runs;
use relkd_models::Segmenter;
use relkd_models::enet::EnetConfig;

const BATCH: usize = 8;
const SIZE: usize = 128;

fn measure(name: &str, device: Device, runs: usize) {
    let mut model = EnetConfig::paper().init(&device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let x = Tensor::<4>::random([BATCH, 1, SIZE, SIZE], Distribution::Normal(0.0, 1.0), &device);
    let targets = Tensor::<1, Int>::random([BATCH * SIZE * SIZE], Distribution::Uniform(0.0, 2.0), &device);
    let timings = time_runs(1, runs, || {
        let logits = model.forward(x.clone()); // [b, 2, h, w]
        let flat = logits.permute([0, 2, 3, 1]).reshape([BATCH * SIZE * SIZE, 2]);
        let loss = loss_fn.forward(flat, targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model.clone(), grads);
        // Reading the loss forces every queued operation to finish.
        loss.into_data();
    });
    println!("{name:<8} {}", timings.summary());
}

fn main() {
    println!("ENet training step, batch {BATCH}, 1×{SIZE}×{SIZE}, Adam");
    measure("flex", Device::flex().autodiff(), 10);
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // burn-ndarray is deprecated; measured here to justify flex.
    measure("ndarray", Device::ndarray().autodiff(), 3);
}
