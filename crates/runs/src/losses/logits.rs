//! The logits module `L_LM` (eq. 7): pixel-wise KL(p_s ‖ p_t), averaged over pixels.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use relkd_models::layers::resize_bilinear;

/// (1/N) Σ_pixels Σ_c p_s (log p_s − log p_t), with p = softmax(z / T).
///
/// The paper writes KL(student ‖ teacher); the temperature T (default 1) is the usual
/// extension. Teacher logits of another size are resized to the student's (bilinear); the
/// teacher is detached: no gradient reaches it.
pub fn logits_kl(student: Tensor<4>, teacher: Tensor<4>, temperature: f64) -> Tensor<1> {
    let [_, _, h, w] = student.dims();
    let teacher = resize_bilinear(teacher.detach(), [h, w]);
    let log_ps = log_softmax(student.div_scalar(temperature), 1);
    let log_pt = log_softmax(teacher.div_scalar(temperature), 1);
    (log_ps.clone().exp() * (log_ps - log_pt)).sum_dim(1).mean()
}
