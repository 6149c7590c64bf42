//! The segmentation loss `L_seg`: soft Dice plus focal loss (γ = 2), weighted 0.5/0.5; the Dice
//! over both classes (the reference) or the foreground only.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

/// Smoothing of the Dice ratio, so that an absent class in the batch gives 1, not 0/0.
const DICE_SMOOTH: f64 = 1e-5;

/// One-hot masks `[b, k, h, w]` of integer labels `[b, h, w]`.
pub fn one_hot(labels: Tensor<3, Int>, classes: usize) -> Tensor<4> {
    let [b, h, w] = labels.dims();
    labels.reshape([b * h * w]).one_hot::<2>(classes).float().reshape([b, h, w, classes]).permute([0, 3, 1, 2])
}

/// Which classes the soft Dice averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiceClasses {
    /// Background and foreground (the reference convention). The background's Dice is ≈ 1 from
    /// the start, so it halves the foreground's gradient.
    #[default]
    All,
    /// The foreground class(es) only (class 0 is background).
    Foreground,
}

/// Soft Dice loss: 1 − mean over `classes` of (2 Σ p·y + s) / (Σ p + Σ y + s), sums over the
/// whole batch, p the softmax of the logits.
pub fn dice_loss(logits: Tensor<4>, labels: Tensor<3, Int>, classes: DiceClasses) -> Tensor<1> {
    let [_, k, _, _] = logits.dims();
    let p = softmax(logits, 1);
    let y = one_hot(labels, k);
    let intersection = (p.clone() * y.clone()).sum_dims_squeeze::<1, _>(&[0, 2, 3]); // [k]
    let total = p.sum_dims_squeeze::<1, _>(&[0, 2, 3]) + y.sum_dims_squeeze::<1, _>(&[0, 2, 3]); // [k]
    let dice = (intersection.mul_scalar(2.0).add_scalar(DICE_SMOOTH)) / total.add_scalar(DICE_SMOOTH); // [k]
    let dice = match classes {
        DiceClasses::All => dice,
        DiceClasses::Foreground => dice.slice(1..k),
    };
    dice.mean().neg().add_scalar(1.0)
}

/// Focal loss, mean over pixels of −(1 − p_t)^γ log p_t, p_t the probability of the true class.
pub fn focal_loss(logits: Tensor<4>, labels: Tensor<3, Int>, gamma: f64) -> Tensor<1> {
    let [_, k, _, _] = logits.dims();
    let log_pt = (log_softmax(logits, 1) * one_hot(labels, k)).sum_dim(1); // [b, 1, h, w]
    let modulation = log_pt.clone().exp().neg().add_scalar(1.0).powf_scalar(gamma);
    (modulation * log_pt).mean().neg()
}

/// `L_seg` with its weights.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentationLoss {
    pub dice_weight: f64,
    pub dice_classes: DiceClasses,
    pub focal_weight: f64,
    pub gamma: f64,
}

impl Default for SegmentationLoss {
    /// The reference weighting: 0.5 Dice + 0.5 focal with γ = 2.
    fn default() -> Self {
        Self { dice_weight: 0.5, dice_classes: DiceClasses::All, focal_weight: 0.5, gamma: 2.0 }
    }
}

impl SegmentationLoss {
    pub fn forward(&self, logits: Tensor<4>, labels: Tensor<3, Int>) -> Tensor<1> {
        dice_loss(logits.clone(), labels.clone(), self.dice_classes).mul_scalar(self.dice_weight)
            + focal_loss(logits, labels, self.gamma).mul_scalar(self.focal_weight)
    }
}
