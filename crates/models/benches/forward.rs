//! Forward time of each network at 1×1×384×384 on the default CPU backend (flex), inference
//! mode (no autodiff).
//!
//!     cargo bench -p relkd-models --bench forward

use std::hint::black_box;

use burn::tensor::{Device, Distribution, Tensor};
use relkd_core::timing::time_runs;
use relkd_models::{Architecture, NetworkConfig, Segmenter};

fn main() {
    relkd_models::cpu::keep_freed_memory(); // as the `train` binary does
    let device = Device::flex();
    let x = Tensor::<4>::random([1, 1, 384, 384], Distribution::Normal(0.0, 1.0), &device);
    println!("forward, 1×1×384×384, flex, {} threads", std::thread::available_parallelism().map_or(1, |n| n.get()));
    for a in Architecture::ALL {
        let net = NetworkConfig::new(a).init(&device);
        // Teachers take seconds per pass: fewer repetitions.
        let runs = if a.role() == relkd_models::Role::Teacher { 5 } else { 20 };
        let timings = time_runs(1, runs, || {
            // into_data waits for the result, so the time covers the whole computation.
            black_box(net.forward(x.clone()).into_data());
        });
        println!("{:<11} {}", a.display_name(), timings.summary());
    }
}
