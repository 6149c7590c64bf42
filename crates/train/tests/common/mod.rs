//! Helpers of the train crate's tests (`losses.rs`, `affinity_loss.rs`, `onnx_teacher.rs`,
//! `trainer.rs`); each uses some of them.
#![allow(dead_code)]

use burn::tensor::{Device, Int, Tensor, TensorData};

/// The flex device's random stream is global, and a binary's tests run in parallel: a test that
/// seeds it and then draws (weights, dropout masks, random tensors) holds this throughout, or
/// another test's draws interleave with its own and it starts from other values.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn lock_device_rng() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn t4(values: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

pub fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Two pixels side by side, 1×2×1×2: pixel 0 has p = (½, ½), pixel 1 has p = (¼, ¾).
pub fn two_pixel_logits(device: &Device) -> Tensor<4> {
    let ln3 = 3f32.ln();
    t4(&[0.0, 0.0, 0.0, ln3], [1, 2, 1, 2], device)
}

pub fn labels(values: &[i64], shape: [usize; 3], device: &Device) -> Tensor<3, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

pub fn close(got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "got {got}, want {want}");
}

/// Central differences of `f` at every element of `x`, against autodiff.
pub fn check_gradient(x: Vec<f32>, shape: [usize; 4], f: impl Fn(Tensor<4>) -> Tensor<1>) {
    let device = Device::flex().autodiff();
    let input = t4(&x, shape, &device).require_grad();
    let grads = f(input.clone()).backward();
    let analytic = values(input.grad(&grads).unwrap());
    let plain = Device::flex();
    let eps = 1e-2f32;
    for i in 0..x.len() {
        let at = |delta: f32| {
            let mut y = x.clone();
            y[i] += delta;
            scalar(f(t4(&y, shape, &plain))) as f32
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
        let tol = 2e-3 + 2e-2 * numeric.abs();
        assert!((numeric - analytic[i]).abs() <= tol, "element {i}: numeric {numeric}, autodiff {}", analytic[i]);
    }
}

pub fn random(n: usize, seed: u64) -> Vec<f32> {
    // A fixed, dependency-free pseudo-random sequence in [-1, 1].
    (0..n)
        .map(|i| {
            let z = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
