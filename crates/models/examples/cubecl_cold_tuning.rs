//! A minimal reproduction of CubeCL's slow cold tuning on its CPU runtime (README, "The GPU
//! code path on this CPU"): one matrix product with the shape of a 3×3 convolution's weight
//! gradient in UNet++ (64 → 8 channels over a 2×32×32 batch: m 8, n 512, k 2048, the left
//! operand transposed). Burn's autotune times every candidate kernel on the first call of a
//! shape; the CPU-only candidate `gemm_cpu_general` takes tens of seconds a call here, where
//! the one chosen takes about a millisecond. No relkd code is involved, and CubeCL's default
//! configuration is used (relkd's `--device cubecl-cpu` samples each candidate once).
//!
//! ```sh
//! CUBECL_AUTOTUNE_CACHE=0 CUBECL_DEBUG_LOG=/tmp/cubecl.log cargo run --profile cuda-check \
//!   -p relkd-models --features cubecl-cpu --example cubecl_cold_tuning
//! grep 'Tuning:' /tmp/cubecl.log
//! ```

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

fn main() {
    let device = Device::cpu();
    let lhs = Tensor::<2>::random([2048, 8], Distribution::Default, &device).transpose(); // [8, 2048]
    let rhs = Tensor::<2>::random([2048, 512], Distribution::Default, &device); // [2048, 512]
    for call in ["first (tunes)", "second"] {
        let started = Instant::now();
        let product = lhs.clone().matmul(rhs.clone()).into_data(); // [8, 512]
        println!("{call} product: {:.3} s ({} values)", started.elapsed().as_secs_f64(), product.num_elements());
    }
}
