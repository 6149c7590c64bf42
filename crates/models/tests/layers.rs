//! Max-unpooling, the matmul bilinear resize and PReLU, checked by hand and against Burn.

use burn::nn::PReluConfig;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use relkd_models::layers::{max_pool2x2_with_indices, max_unpool2d, prelu, resize_bilinear};

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn max_unpool_puts_values_back_where_they_came_from() {
    let device = Device::flex().autodiff();
    #[rustfmt::skip]
    let x = Tensor::<4>::from_data(TensorData::new(vec![
        1.0f32, 2.0, 3.0, 0.0,
        4.0,    0.0, 1.0, 7.0,
        0.0,    9.0, 2.0, 2.0,
        5.0,    1.0, 8.0, 3.0,
    ], [1, 1, 4, 4]), &device);
    let (pooled, indices) = max_pool2x2_with_indices(x);
    assert_eq!(indices.to_data().convert::<i64>().try_to_vec::<i64>().unwrap(), vec![4, 7, 9, 14]);
    assert_eq!(values(pooled.clone()), vec![4.0, 7.0, 9.0, 8.0]);

    // Unpool a fresh leaf so its gradient is the unpooling's alone.
    let leaf =
        Tensor::<4>::from_data(TensorData::new(vec![10.0f32, 20.0, 30.0, 40.0], [1, 1, 2, 2]), &device).require_grad();
    let up = max_unpool2d(leaf.clone(), indices, [4, 4]);
    #[rustfmt::skip]
    assert_eq!(values(up.clone()), vec![
        0.0,  0.0, 0.0,  0.0,
        10.0, 0.0, 0.0, 20.0,
        0.0, 30.0, 0.0,  0.0,
        0.0,  0.0, 40.0, 0.0,
    ]);
    // d/dv Σ up·G with G[k] = k is G at each value's index: 4, 7, 9, 14.
    let weights =
        Tensor::<4>::from_data(TensorData::new((0..16).map(|k| k as f32).collect::<Vec<_>>(), [1, 1, 4, 4]), &device);
    let grads = (up * weights).sum().backward();
    let grad = leaf.grad(&grads).expect("gradient reaches the unpooled values");
    assert_eq!(grad.into_data().try_to_vec::<f32>().unwrap(), vec![4.0, 7.0, 9.0, 14.0]);
}

#[test]
fn bilinear_resize_by_hand() {
    let device = Device::flex();
    let x = Tensor::<4>::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [1, 1, 2, 2]), &device);
    // Corners aligned: the 3×3 output samples the 2×2 input at 0, ½ and 1.
    assert_eq!(values(resize_bilinear(x, [3, 3])), vec![0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 2.5, 3.0]);
}

#[test]
fn bilinear_resize_matches_burn_interpolate() {
    let device = Device::flex();
    let x = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device);
    for out in [[9, 4], [10, 14], [1, 1], [5, 7]] {
        let ours = values(resize_bilinear(x.clone(), out));
        let options = InterpolateOptions {
            align_corners: true,
            output_size: Some(out),
            ..InterpolateOptions::new(InterpolateMode::Bilinear)
        };
        let burns = values(interpolate(x.clone(), options));
        let max_diff = ours.iter().zip(&burns).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_diff < 1e-5, "{out:?}: {max_diff}");
    }
}

#[test]
fn prelu_by_hand() {
    let device = Device::flex();
    let act = PReluConfig::new().with_alpha(0.25).init(&device);
    let x = Tensor::<4>::from_data(TensorData::new(vec![-4.0f32, -1.0, 0.5, 3.0], [1, 1, 2, 2]), &device);
    assert_eq!(values(prelu(x, &act)), vec![-1.0, -0.25, 0.5, 3.0]);
}

/// Same values and same gradients (input and slopes) as Burn's `PRelu::forward`, with one slope
/// and with one per channel; the inputs are never exactly 0, where the two formulations differ.
#[test]
fn prelu_matches_burn_prelu_with_gradients() {
    let device = Device::flex().autodiff();
    for slopes in [1, 3] {
        let act = PReluConfig::new().with_num_parameters(slopes).with_alpha(0.3).init(&device);
        let x = Tensor::<4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let weights = Tensor::<4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
        let gradients = |y: Tensor<4>| {
            let grads = (y.clone() * weights.clone()).sum().backward();
            let dx = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let dalpha = act.alpha.val().grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
            (values(y), dx, dalpha)
        };
        let (ours, ours_dx, ours_dalpha) = gradients(prelu(x.clone(), &act));
        let (burn, burn_dx, burn_dalpha) = gradients(act.forward(x.clone()));
        assert_eq!(ours, burn, "values, {slopes} slope(s)");
        assert_eq!(ours_dx, burn_dx, "input gradient, {slopes} slope(s)");
        assert_eq!(ours_dalpha.len(), slopes);
        for (a, b) in ours_dalpha.iter().zip(&burn_dalpha) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "slope gradient {a} vs {b}");
        }
    }
}
