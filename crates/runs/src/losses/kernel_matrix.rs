//! The kernel matrix module `L_KM` (eqs. 5–6).
//!
//! The student's distillation feature passes a trainable 1×1 adapter to the teacher's channels
//! and is resized to the teacher's spatial size. Each sample's map is flattened and
//! L2-normalised; `K = X Xᵀ` is the n×n Gram matrix over the batch, for student and teacher;
//! `L_KM = mean((K_S − K_T)²) + mean(|K_S − K_T|)`. The other reading of the text, a per-sample
//! C×C channel Gram ("style"), is [`GramMode::Channel`].

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use relkd_models::layers::resize_bilinear;

/// Which Gram matrix relates the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GramMode {
    /// n×n over the samples of the batch (the equations' reading, default).
    #[default]
    Batch,
    /// C×C over the channels of each sample.
    Channel,
}

#[derive(Config, Debug)]
pub struct KernelMatrixConfig {
    /// Student feature channels.
    pub student_channels: usize,
    /// Teacher feature channels.
    pub teacher_channels: usize,
    #[config(default = "GramMode::Batch")]
    pub mode: GramMode,
}

impl KernelMatrixConfig {
    pub fn init(&self, device: &Device) -> KernelMatrix {
        KernelMatrix {
            adapter: Conv2dConfig::new([self.student_channels, self.teacher_channels], [1, 1]).init(device),
            mode: self.mode,
        }
    }
}

/// The trainable adapter and the loss. Trained with the student; not part of the exported
/// network.
#[derive(Module, Debug)]
pub struct KernelMatrix {
    pub adapter: Conv2d,
    #[module(skip)]
    pub mode: GramMode,
}

impl KernelMatrix {
    /// `student [n, c_s, h_s, w_s]`, `teacher [n, c_t, h_t, w_t]` → scalar loss. The teacher is
    /// detached: no gradient reaches it.
    pub fn forward(&self, student: Tensor<4>, teacher: Tensor<4>) -> Tensor<1> {
        let [_, _, h, w] = teacher.dims();
        let student = resize_bilinear(self.adapter.forward(student), [h, w]); // [n, c_t, h_t, w_t]
        let teacher = teacher.detach();
        match self.mode {
            GramMode::Batch => gram_distance(batch_gram(student), batch_gram(teacher)),
            GramMode::Channel => gram_distance(channel_gram(student), channel_gram(teacher)),
        }
    }
}

/// L2 normalisation along the last axis (a zero row stays zero).
fn normalize_rows<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / norm
}

/// `[n, c, h, w]` → n×n Gram of the L2-normalised flattened samples.
pub fn batch_gram(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    let x = normalize_rows(x.reshape([n, c * h * w]));
    x.clone().matmul(x.transpose())
}

/// `[n, c, h, w]` → per-sample C×C Gram of the L2-normalised channel maps, `[n, c, c]`.
pub fn channel_gram(x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let x = normalize_rows(x.reshape([n, c, h * w]));
    x.clone().matmul(x.swap_dims(1, 2))
}

/// mean((A − B)²) + mean(|A − B|).
pub fn gram_distance<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<1> {
    let diff = a - b;
    diff.clone().powi_scalar(2).mean() + diff.abs().mean()
}
