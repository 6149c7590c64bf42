//! Logit knowledge distillation (Hinton et al., 2015), one of Table 4's comparison distillers.
//!
//! `L_KD = T² · (1/N) Σ_pixels KL(p_t ‖ p_s)` with p = softmax(z / T): the student matches the
//! teacher's softened distribution (the direction of Hinton's cross-entropy to soft targets,
//! the reverse of the paper's LM), and T² keeps the gradient's scale independent of T.

use burn::tensor::Tensor;

use super::{masked_mean, tempered_pixel_kl};

/// Teacher logits of another size are resized to the student's (bilinear). With a
/// `mask [b, 1, h, w]`, the mean is over the pixels it keeps ([`super::Gate`]).
pub fn hinton_kd(student: Tensor<4>, teacher: Tensor<4>, temperature: f64, mask: Option<&Tensor<4>>) -> Tensor<1> {
    masked_mean(tempered_pixel_kl(student, teacher, temperature, false), mask).mul_scalar(temperature * temperature)
}
