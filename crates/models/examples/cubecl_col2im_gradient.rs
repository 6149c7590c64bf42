//! A reproduction of wrong gradients on CubeCL's CPU runtime (README, "The GPU code path on this
//! CPU"; issue #30). Burn's operations only, no relkd code: a 1×1 convolution reduces four
//! channels to one, three 3×3 convolutions of dilations 1, 2 and 4 read it (ESPNet's ESP block,
//! cut down), and a second 1×1 convolution of the same input is normalised per sample (the
//! kernel-matrix loss's first step). The input's gradient is compared with flex's.
//!
//! It is wrong only under two autotune choices together, which a cold tuning on this machine
//! made once: the dilation-4 convolution's data gradient by `dgrad_fallback`, which computes it as
//! a transposed convolution, and that transposed convolution by `conv_transpose2d_col2im`. Those
//! two choices are committed (`tests/fixtures/cubecl-col2im-choices.db`, CubeCL's own cache
//! format, the two entries alone); every other shape is tuned afresh in a private folder. With
//! `--tune-afresh` nothing is given and CubeCL chooses for itself (correct in the runs made here).
//! Exit status 1 when the gradient differs from flex's by more than 1e-3 of its largest value.
//!
//! ```sh
//! cargo run --profile cuda-check -p relkd-models --features cubecl-cpu --example cubecl_col2im_gradient
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn::cubecl::config::cache::CacheConfig;
use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

const CHOICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/cubecl-col2im-choices.db");

fn main() -> ExitCode {
    let tune_afresh = std::env::args().any(|a| a == "--tune-afresh");
    let environment = std::env::temp_dir().join(format!("relkd-col2im-{}", std::process::id()));
    std::fs::create_dir_all(&environment).expect("a private folder for CubeCL's cache");
    if !tune_afresh {
        std::fs::copy(CHOICES, environment.join("default.db")).expect("the committed tuning choices");
    }
    use_cache_in(environment.clone());

    let (flex, cube) = (Device::flex().autodiff(), Device::cpu().autodiff());
    flex.seed(3);
    let random = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &flex);
    let (input, reduce, adapter) = (random([2, 4, 8, 8]), random([1, 4, 1, 1]), random([4, 4, 1, 1]));
    let branches: Vec<_> = (0..3).map(|_| random([1, 1, 3, 3])).collect();
    let upstream = random([2, 3, 8, 8]);
    let on_flex = input_gradient(&flex, &input, &reduce, &adapter, &branches, &upstream);
    let on_cube = input_gradient(&cube, &input, &reduce, &adapter, &branches, &upstream);
    let _ = std::fs::remove_dir_all(&environment);

    let largest = on_flex.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = on_flex.iter().zip(&on_cube).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("input gradient: flex {:?}…", &on_flex[..4]);
    println!("                CubeCL {:?}…", &on_cube[..4]);
    println!("largest difference {diff:.3e}, largest value {largest:.3e}");
    if diff > 1e-3 * largest { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// CubeCL keeps its autotune choices in `<folder>/default.db`; this must run before any CubeCL
/// device starts.
fn use_cache_in(folder: PathBuf) {
    let mut config = CubeClRuntimeConfig::default();
    config.environment.path = CacheConfig::Directory(folder);
    CubeClRuntimeConfig::set(config);
}

fn input_gradient(
    device: &Device,
    input: &Tensor<4>,
    reduce: &Tensor<4>,
    adapter: &Tensor<4>,
    branches: &[Tensor<4>],
    upstream: &Tensor<4>,
) -> Vec<f32> {
    let leaf = |t: &Tensor<4>| t.clone().to_device(device).detach().require_grad();
    let pointwise = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
    let x = leaf(input); // [2, 4, 8, 8]
    let reduced = conv2d(x.clone(), leaf(reduce), None, pointwise.clone()); // [2, 1, 8, 8]
    let dilated: Vec<_> = [1, 2, 4]
        .into_iter()
        .zip(branches)
        .map(|(d, w)| conv2d(reduced.clone(), leaf(w), None, ConvOptions::new([1, 1], [d, d], [d, d], 1)))
        .collect(); // 3 × [2, 1, 8, 8]
    let merged = (Tensor::cat(dilated, 1) * upstream.clone().to_device(device)).sum();
    let projected = conv2d(x.clone(), leaf(adapter), None, pointwise).reshape([2, 256]); // [2, 256]
    let norm = projected.clone().powi_scalar(2).sum_dim(1).sqrt(); // [2, 1]
    let grads = (merged + (projected / norm).sum()).backward();
    let grad = x.grad(&grads).expect("the input's gradient");
    grad.to_device(&Device::flex()).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 values")
}
