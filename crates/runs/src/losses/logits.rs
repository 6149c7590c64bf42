//! The logits module `L_LM` (eq. 7): pixel-wise KL(p_s ‖ p_t), averaged over pixels.

use burn::tensor::Tensor;

use super::{masked_mean, tempered_pixel_kl};

/// (1/N) Σ_pixels Σ_c p_s (log p_s − log p_t), with p = softmax(z / T).
///
/// The paper writes KL(student ‖ teacher); the temperature T (default 1) is the usual
/// extension. Teacher logits of another size are resized to the student's (bilinear); the
/// teacher is detached: no gradient reaches it. With a `mask [b, 1, h, w]`, the mean is over
/// the pixels it keeps ([`super::Gate`]).
pub fn logits_kl(student: Tensor<4>, teacher: Tensor<4>, temperature: f64, mask: Option<&Tensor<4>>) -> Tensor<1> {
    masked_mean(tempered_pixel_kl(student, teacher, temperature, true), mask)
}
