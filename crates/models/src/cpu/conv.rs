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
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

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

/// A convolution's shapes, for the im2col gemms.
struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    height: usize,
    width: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    out: [usize; 2],
}

impl Geometry {
    /// `None` where Burn's rules apply instead: grouped convolutions, asymmetric padding, other
    /// float types, and an im2col over [`Self::MAX_IM2COL`] values (the teachers' first layers at
    /// 384×384, where Burn's tiled convolution is twice as fast; every student layer is far below).
    fn of(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
        if x.dtype() != DType::F32 || options.groups != 1 || options.is_asymmetric() {
            return None;
        }
        let [batch, c_in, height, width] = x.shape().dims();
        let [c_out, _, kh, kw] = weight.shape().dims();
        let (padding, dilation, stride) = (options.padding_begin(), options.dilation, options.stride);
        let out = |size: usize, axis: usize, kernel: usize| {
            (size + 2 * padding[axis])
                .checked_sub(dilation[axis] * (kernel - 1) + 1)
                .map(|span| span / stride[axis] + 1)
        };
        Some(Self {
            batch,
            c_in,
            c_out,
            height,
            width,
            kernel: [kh, kw],
            stride,
            padding,
            dilation,
            out: [out(height, 0, kh)?, out(width, 1, kw)?],
        })
        .filter(|geometry| geometry.columns() * geometry.positions() <= Self::MAX_IM2COL)
    }

    /// 8 Mi values, 32 MiB: one image's im2col for a 64-channel 3×3 layer at 120×120.
    const MAX_IM2COL: usize = 1 << 23;

    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Room for one image's im2col; none for a 1×1 convolution, which reads the image itself.
    fn col_buffer(&self) -> Vec<f32> {
        if self.is_pointwise() { Vec::new() } else { vec![0f32; self.columns() * self.positions()] }
    }

    fn positions(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Rows of the im2col, `c_in·kh·kw`.
    fn columns(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// im2col row `row` as (channel, ky, kx).
    fn tap(&self, row: usize) -> (usize, usize, usize) {
        let [kh, kw] = self.kernel;
        (row / (kh * kw), row / kw % kh, row % kw)
    }

    /// The input row that output row `oy` reads through kernel row `ky`; `None` in the padding.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.padding[0])?;
        (iy < self.height).then_some(iy)
    }

    /// The output columns whose kernel column `kx` reads inside the image, as a range, and the
    /// input column the first of them reads.
    fn valid_columns(&self, kx: usize) -> (std::ops::Range<usize>, usize) {
        let (stride, offset) = (self.stride[1], kx * self.dilation[1]);
        // ix = ox·stride + offset − padding must lie in [0, width).
        let first = self.padding[1].saturating_sub(offset).div_ceil(stride);
        let end = (self.width + self.padding[1]).saturating_sub(offset).div_ceil(stride).min(self.out[1]);
        let first = first.min(end);
        (first..end, (first * stride + offset).saturating_sub(self.padding[1]))
    }

    /// Visits one image's im2col, `[c_in·kh·kw, out_h·out_w]`, one output row at a time: `f` gets
    /// that row of the im2col, the start of the input row it reads (`None` in the padding), and
    /// the valid output columns with the input column of the first.
    fn for_each_col_row(
        &self,
        mut f: impl FnMut(std::ops::Range<usize>, Option<usize>, std::ops::Range<usize>, usize),
    ) {
        let [out_h, out_w] = self.out;
        let plane = self.height * self.width;
        for row in 0..self.columns() {
            let (c, ky, kx) = self.tap(row);
            let (valid, first_ix) = self.valid_columns(kx);
            for oy in 0..out_h {
                let start = (row * out_h + oy) * out_w;
                let line = self.input_row(oy, ky).map(|iy| c * plane + iy * self.width + first_ix);
                f(start..start + out_w, line, valid.clone(), self.stride[1]);
            }
        }
    }

    /// One image's im2col, zeros where the kernel overhangs.
    fn im2col(&self, image: &[f32], col: &mut [f32]) {
        self.for_each_col_row(|range, line, valid, stride| {
            let out = &mut col[range];
            let Some(line) = line.filter(|_| !valid.is_empty()) else { return out.fill(0.0) };
            out[..valid.start].fill(0.0);
            out[valid.end..].fill(0.0);
            let out = &mut out[valid.clone()];
            if stride == 1 {
                out.copy_from_slice(&image[line..line + out.len()]);
            } else {
                out.iter_mut().enumerate().for_each(|(i, value)| *value = image[line + i * stride]);
            }
        });
    }

    /// The adjoint of [`Self::im2col`]: adds each entry back onto the input pixel it was read from.
    fn col2im(&self, col: &[f32], image: &mut [f32]) {
        self.for_each_col_row(|range, line, valid, stride| {
            let Some(line) = line.filter(|_| !valid.is_empty()) else { return };
            for (i, &value) in col[range][valid].iter().enumerate() {
                image[line + i * stride] += value;
            }
        });
    }

    /// Y_b = W · im2col(x_b) (+ bias): W `[c_out, columns]`.
    fn forward(&self, x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        let (positions, columns, c_out) = (self.positions(), self.columns(), self.c_out);
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let bias = bias.map(|b| b.to_contiguous());
        let (xs, ws) = (x.storage::<f32>(), weight.storage::<f32>());
        let image_len = self.c_in * self.height * self.width;
        let mut out = vec![0f32; self.batch * c_out * positions];
        self.for_each_image(&mut out, c_out * positions, |col, b, out, parallelism| {
            let image = &xs[b * image_len..(b + 1) * image_len];
            let rhs = if self.is_pointwise() {
                image
            } else {
                self.im2col(image, col);
                &col[..]
            };
            let lhs = (ws, [1, columns]);
            gemm_f32([c_out, positions, columns], out, false, lhs, (rhs, [1, positions]), parallelism);
            if let Some(bias) = &bias {
                for (row, &b) in out.chunks_exact_mut(positions).zip(bias.storage::<f32>()) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        });
        flex_vec(out, [self.batch, c_out, self.out[0], self.out[1]].into())
    }

    /// Runs `f(im2col buffer, image, its part of dst, parallelism)` for every image: images across
    /// the pool's threads when there are at least as many, else one after another with each gemm
    /// spread across the threads (a batch of 1 in inference would otherwise run on one core).
    /// gemm splits the output, not the sums, so both give the same values bit for bit.
    fn for_each_image(
        &self,
        dst: &mut [f32],
        per_image: usize,
        f: impl Fn(&mut Vec<f32>, usize, &mut [f32], Parallelism) + Send + Sync,
    ) {
        let threads = rayon::current_num_threads();
        if self.batch >= threads {
            dst.par_chunks_mut(per_image)
                .enumerate()
                .for_each_init(|| self.col_buffer(), |col, (b, dst)| f(col, b, dst, Parallelism::None));
        } else {
            let mut col = self.col_buffer();
            for (b, dst) in dst.chunks_mut(per_image).enumerate() {
                f(&mut col, b, dst, Parallelism::Rayon(threads));
            }
        }
    }

    /// dW[o, r] = Σ_b Σ_p dY[b, o, p] · im2col(x_b)[r, p]: the images are split into one run per
    /// thread, each accumulating its gemms, and the partial sums are added.
    fn weight_gradient(&self, x: &[f32], output_grad: &[f32]) -> Vec<f32> {
        let (positions, columns, c_out) = (self.positions(), self.columns(), self.c_out);
        let image_len = self.c_in * self.height * self.width;
        let per_thread = self.batch.div_ceil(rayon::current_num_threads()).max(1);
        let images: Vec<usize> = (0..self.batch).collect();
        let partial = |chunk: &[usize]| {
            let mut grad = vec![0f32; c_out * columns];
            let mut col = self.col_buffer();
            for (i, &b) in chunk.iter().enumerate() {
                let image = &x[b * image_len..(b + 1) * image_len];
                let rhs = if self.is_pointwise() {
                    image
                } else {
                    self.im2col(image, &mut col);
                    &col
                };
                let lhs = &output_grad[b * c_out * positions..(b + 1) * c_out * positions];
                // grad [c_out, columns] (+)= lhs [c_out, positions] · rhsᵀ, rhs [columns, positions].
                let (lhs, rhs) = ((lhs, [1, positions]), (rhs, [positions, 1]));
                gemm_f32([c_out, columns, positions], &mut grad, i > 0, lhs, rhs, Parallelism::None);
            }
            grad
        };
        images
            .par_chunks(per_thread)
            .map(partial)
            .reduce_with(|mut total, part| {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                total
            })
            .unwrap_or_else(|| vec![0f32; c_out * columns])
    }

    /// dX_b = col2im(Wᵀ · dY_b): Wᵀ `[columns, c_out]`, dY_b `[c_out, positions]`.
    fn input_gradient(&self, weight: &[f32], output_grad: &[f32]) -> Vec<f32> {
        let (positions, columns, c_out) = (self.positions(), self.columns(), self.c_out);
        let image_len = self.c_in * self.height * self.width;
        let mut grad = vec![0f32; self.batch * image_len];
        self.for_each_image(&mut grad, image_len, |col, b, image, parallelism| {
            let dy = (&output_grad[b * c_out * positions..(b + 1) * c_out * positions], [1, positions]);
            let transposed = (weight, [columns, 1]);
            if self.is_pointwise() {
                gemm_f32([columns, positions, c_out], image, false, transposed, dy, parallelism);
            } else {
                gemm_f32([columns, positions, c_out], col, false, transposed, dy, parallelism);
                self.col2im(col, image);
            }
        });
        grad
    }
}

/// dst `[m, n]` (row-major) = (dst +) lhs · rhs, lhs `[m, k]` and rhs `[k, n]` given as (data,
/// [column stride, row stride]).
fn gemm_f32(
    [m, n, k]: [usize; 3],
    dst: &mut [f32],
    accumulate: bool,
    lhs: (&[f32], [usize; 2]),
    rhs: (&[f32], [usize; 2]),
    parallelism: Parallelism,
) {
    let ((lhs, [lhs_cs, lhs_rs]), (rhs, [rhs_cs, rhs_rs])) = (lhs, rhs);
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    assert!(dst.len() >= m * n && lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts keep every element the strides reach inside the three slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
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

    #[test]
    fn the_direct_gradients_equal_hand_sums() {
        // One image, one channel in and out, a 2×2 kernel over a 3×3 input without padding.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
        let weight = [1.0, 2.0, 3.0, 4.0]; // [[1, 2], [3, 4]]
        let dy = [1.0, 0.5, -1.0, 2.0]; // [[1, 0.5], [−1, 2]]
        let g = Geometry {
            batch: 1,
            c_in: 1,
            c_out: 1,
            height: 3,
            width: 3,
            kernel: [2, 2],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            out: [2, 2],
        };
        // Each weight: the output gradient times the 2×2 inputs it touched. w00: 1·1 + 0.5·2 − 1·4
        // + 2·5 = 8; w01: 2 + 1.5 − 5 + 12 = 10.5; w10: 4 + 2.5 − 7 + 16 = 15.5; w11: 5 + 3 − 8 + 18 = 18.
        assert_eq!(g.weight_gradient(&x, &dy), vec![8.0, 10.5, 15.5, 18.0]);
        // Each input pixel: Σ dy[o]·w[k] over the (output, tap) pairs that read it, e.g. the centre
        // is read by all four outputs: 1·4 + 0.5·3 − 1·2 + 2·1 = 5.5; the corner (0, 0) by one: 1·1.
        let expected = vec![1.0, 2.5, 1.0, 2.0, 5.5, 6.0, -3.0, 2.0, 8.0];
        assert_eq!(g.input_gradient(&weight, &dy), expected);
    }
}
