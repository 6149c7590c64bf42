//! The per-pixel divergence between the student's and the teacher's class distributions, from
//! their logits, as one operation on the CPU backend (flex): LM's KL(p_s ‖ p_t) and Hinton's
//! KL(p_t ‖ p_s) (`relkd-runs`' `losses::logits` and `losses::hinton`).
//!
//! Out of Burn's operations each is two scalings, two log-softmaxes, an exponential, a
//! difference, a product and a sum over the classes, and as many backward: about a quarter of
//! what the three relational losses added to ESPNet's quick step once the affinity loss was one
//! operation (issue #32). Here it is one pass over the pixels each way.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::softmax::ClassDistribution;
use super::{flex_vec, values_4d};

/// Which way the divergence runs, and at what temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelKl {
    /// Both distributions are softmax(z / T).
    pub temperature: f32,
    /// KL(p_s ‖ p_t) (the paper's LM) when true; KL(p_t ‖ p_s) (Hinton's KD) when false.
    pub student_first: bool,
}

/// The divergence at every pixel, `[b, 1, h, w]`, between softmax(student / T) and
/// softmax(teacher / T) over the classes (`[b, k, h, w]` each). The teacher is a constant: no
/// gradient reaches it (pass it detached).
pub fn pixel_kl_of_logits(student: Tensor<4>, teacher: Tensor<4>, kl: PixelKl) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PixelKlOps>::pixel_kl(student.into_dispatch(), teacher.into_dispatch(), kl))
}

/// The backend operations behind [`pixel_kl_of_logits`].
#[backend_extension(Flex, Autodiff)]
pub trait PixelKlOps: Backend {
    fn pixel_kl(student: FloatTensor<Self>, teacher: FloatTensor<Self>, kl: PixelKl) -> FloatTensor<Self>;

    /// The gradient of [`Self::pixel_kl`] with respect to `student`, given that of its output.
    fn pixel_kl_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        kl: PixelKl,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Both images' distributions, one image at a time.
struct Pair {
    student: ClassDistribution,
    teacher: ClassDistribution,
}

impl Pair {
    /// KL(a ‖ b) at each pixel into `out` (`[plane]`), a and b in the order `kl` asks.
    fn divergence(&self, kl: PixelKl, out: &mut [f32]) {
        let (a, b) = if kl.student_first { (&self.student, &self.teacher) } else { (&self.teacher, &self.student) };
        let plane = out.len();
        out.fill(0.0);
        for c in 0..a.p.len() / plane {
            let (p, log_p, log_q) =
                (&a.p[c * plane..][..plane], &a.log_p[c * plane..][..plane], &b.log_p[c * plane..][..plane]);
            for (((o, &p), &lp), &lq) in out.iter_mut().zip(p).zip(log_p).zip(log_q) {
                *o += p * (lp - lq);
            }
        }
    }
}

/// The two inputs' values and `[b, k, h, w]`.
fn values(student: &FlexTensor, teacher: &FlexTensor) -> (Vec<f32>, Vec<f32>, [usize; 4]) {
    let shape: [usize; 4] = student.shape().dims();
    assert_eq!(teacher.shape().dims::<4>(), shape, "the teacher's logits are resized to the student's first");
    (values_4d(student), values_4d(teacher), shape)
}

impl PixelKlOps for Flex {
    fn pixel_kl(student: FlexTensor, teacher: FlexTensor, kl: PixelKl) -> FlexTensor {
        let (s, t, [b, k, h, w]) = values(&student, &teacher);
        let mut out = vec![0f32; b * h * w];
        out.par_chunks_mut(h * w).zip(s.par_chunks(k * h * w).zip(t.par_chunks(k * h * w))).for_each(
            |(out, (s, t))| {
                let pair = Pair {
                    student: ClassDistribution::of(s, k, kl.temperature),
                    teacher: ClassDistribution::of(t, k, kl.temperature),
                };
                pair.divergence(kl, out);
            },
        );
        flex_vec(out, [b, 1, h, w].into())
    }

    fn pixel_kl_backward(student: FlexTensor, teacher: FlexTensor, kl: PixelKl, output_grad: FlexTensor) -> FlexTensor {
        let (s, t, [b, k, h, w]) = values(&student, &teacher);
        let upstream = values_4d(&output_grad);
        let plane = h * w;
        let scale = kl.temperature.recip();
        let mut grad = vec![0f32; b * k * plane];
        let images = s.par_chunks(k * plane).zip(t.par_chunks(k * plane)).zip(upstream.par_chunks(plane));
        grad.par_chunks_mut(k * plane).zip(images).for_each(|(grad, ((s, t), upstream))| {
            let pair = Pair {
                student: ClassDistribution::of(s, k, kl.temperature),
                teacher: ClassDistribution::of(t, k, kl.temperature),
            };
            let (ps, ls, pt, lt) = (&pair.student.p, &pair.student.log_p, &pair.teacher.p, &pair.teacher.log_p);
            if kl.student_first {
                // ∂/∂z_j Σ_c p_c (log p_c − log q_c) = p_j (log p_j − log q_j − KL) / T.
                let mut divergence = vec![0f32; plane];
                pair.divergence(kl, &mut divergence);
                for c in 0..k {
                    let at = c * plane..(c + 1) * plane;
                    let terms =
                        ps[at.clone()].iter().zip(&ls[at.clone()]).zip(&lt[at.clone()]).zip(&divergence).zip(upstream);
                    for (g, ((((&p, &lp), &lq), &d), &u)) in grad[at.clone()].iter_mut().zip(terms) {
                        *g = u * scale * p * (lp - lq - d);
                    }
                }
            } else {
                // ∂/∂z_j Σ_c q_c (log q_c − log p_c) = (p_j − q_j) / T.
                for c in 0..k {
                    let at = c * plane..(c + 1) * plane;
                    for (g, ((&p, &q), &u)) in
                        grad[at.clone()].iter_mut().zip(ps[at.clone()].iter().zip(&pt[at.clone()]).zip(upstream))
                    {
                        *g = u * scale * (p - q);
                    }
                }
            }
        });
        flex_vec(grad, student.shape())
    }
}

/// The node: the student's logits are its parent; the teacher's are a constant kept with it.
/// Both distributions are recomputed backward (a few exponentials a pixel) rather than kept, as
/// the affinity operation does.
#[derive(Debug)]
struct PixelKlNode;

impl<B: PixelKlOps> Backward<B, 1> for PixelKlNode {
    type State = (NodeId, FloatTensor<B>, PixelKl);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (student, teacher, kl) = ops.state;
        let student = checkpointer.retrieve_node_output::<FloatTensor<B>>(student);
        if let [Some(node)] = &ops.parents {
            grads.register::<B>(node.id, B::pixel_kl_backward(student, teacher, kl, grad));
        }
    }
}

impl<B: PixelKlOps, C: CheckpointStrategy> PixelKlOps for Autodiff<B, C> {
    fn pixel_kl(student: FloatTensor<Self>, teacher: FloatTensor<Self>, kl: PixelKl) -> FloatTensor<Self> {
        let teacher = teacher.into_primitive();
        match PixelKlNode.prepare::<C>([student.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&student), teacher.clone(), kl);
                prep.finish(state, B::pixel_kl(student.into_primitive(), teacher, kl))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::pixel_kl(student.into_primitive(), teacher, kl)),
        }
    }

    /// The gradient as a constant (the node above differentiates the forward only once).
    fn pixel_kl_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        kl: PixelKl,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::pixel_kl_backward(
            student.into_primitive(),
            teacher.into_primitive(),
            kl,
            output_grad.into_primitive(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Distribution, Tolerance};

    use super::*;

    /// Both directions at two temperatures against Burn's log-softmaxes differentiated by its
    /// autodiff, with a per-pixel weight on the output so that the upstream gradient varies.
    #[test]
    fn the_one_pass_divergence_equals_burns_operations() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let shape = [3, 4, 7, 9];
        let student = Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), &device);
        let teacher = Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), &device);
        let weight = Tensor::<4>::random([3, 1, 7, 9], Distribution::Uniform(-1.0, 1.0), &device);
        for (temperature, student_first) in [(1.0, true), (2.5, true), (1.0, false), (4.0, false)] {
            let kl = PixelKl { temperature, student_first };
            let run = |fused: bool| {
                let z = student.clone().require_grad();
                let divergence = if fused {
                    pixel_kl_of_logits(z.clone(), teacher.clone(), kl)
                } else {
                    let t = f64::from(temperature);
                    let (ls, lt) =
                        (log_softmax(z.clone().div_scalar(t), 1), log_softmax(teacher.clone().div_scalar(t), 1));
                    let (lp, lq) = if student_first { (ls, lt) } else { (lt, ls) };
                    (lp.clone().exp() * (lp - lq)).sum_dim(1)
                };
                let grads = (divergence.clone() * weight.clone()).sum().backward();
                (divergence.into_data(), z.grad(&grads).expect("the student's gradient").into_data())
            };
            let ((value, grad), (want_value, want_grad)) = (run(true), run(false));
            let tolerance = Tolerance::relative(1e-4).set_absolute(1e-6);
            value.assert_approx_eq::<f32>(&want_value, tolerance);
            grad.assert_approx_eq::<f32>(&want_grad, tolerance);
        }
    }
}
