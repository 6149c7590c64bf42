//! Whole-volume prediction and per-case scores, with a predictor whose answer is known.

use burn::tensor::{Device, Tensor};
use relkd_core::dataset::Case;
use relkd_core::nifti_io::Volume;
use relkd_core::transforms::Preprocessing;
use relkd_train::evaluate::{CaseScore, mean_dice_per_site, predict_volume, score};

/// A 12×12×3 volume whose bright voxels are exactly the mask: a 4×6 box in slices 1 and 2,
/// aligned to 2×2 blocks so that halving the resolution loses nothing.
fn bright_box_case() -> Case {
    let dims = [12, 12, 3];
    let mut mask = vec![0u8; 12 * 12 * 3];
    for z in 1..3 {
        for y in 2..6 {
            for x in 2..8 {
                mask[x + 12 * (y + 12 * z)] = 1;
            }
        }
    }
    let data = mask.iter().map(|&m| 10.0 + 100.0 * m as f32).collect();
    let header = nifti::NiftiHeader { pixdim: [1.0, 0.8, 0.8, 3.0, 1.0, 1.0, 1.0, 1.0], ..Default::default() };
    let image = Volume { data, dims, spacing: [0.8, 0.8, 3.0], affine: [[0.0; 4]; 4], header };
    Case { site: "HK".into(), id: "Case00".into(), image, mask, label_values: vec![0, 1] }
}

/// The z-scored intensity halfway between background (10) and box (110).
fn midpoint(case: &Case) -> f32 {
    let n = case.image.data.len() as f64;
    let mean = case.image.data.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (case.image.data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    ((60.0 - mean) / std) as f32
}

/// Foreground wherever the input exceeds `t`: logits (t − x, x − t).
fn threshold(x: Tensor<4>, t: f32) -> Tensor<4> {
    Tensor::cat(vec![x.clone().neg().add_scalar(t), x.sub_scalar(t)], 1)
}

#[test]
fn a_perfect_predictor_scores_one() {
    let case = bright_box_case();
    let prep = Preprocessing { size: 12, context: 0 };
    let t = midpoint(&case);
    let pred = predict_volume(&case.image, &prep, 2, &Device::flex(), &|x| threshold(x, t));
    assert_eq!(pred, case.mask);
    let s = score(&case, &pred);
    assert_eq!((s.dice, s.hd95, s.asd), (1.0, 0.0, 0.0));
}

#[test]
fn predictions_come_back_on_the_source_grid() {
    // Inputs halved to 6×6 and 2.5D (the middle channel is the slice itself): the logits are
    // resized back to 12×12 with the same half-pixel convention, and the block-aligned box
    // comes back voxel for voxel.
    let case = bright_box_case();
    let t = midpoint(&case);
    let prep = Preprocessing { size: 6, context: 1 };
    let middle_channel = |x: Tensor<4>| {
        let [n, _, h, w] = x.dims();
        threshold(x.slice([0..n, 1..2, 0..h, 0..w]), t)
    };
    let pred = predict_volume(&case.image, &prep, 3, &Device::flex(), &middle_channel);
    assert_eq!(pred, case.mask);
}

#[test]
fn empty_prediction_is_flagged_not_averaged_away() {
    let case = bright_box_case();
    let s = score(&case, &vec![0; case.mask.len()]);
    assert_eq!(s.dice, 0.0);
    assert!(s.hd95.is_infinite());
}

#[test]
fn site_means_by_hand() {
    let s = |site: &str, dice| CaseScore {
        site: site.into(),
        case: String::new(),
        dice,
        hd95: 0.0,
        asd: 0.0,
        fragmentation: 0.0,
    };
    let means = mean_dice_per_site(&[s("HK", 0.5), s("UCL", 0.9), s("HK", 0.7)]);
    assert_eq!(means.len(), 2);
    assert_eq!(means[0].0, "HK");
    assert!((means[0].1 - 0.6).abs() < 1e-12);
    assert_eq!(means[1], ("UCL".to_string(), 0.9));
}
