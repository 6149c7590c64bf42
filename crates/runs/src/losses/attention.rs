//! Attention transfer (AT; Zagoruyko & Komodakis, ICLR 2017), one of Table 4's comparison
//! distillers.
//!
//! A feature map's spatial attention is the channel mean of its squared activations, flattened
//! per sample and L2-normalised; the loss is the mean squared difference of the student's and
//! the teacher's maps, weighted by β/2 in the total (β = 1000 in the AT paper). Channel counts
//! may differ; the student's map is resized to the teacher's spatial size.

use burn::tensor::Tensor;

use relkd_models::layers::resize_bilinear;

/// `[n, c, h, w]` → `[n, h·w]`: mean over channels of F², each row L2-normalised.
pub fn attention_map(feature: Tensor<4>, size: [usize; 2]) -> Tensor<2> {
    let [n, _, _, _] = feature.dims();
    let map = resize_bilinear(feature.powi_scalar(2).mean_dim(1), size); // [n, 1, h_t, w_t]
    let map = map.reshape([n, size[0] * size[1]]);
    let norm = map.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    map / norm
}

/// mean((Q_s − Q_t)²) over samples and positions; the teacher is detached.
pub fn attention_transfer(student: Tensor<4>, teacher: Tensor<4>) -> Tensor<1> {
    let [_, _, h, w] = teacher.dims();
    let diff = attention_map(student, [h, w]) - attention_map(teacher.detach(), [h, w]);
    diff.powi_scalar(2).mean()
}
