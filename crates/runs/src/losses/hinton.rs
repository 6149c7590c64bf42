//! Logit knowledge distillation (Hinton et al., 2015), one of Table 4's comparison distillers.
//!
//! `L_KD = T² · (1/N) Σ_pixels KL(p_t ‖ p_s)` with p = softmax(z / T): the student matches the
//! teacher's softened distribution (the direction of Hinton's cross-entropy to soft targets,
//! the reverse of the paper's LM), and T² keeps the gradient's scale independent of T.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use relkd_models::layers::resize_bilinear;

/// Teacher logits of another size are resized to the student's (bilinear).
pub fn hinton_kd(student: Tensor<4>, teacher: Tensor<4>, temperature: f64) -> Tensor<1> {
    let [_, _, h, w] = student.dims();
    let teacher = resize_bilinear(teacher.detach(), [h, w]);
    let log_ps = log_softmax(student.div_scalar(temperature), 1);
    let log_pt = log_softmax(teacher.div_scalar(temperature), 1);
    (log_pt.clone().exp() * (log_pt - log_ps)).sum_dim(1).mean().mul_scalar(temperature * temperature)
}
