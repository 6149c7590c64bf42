//! The 2-D convolution every network calls: `conv.apply(x)` in place of `conv.forward(x)`.
//!
//! On the CPU backend (flex) the forward pass and both gradients are gemms over each image's
//! im2col (no copy at all for a 1×1 convolution), images split across threads. Burn's generic
//! weight-gradient rule (a convolution of transposed copies of the input and of the output
//! gradient) spent most of its time copying on about one core: 1.6–16× slower on ENet's shapes
//! (issue #16). The sums run in another order, so values differ from Burn's in the last bits
//! (tested against Burn's). Grouped convolutions and other backends (CUDA) keep Burn's rules.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use super::im2col::Geometry;
use super::{flex_vec, runs_on_flex};

/// `conv.apply(x)`: the convolution, computed by this module on flex.
pub trait Conv2dApply {
    fn apply(&self, x: Tensor<4>) -> Tensor<4>;
}

impl Conv2dApply for Conv2d {
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        // The networks pad explicitly; "same" padding depends on the input's size (Burn's own rule).
        let (rows, cols) = match self.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
            PaddingConfig2d::Valid => ((0, 0), (0, 0)),
            PaddingConfig2d::Same => return self.forward(x),
        };
        let options = ConvOptions::new_with_padding(self.stride, [rows, cols], self.dilation, self.groups);
        let weight = self.weight.val();
        if !runs_on_flex(&x.device()) {
            return burn::tensor::module::conv2d(x, weight, self.bias.as_ref().map(|bias| bias.val()), options);
        }
        let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match &self.bias {
            None => <Dispatch as Im2colConvOps>::conv2d_direct(x, weight, options),
            Some(bias) => {
                <Dispatch as Im2colConvOps>::conv2d_direct_bias(x, weight, bias.val().into_dispatch(), options)
            }
        })
    }
}

/// The backend operations behind [`Conv2dApply`].
#[backend_extension(Flex, Autodiff)]
pub trait Im2colConvOps: Backend {
    /// Burn's conv2d without bias; under autodiff its gradients are [`Self::conv2d_input_grad`] and
    /// [`Self::conv2d_weight_grad`].
    fn conv2d_direct(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// [`Self::conv2d_direct`] with a bias (the extension macro takes no optional tensors).
    fn conv2d_direct_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options)
    }

    /// The gradient of conv2d's input, `[b, c_in, h, w]`.
    fn conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// The gradient of conv2d's weight, `[c_out, c_in, kh, kw]`.
    fn conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }
}

impl Im2colConvOps for Flex {
    fn conv2d_direct(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        flex_forward(x, weight, None, options)
    }

    fn conv2d_direct_bias(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        flex_forward(x, weight, Some(bias), options)
    }

    fn conv2d_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        flex_gradient(Gradient::Input, x, weight, output_grad, options)
    }

    fn conv2d_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        flex_gradient(Gradient::Weight, x, weight, output_grad, options)
    }
}

enum Gradient {
    Input,
    Weight,
}

/// One gradient of the convolution by the im2col gemms, or by Burn's rule where they do not apply.
fn flex_gradient(
    of: Gradient,
    x: FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let Some(geometry) = Geometry::of(&x, &weight, &options) else {
        return match of {
            Gradient::Input => Flex::conv2d_x_backward(x, weight, output_grad, options),
            Gradient::Weight => Flex::conv2d_weight_backward(x, weight, output_grad, options),
        };
    };
    let dy = output_grad.to_contiguous();
    match of {
        Gradient::Input => {
            let grad = geometry.input_gradient(weight.to_contiguous().storage::<f32>(), dy.storage::<f32>());
            flex_vec(grad, x.shape())
        }
        Gradient::Weight => {
            let grad = geometry.weight_gradient(x.to_contiguous().storage::<f32>(), dy.storage::<f32>());
            flex_vec(grad, weight.shape())
        }
    }
}

fn flex_forward(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>, options: ConvOptions<2>) -> FlexTensor {
    match Geometry::of(&x, &weight, &options) {
        Some(geometry) => geometry.forward(x, weight, bias),
        None => Flex::conv2d(x, weight, bias, options),
    }
}

/// The convolution's node: gradients from [`Im2colConvOps::conv2d_input_grad`] and [`Im2colConvOps::conv2d_weight_grad`];
/// `N` is 2 (input, weight) or 3 (and bias).
#[derive(Debug)]
struct Im2colConv<const N: usize>;

impl<B: Im2colConvOps, const N: usize> Backward<B, N> for Im2colConv<N> {
    /// Checkpointed input, weight and bias, and the options.
    type State = ([NodeId; N], ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (states, options) = ops.state;
        let [x, weight] = [states[0], states[1]].map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        if let Some(node) = &ops.parents[0] {
            let x_grad = B::conv2d_input_grad(x.clone(), weight.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, x_grad);
        }
        if let Some(node) = &ops.parents[1] {
            let weight_grad = B::conv2d_weight_grad(x.clone(), weight, grad.clone(), options);
            grads.register::<B>(node.id, weight_grad);
        }
        if let Some(Some(node)) = ops.parents.get(2) {
            let bias = checkpointer.retrieve_node_output::<FloatTensor<B>>(states[2]);
            grads.register::<B>(node.id, B::conv2d_bias_backward(x, bias, grad));
        }
    }
}

impl<B: Im2colConvOps, C: CheckpointStrategy> Im2colConvOps for Autodiff<B, C> {
    fn conv2d_direct(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        match Im2colConv::<2>.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let states = [prep.checkpoint(&x), prep.checkpoint(&weight)];
                let output = B::conv2d_direct(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((states, options), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv2d_direct(x.into_primitive(), weight.into_primitive(), options))
            }
        }
    }

    fn conv2d_direct_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let prep = Im2colConv::<3>.prepare::<C>([x.node(), weight.node(), bias.node()]);
        match prep.compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let states = [prep.checkpoint(&x), prep.checkpoint(&weight), prep.checkpoint(&bias)];
                let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
                prep.finish((states, options.clone()), B::conv2d_direct_bias(x, weight, bias, options))
            }
            OpsKind::UnTracked(prep) => {
                let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
                prep.finish(B::conv2d_direct_bias(x, weight, bias, options))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::conv;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Forward values and every gradient of `conv.apply` against Burn's `conv.forward`, on the
    /// same input, weights and output gradient (a random linear loss).
    fn check(conv: &Conv2d, input: [usize; 4]) {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &device);
        let reference = conv.forward(x.clone().require_grad());
        let dy = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let gradients = |output: Tensor<4>, x: &Tensor<4>| {
            let grads = (output * dy.clone()).sum().backward();
            let weight = conv.weight.val().grad(&grads).expect("weight gradient");
            let bias = conv.bias.as_ref().map(|b| b.val().grad(&grads).expect("bias gradient").into_data());
            (x.grad(&grads).expect("input gradient").into_data(), weight.into_data(), bias)
        };
        let x_ref = x.clone().require_grad();
        let out_ref = conv.forward(x_ref.clone());
        let x_new = x.require_grad();
        let out_new = conv.apply(x_new.clone());

        let (dx_ref, dw_ref, db_ref) = gradients(out_ref.clone(), &x_ref);
        let (dx_new, dw_new, db_new) = gradients(out_new.clone(), &x_new);
        // The gemms sum in another order than Burn's rules: equal up to float rounding.
        let tolerance = Tolerance::relative(1e-4).set_absolute(1e-4);
        out_new.to_data().assert_approx_eq::<f32>(&out_ref.to_data(), tolerance);
        dx_new.assert_approx_eq::<f32>(&dx_ref, tolerance);
        dw_new.assert_approx_eq::<f32>(&dw_ref, tolerance);
        if let (Some(new), Some(reference)) = (db_new, db_ref) {
            new.assert_eq(&reference, true);
        }
    }

    #[test]
    fn gradients_match_burns_for_every_kind_of_convolution_the_networks_use() {
        let device = Device::flex().autodiff();
        assert!(runs_on_flex(&device), "the direct path is the one under test");
        // Pointwise (no im2col), 3×3, strided, dilated, asymmetric kernels, with and without bias.
        check(&conv([6, 4], [1, 1], 1, [0, 0], [1, 1], false, &device), [3, 6, 9, 7]);
        check(&conv([3, 5], [3, 3], 1, [1, 1], [1, 1], true, &device), [4, 3, 10, 8]);
        check(&conv([2, 4], [3, 3], 2, [1, 1], [1, 1], false, &device), [2, 2, 11, 9]);
        check(&conv([4, 4], [3, 3], 1, [4, 4], [4, 4], false, &device), [3, 4, 12, 12]);
        check(&conv([4, 3], [5, 1], 1, [2, 0], [1, 1], true, &device), [2, 4, 8, 6]);
        check(&conv([4, 3], [1, 3], 1, [0, 1], [1, 1], true, &device), [2, 4, 8, 6]);
        check(&conv([4, 4], [2, 2], 2, [0, 0], [1, 1], false, &device), [3, 4, 8, 8]);
        check(&conv([32, 48], [3, 3], 1, [1, 1], [1, 1], true, &device), [4, 32, 16, 16]);
        // A dilation wider than the image: some kernel columns never land inside it.
        check(&conv([2, 3], [3, 3], 1, [6, 6], [6, 6], false, &device), [2, 2, 5, 5]);
        // Grouped (DeepLabV3+'s depthwise): Burn's weight gradient, through the same node.
        let depthwise = burn::nn::conv::Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(4)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
        check(&depthwise.init(&device), [2, 4, 7, 7]);
    }

    #[test]
    fn a_batch_smaller_than_the_pool_gives_the_same_values_bit_for_bit() {
        // Two images on two threads run one per thread; one image runs its gemms across both.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let random = |shape: [usize; 4]| {
            let data = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex()).into_data();
            FlexTensor::from_data(data)
        };
        let image = |tensor: &FlexTensor, b: usize| {
            let [_, c, h, w] = tensor.shape().dims();
            tensor.to_contiguous().storage::<f32>()[b * c * h * w..(b + 1) * c * h * w].to_vec()
        };
        let (pair, weight) = (random([2, 32, 64, 64]), random([64, 32, 3, 3]));
        let first = flex_vec(image(&pair, 0), [1, 32, 64, 64].into());
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let geometry = |x: &FlexTensor| Geometry::of(x, &weight, &options).unwrap();
        pool.install(|| {
            let forward = |x: &FlexTensor| geometry(x).forward(x.clone(), weight.clone(), None);
            assert_eq!(image(&forward(&pair), 0), image(&forward(&first), 0));
            let (ws, dy_pair) = (weight.to_contiguous(), forward(&pair));
            let dy_first = flex_vec(image(&dy_pair, 0), [1, 64, 64, 64].into());
            let input_grad = |x: &FlexTensor, dy: &FlexTensor| {
                geometry(x).input_gradient(ws.storage::<f32>(), dy.to_contiguous().storage::<f32>())
            };
            let per_image = 32 * 64 * 64;
            assert_eq!(input_grad(&pair, &dy_pair)[..per_image], input_grad(&first, &dy_first)[..]);
        });
    }
}
