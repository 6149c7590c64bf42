//! The batch norm every network calls: `bn.apply(x)` in place of `bn.forward(x)`.
//!
//! Burn's, except on the CPU backend (flex) when training: Burn computes the batch statistics
//! and the backward out of tensor operations, each a pass over the activation, with transposed
//! copies to average over the batch. Here each is one pass per channel plane over the contiguous
//! `[b, c, h·w]` layout, sums in f32 lanes added up in f64 (issue #16). Outputs and gradients equal
//! Burn's up to float rounding (tested against it). Inference keeps Burn's running-statistics path.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::{flex_vec, lane_sum, runs_on_flex};

/// `bn.apply(x)`: [`BatchNorm::forward`] with this module's training path on flex.
pub trait BatchNormApply {
    fn apply(&self, x: Tensor<4>) -> Tensor<4>;
}

impl BatchNormApply for BatchNorm {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        // Burn's own condition for the training path (BatchNorm::forward).
        let training = device.is_autodiff() && self.training.is_enabled();
        if !training || !runs_on_flex(&device) || x.dtype() != DType::F32 {
            return self.forward(x);
        }
        let (output, mean, variance) = <Dispatch as BatchNormOps>::batch_norm_train_direct(
            x.into_dispatch(),
            self.gamma.val().into_dispatch(),
            self.beta.val().into_dispatch(),
            self.epsilon,
        );
        let (mean, variance) = (Tensor::<1>::from_dispatch(mean), Tensor::<1>::from_dispatch(variance));
        // The running statistics as Burn updates them (BatchNorm::forward_train).
        let running = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
            let previous = state.value_sync().to_device(&device);
            let updated = previous.mul_scalar(1.0 - self.momentum).add(batch.detach().mul_scalar(self.momentum));
            state.update(updated.detach());
        };
        running(&self.running_mean, mean);
        running(&self.running_var, variance);
        Tensor::from_dispatch(output)
    }
}

/// The backend operation behind [`BatchNormApply`].
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOps: Backend {
    /// Batch norm with the batch's statistics: (output, mean, biased variance), as Burn's
    /// `batch_norm_train`.
    fn batch_norm_train_direct(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let result = Self::batch_norm_train(x, gamma, beta, epsilon);
        (result.output, result.mean, result.variance)
    }

    /// Gradients of [`Self::batch_norm_train_direct`]'s output: (input, gamma, beta).
    fn batch_norm_train_direct_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let grads = Self::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad);
        (grads.x_grad, grads.gamma_grad, grads.beta_grad)
    }
}

/// `[b, c, h, w]` as `b · c` planes of `h · w`.
struct Planes {
    channels: usize,
    plane: usize,
}

impl Planes {
    fn of(x: &FlexTensor) -> Self {
        let [_, channels, height, width] = x.shape().dims();
        Self { channels, plane: height * width }
    }

    /// Per channel, Σ over its planes of `f(plane index, plane offset)` (f64), in parallel over
    /// channels.
    fn per_channel(&self, total: usize, f: impl Fn(usize) -> f64 + Sync) -> Vec<f64> {
        (0..self.channels)
            .into_par_iter()
            .map(|c| (c * self.plane..total).step_by(self.channels * self.plane).map(&f).sum())
            .collect()
    }

    /// Per-channel values as a `[c]` tensor.
    fn channel_tensor(&self, values: &[f64]) -> FlexTensor {
        flex_vec(values.iter().map(|&v| v as f32).collect(), [self.channels].into())
    }

    /// Fills `out` plane by plane, in parallel: `f(channel, plane offset, plane of out)`.
    fn for_each_plane(&self, out: &mut [f32], f: impl Fn(usize, usize, &mut [f32]) + Sync) {
        out.par_chunks_mut(self.plane).enumerate().for_each(|(i, plane)| f(i % self.channels, i * self.plane, plane));
    }
}

impl BatchNormOps for Flex {
    fn batch_norm_train_direct(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let planes = Planes::of(&x);
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let (xs, gamma, beta) = (x.storage::<f32>(), gamma.storage::<f32>(), beta.storage::<f32>());
        let count = (xs.len() / planes.channels) as f64;
        let sum = |offset: usize| lane_sum(&xs[offset..offset + planes.plane], &xs[offset..], |v, _| v);
        let mean: Vec<f64> = planes.per_channel(xs.len(), sum).into_iter().map(|s| s / count).collect();
        let squares = |offset: usize| {
            let m = mean[offset / planes.plane % planes.channels];
            let m = m as f32;
            lane_sum(&xs[offset..offset + planes.plane], &xs[offset..], |v, _| (v - m) * (v - m))
        };
        let variance: Vec<f64> = planes.per_channel(xs.len(), squares).into_iter().map(|s| s / count).collect();
        let mut output = vec![0f32; xs.len()];
        planes.for_each_plane(&mut output, |c, offset, out| {
            let (m, std) = (mean[c] as f32, (variance[c] + epsilon).sqrt() as f32);
            for (o, &v) in out.iter_mut().zip(&xs[offset..]) {
                *o = (v - m) / std * gamma[c] + beta[c];
            }
        });
        (flex_vec(output, x.shape()), planes.channel_tensor(&mean), planes.channel_tensor(&variance))
    }

    fn batch_norm_train_direct_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let planes = Planes::of(&x);
        let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
        let (gamma, mean, variance) = (gamma.to_contiguous(), mean.to_contiguous(), variance.to_contiguous());
        let (xs, dys) = (x.storage::<f32>(), dy.storage::<f32>());
        let (gamma, mean, variance) = (gamma.storage::<f32>(), mean.storage::<f32>(), variance.storage::<f32>());
        let inv_std: Vec<f32> = variance.iter().map(|&v| 1.0 / (f64::from(v) + epsilon).sqrt() as f32).collect();
        let count = (xs.len() / planes.channels) as f64;
        let channel = |offset: usize| offset / planes.plane % planes.channels;
        let beta_grad = planes.per_channel(xs.len(), |o| lane_sum(&dys[o..o + planes.plane], &dys[o..], |g, _| g));
        let gamma_grad = planes.per_channel(xs.len(), |o| {
            let (m, s) = (mean[channel(o)], inv_std[channel(o)]);
            lane_sum(&xs[o..o + planes.plane], &dys[o..], |v, g| (v - m) * s * g)
        });
        // dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy · x̂)), per channel.
        let mut x_grad = vec![0f32; xs.len()];
        planes.for_each_plane(&mut x_grad, |c, offset, out| {
            let (m, s) = (mean[c], inv_std[c]);
            let (mean_dy, mean_dy_xhat) = ((beta_grad[c] / count) as f32, (gamma_grad[c] / count) as f32);
            let scale = gamma[c] * s;
            for ((o, &v), &g) in out.iter_mut().zip(&xs[offset..]).zip(&dys[offset..]) {
                *o = scale * (g - mean_dy - (v - m) * s * mean_dy_xhat);
            }
        });
        (flex_vec(x_grad, x.shape()), planes.channel_tensor(&gamma_grad), planes.channel_tensor(&beta_grad))
    }
}

/// The batch norm node: input and gamma checkpointed, the batch statistics kept.
#[derive(Debug)]
struct BatchNormTrainDirect;

impl<B: BatchNormOps> Backward<B, 3> for BatchNormTrainDirect {
    type State = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, mean, variance, epsilon) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma);
        let (x_grad, gamma_grad, beta_grad) =
            B::batch_norm_train_direct_backward(x, gamma, mean, variance, epsilon, grad);
        for (node, grad) in ops.parents.iter().zip([x_grad, gamma_grad, beta_grad]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: BatchNormOps, C: CheckpointStrategy> BatchNormOps for Autodiff<B, C> {
    fn batch_norm_train_direct(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let prep = BatchNormTrainDirect.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound();
        let (output, mean, variance) = match prep.stateful() {
            OpsKind::Tracked(mut prep) => {
                let (x_state, gamma_state) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let (output, mean, variance) = B::batch_norm_train_direct(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                let state = (x_state, gamma_state, mean.clone(), variance.clone(), epsilon);
                (prep.finish(state, output), mean, variance)
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = B::batch_norm_train_direct(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (prep.finish(output), mean, variance)
            }
        };
        // The statistics leave the graph: only the running averages use them.
        (output, FloatTensor::<Self>::new(mean), FloatTensor::<Self>::new(variance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::batch_norm;
    use burn::tensor::{Device, Distribution, Tolerance};

    #[test]
    fn training_matches_burns_batch_norm_values_gradients_and_running_statistics() {
        let device = Device::flex().autodiff();
        assert!(runs_on_flex(&device));
        // Two modules with the same parameters and their own running statistics (a clone would
        // share them).
        let gamma = Tensor::<1>::random([5], Distribution::Uniform(0.5, 1.5), &device);
        let beta = Tensor::<1>::random([5], Distribution::Normal(0.0, 1.0), &device);
        let with_parameters = || BatchNorm {
            gamma: burn::module::Param::from_tensor(gamma.clone()),
            beta: burn::module::Param::from_tensor(beta.clone()),
            ..batch_norm(5, 1e-3, &device)
        };
        let (ours, reference) = (with_parameters(), with_parameters());
        let x = Tensor::<4>::random([3, 5, 6, 7], Distribution::Normal(2.0, 3.0), &device);
        let dy = Tensor::<4>::random([3, 5, 6, 7], Distribution::Normal(0.0, 1.0), &device);
        let run = |bn: &BatchNorm, apply: bool| {
            let x = x.clone().require_grad();
            let y = if apply { bn.apply(x.clone()) } else { bn.forward(x.clone()) };
            let grads = (y.clone() * dy.clone()).sum().backward();
            let grad = |t: Tensor<1>| t.grad(&grads).expect("parameter gradient").into_data();
            let stats = [bn.running_mean.value_sync(), bn.running_var.value_sync()].map(|t| t.into_data());
            (
                y.into_data(),
                x.grad(&grads).expect("input gradient").into_data(),
                grad(bn.gamma.val()),
                grad(bn.beta.val()),
                stats,
            )
        };
        let (y, dx, dgamma, dbeta, stats) = run(&ours, true);
        let (y_ref, dx_ref, dgamma_ref, dbeta_ref, stats_ref) = run(&reference, false);
        let tolerance = Tolerance::relative(1e-4).set_absolute(1e-5);
        y.assert_approx_eq::<f32>(&y_ref, tolerance);
        dx.assert_approx_eq::<f32>(&dx_ref, tolerance);
        dgamma.assert_approx_eq::<f32>(&dgamma_ref, tolerance);
        dbeta.assert_approx_eq::<f32>(&dbeta_ref, tolerance);
        for (ours, reference) in stats.iter().zip(&stats_ref) {
            ours.assert_approx_eq::<f32>(reference, tolerance);
        }
    }

    #[test]
    fn statistics_and_gradients_equal_hand_values() {
        // One channel, two images of two pixels: x = [1, 3] and [5, 7]; mean 4, variance 5.
        let x = flex_vec(vec![1.0, 3.0, 5.0, 7.0], [2, 1, 1, 2].into());
        let one = |v: f32| flex_vec(vec![v], [1].into());
        let (y, mean, variance) = Flex::batch_norm_train_direct(x.clone(), one(2.0), one(1.0), 0.0);
        let values = |t: FlexTensor| t.into_data().try_into_vec::<f32>().expect("f32");
        assert_eq!(values(mean.clone()), vec![4.0]);
        assert_eq!(values(variance.clone()), vec![5.0]);
        // y = 2 · (x − 4)/√5 + 1.
        let expected: Vec<f32> = [1.0f32, 3.0, 5.0, 7.0].iter().map(|v| 2.0 * (v - 4.0) / 5f32.sqrt() + 1.0).collect();
        for (a, b) in values(y).iter().zip(&expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // With dy = x̂ (the normalised input): dβ = Σ x̂ = 0, dγ = Σ x̂² = 4, and dx = γ/σ · (x̂ − 0 −
        // x̂ · 1) = 0, since x̂ has mean 0 and mean square 1.
        let xhat: Vec<f32> = [1.0f32, 3.0, 5.0, 7.0].iter().map(|v| (v - 4.0) / 5f32.sqrt()).collect();
        let dy = flex_vec(xhat, [2, 1, 1, 2].into());
        let (dx, dgamma, dbeta) = Flex::batch_norm_train_direct_backward(x, one(2.0), mean, variance, 0.0, dy);
        assert!(values(dx).iter().all(|v| v.abs() < 1e-6));
        assert!((values(dgamma)[0] - 4.0).abs() < 1e-5);
        assert!(values(dbeta)[0].abs() < 1e-6);
    }
}
