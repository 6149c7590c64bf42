//! PReLU as one operation on the CPU backend (flex): one pass forward, one backward.
//!
//! Elsewhere (CUDA) the networks compute relu(x) − α·relu(−x) out of Burn's operations; on flex
//! that is five passes forward and as many back, 30% of ENet's training step (issue #16). Here
//! the forward values and the input's gradient are exactly the composite's (x where x > 0, α·x
//! where x < 0; gradient dy, α·dy, and 0 at x = 0); the slopes' gradient Σ −relu(−x)·dy is
//! summed in another order (f64), so it differs in the last bits.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::{flex_vec, lane_sum, runs_on_flex};

/// PReLU of `x` `[b, c, h, w]` with `alpha` `[1]` (one slope) or `[c]`.
pub fn prelu(x: Tensor<4>, alpha: Tensor<1>) -> Tensor<4> {
    if !runs_on_flex(&x.device()) || x.dtype() != DType::F32 {
        let [slopes] = alpha.dims();
        return relu(x.clone()) - relu(x.neg()) * alpha.reshape([1, slopes, 1, 1]);
    }
    Tensor::from_dispatch(<Dispatch as PreluOps>::prelu_direct(x.into_dispatch(), alpha.into_dispatch()))
}

/// The backend operations behind [`prelu`].
#[backend_extension(Flex, Autodiff)]
pub trait PreluOps: Backend {
    fn prelu_direct(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients of [`Self::prelu_direct`]: (input, slopes).
    fn prelu_direct_backward(
        x: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `[b, c, h, w]` as planes of `h·w`, each with its channel's slope.
struct Slopes {
    alpha: Vec<f32>,
    channels: usize,
    plane: usize,
}

impl Slopes {
    fn of(x: &FlexTensor, alpha: &FlexTensor) -> Self {
        let [_, channels, height, width] = x.shape().dims();
        let alpha = alpha.to_contiguous().storage::<f32>().to_vec();
        Self { alpha, channels, plane: height * width }
    }

    fn of_plane(&self, index: usize) -> f32 {
        if self.alpha.len() == 1 { self.alpha[0] } else { self.alpha[index % self.channels] }
    }
}

impl PreluOps for Flex {
    fn prelu_direct(x: FlexTensor, alpha: FlexTensor) -> FlexTensor {
        let slopes = Slopes::of(&x, &alpha);
        let x = x.to_contiguous();
        let xs = x.storage::<f32>();
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(slopes.plane).zip(xs.par_chunks(slopes.plane)).enumerate().for_each(|(i, (out, xs))| {
            let a = slopes.of_plane(i);
            for (o, &v) in out.iter_mut().zip(xs) {
                *o = if v > 0.0 { v } else { a * v };
            }
        });
        flex_vec(out, x.shape())
    }

    fn prelu_direct_backward(x: FlexTensor, alpha: FlexTensor, output_grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        let slopes = Slopes::of(&x, &alpha);
        let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
        let (xs, dys) = (x.storage::<f32>(), dy.storage::<f32>());
        let mut dx = vec![0f32; xs.len()];
        // Per plane: the input's gradient (dy where x > 0, α·dy where x < 0, 0 at 0, written
        // without branches so that it vectorises), and the plane's share of its slope's gradient.
        let shares: Vec<f64> = dx
            .par_chunks_mut(slopes.plane)
            .zip(xs.par_chunks(slopes.plane).zip(dys.par_chunks(slopes.plane)))
            .enumerate()
            .map(|(i, (dx, (xs, dys)))| {
                let a = slopes.of_plane(i);
                for ((d, &v), &g) in dx.iter_mut().zip(xs).zip(dys) {
                    let slope = if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        a
                    } else {
                        0.0
                    };
                    *d = slope * g;
                }
                lane_sum(xs, dys, |v, g| v.min(0.0) * g)
            })
            .collect();
        // d/dα of −α·relu(−x) is −relu(−x) = x where x < 0.
        let mut alpha_grad = vec![0f64; slopes.alpha.len()];
        for (i, share) in shares.into_iter().enumerate() {
            alpha_grad[if slopes.alpha.len() == 1 { 0 } else { i % slopes.channels }] += share;
        }
        let alpha_grad = alpha_grad.into_iter().map(|g| g as f32).collect::<Vec<_>>();
        let alpha_shape = alpha.shape();
        (flex_vec(dx, x.shape()), flex_vec(alpha_grad, alpha_shape))
    }
}

/// The PReLU node: input and slopes checkpointed.
#[derive(Debug)]
struct PreluDirect;

impl<B: PreluOps> Backward<B, 2> for PreluDirect {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, alpha) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x);
        let alpha = checkpointer.retrieve_node_output::<FloatTensor<B>>(alpha);
        let (x_grad, alpha_grad) = B::prelu_direct_backward(x, alpha, grad);
        for (node, grad) in ops.parents.iter().zip([x_grad, alpha_grad]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: PreluOps, C: CheckpointStrategy> PreluOps for Autodiff<B, C> {
    fn prelu_direct(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
        match PreluDirect.prepare::<C>([x.node(), alpha.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&alpha));
                prep.finish(state, B::prelu_direct(x.into_primitive(), alpha.into_primitive()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::prelu_direct(x.into_primitive(), alpha.into_primitive())),
        }
    }

    /// The gradients as constants (the node above differentiates the forward only once).
    fn prelu_direct_backward(
        x: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dalpha) =
            B::prelu_direct_backward(x.into_primitive(), alpha.into_primitive(), output_grad.into_primitive());
        (FloatTensor::<Self>::new(dx), FloatTensor::<Self>::new(dalpha))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Values and gradients against the composite relu(x) − α·relu(−x) on the same inputs.
    fn check(slopes: usize) {
        let device = Device::flex().autodiff();
        assert!(runs_on_flex(&device));
        let x = Tensor::<4>::random([3, 4, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        // Exact zeros too, where both give a zero gradient.
        let x = x.clone().mask_fill(x.abs().lower_elem(0.2), 0.0);
        let alpha = Tensor::<1>::random([slopes], Distribution::Uniform(0.1, 0.5), &device);
        let dy = Tensor::<4>::random([3, 4, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let (x, alpha) = (x.clone().require_grad(), alpha.clone().require_grad());
            let y = if fused {
                prelu(x.clone(), alpha.clone())
            } else {
                relu(x.clone()) - relu(x.clone().neg()) * alpha.clone().reshape([1, slopes, 1, 1])
            };
            let grads = (y.clone() * dy.clone()).sum().backward();
            let dx = x.grad(&grads).expect("input gradient").into_data();
            (y.into_data(), dx, alpha.grad(&grads).expect("slope gradient").into_data())
        };
        let ((y, dx, da), (y_ref, dx_ref, da_ref)) = (run(true), run(false));
        y.assert_eq(&y_ref, true);
        dx.assert_eq(&dx_ref, true);
        da.assert_approx_eq::<f32>(&da_ref, Tolerance::relative(1e-5).set_absolute(1e-5));
    }

    #[test]
    fn one_slope_and_per_channel_slopes_match_the_composite() {
        check(1);
        check(4);
    }

    #[test]
    fn gradients_equal_hand_values() {
        // x = [2, −1, 0, −3] in one channel, α = 0.25, dy = 1: y = [2, −0.25, 0, −0.75];
        // dx = [1, 0.25, 0, 0.25]; dα = Σ x·dy over x < 0 = −4.
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::from_floats([[[[2.0, -1.0, 0.0, -3.0]]]], &device).require_grad();
        let alpha = Tensor::<1>::from_floats([0.25], &device).require_grad();
        let y = prelu(x.clone(), alpha.clone());
        assert_eq!(y.to_data().try_to_vec::<f32>().expect("f32"), vec![2.0, -0.25, 0.0, -0.75]);
        let grads = y.sum().backward();
        assert_eq!(x.grad(&grads).expect("dx").to_data().try_to_vec::<f32>().expect("f32"), vec![1.0, 0.25, 0.0, 0.25]);
        assert_eq!(alpha.grad(&grads).expect("dα").to_data().try_to_vec::<f32>().expect("f32"), vec![-4.0]);
    }
}
