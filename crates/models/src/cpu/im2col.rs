//! The im2col gemms behind relkd's convolution on flex (`conv.rs`): forward, input gradient
//! and weight gradient of one convolution's geometry, images split across threads.

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use gemm::Parallelism;
use rayon::prelude::*;

use super::flex_vec;

/// A convolution's shapes, for the im2col gemms.
pub(super) struct Geometry {
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
    pub(super) fn of(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<Self> {
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
            let col = &col[range][valid];
            if stride == 1 {
                image[line..line + col.len()].iter_mut().zip(col).for_each(|(pixel, &value)| *pixel += value);
            } else {
                col.iter().enumerate().for_each(|(i, &value)| image[line + i * stride] += value);
            }
        });
    }

    /// Y_b = W · im2col(x_b) (+ bias): W `[c_out, columns]`.
    pub(super) fn forward(&self, x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
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
    ///
    /// Both factors run along the sums (p) in memory; gemm packs its left factor as columns, and
    /// given either as it is it gathered them one scalar at a time, a cache line per load (a fifth
    /// of ERFNet's step). So each image's dY is transposed first, usually the smaller of the two
    /// (c_out rows against c_in·kh·kw), and the gemm computes dWᵀ, transposed back once at the end.
    pub(super) fn weight_gradient(&self, x: &[f32], output_grad: &[f32]) -> Vec<f32> {
        let (positions, columns, c_out) = (self.positions(), self.columns(), self.c_out);
        let image_len = self.c_in * self.height * self.width;
        let per_thread = self.batch.div_ceil(rayon::current_num_threads()).max(1);
        let images: Vec<usize> = (0..self.batch).collect();
        let partial = |chunk: &[usize]| {
            let mut grad_t = vec![0f32; columns * c_out];
            let (mut col, mut dy_t) = (self.col_buffer(), vec![0f32; positions * c_out]);
            for (i, &b) in chunk.iter().enumerate() {
                let image = &x[b * image_len..(b + 1) * image_len];
                let col = if self.is_pointwise() {
                    image
                } else {
                    self.im2col(image, &mut col);
                    &col
                };
                transpose(
                    &output_grad[b * c_out * positions..(b + 1) * c_out * positions],
                    [c_out, positions],
                    &mut dy_t,
                );
                // dWᵀ [columns, c_out] (+)= im2col [columns, positions] · dYᵀ [positions, c_out].
                let (lhs, rhs) = ((col, [1, positions]), (&dy_t[..], [1, c_out]));
                gemm_f32([columns, c_out, positions], &mut grad_t, i > 0, lhs, rhs, Parallelism::None);
            }
            grad_t
        };
        let grad_t = images
            .par_chunks(per_thread)
            .map(partial)
            .reduce_with(|mut total, part| {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
                total
            })
            .unwrap_or_else(|| vec![0f32; columns * c_out]);
        let mut grad = vec![0f32; c_out * columns];
        transpose(&grad_t, [columns, c_out], &mut grad);
        grad
    }

    /// dX_b = col2im(Wᵀ · dY_b): Wᵀ `[columns, c_out]`, dY_b `[c_out, positions]`.
    pub(super) fn input_gradient(&self, weight: &[f32], output_grad: &[f32]) -> Vec<f32> {
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

/// dst `[cols, rows]` = srcᵀ, src `[rows, cols]`: 8 × 8 blocks read and written as rows of 8
/// (vector loads and stores; element by element it cost 8% of ERFNet's step), the edges one by one.
fn transpose(src: &[f32], [rows, cols]: [usize; 2], dst: &mut [f32]) {
    const B: usize = 8;
    let (full_rows, full_cols) = (rows / B * B, cols / B * B);
    for r0 in (0..full_rows).step_by(B) {
        for c0 in (0..full_cols).step_by(B) {
            let block: [[f32; B]; B] = std::array::from_fn(|i| {
                let start = (r0 + i) * cols + c0;
                src[start..start + B].try_into().expect("a row of the block")
            });
            for (j, column) in (0..B).map(|j| (j, std::array::from_fn::<f32, B, _>(|i| block[i][j]))) {
                let start = (c0 + j) * rows + r0;
                dst[start..start + B].copy_from_slice(&column);
            }
        }
    }
    // The columns right of the blocks, then the rows below them.
    let right = (0..full_rows).flat_map(|r| (full_cols..cols).map(move |c| (r, c)));
    let below = (full_rows..rows).flat_map(|r| (0..cols).map(move |c| (r, c)));
    for (r, c) in right.chain(below) {
        dst[c * rows + r] = src[r * cols + c];
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocked_transpose_moves_every_element_once() {
        // 8 × 8 blocks with a ragged edge on both sides: 19 = 2·8 + 3 rows, 12 = 8 + 4 columns.
        let (rows, cols) = (19, 12);
        let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut dst = vec![-1.0; rows * cols];
        transpose(&src, [rows, cols], &mut dst);
        for (r, c) in (0..rows).flat_map(|r| (0..cols).map(move |c| (r, c))) {
            assert_eq!(dst[c * rows + r], (r * cols + c) as f32, "element ({r}, {c})");
        }
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
