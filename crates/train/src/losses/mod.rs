//! The losses of the paper (SPEC §4), each in its own module, and their total (eq. 8):
//! `L = L_seg + λ1·L_LM + λ2·L_KM + λ3·L_AA`, each distillation term switchable for the
//! ablation of Table 3.

pub mod affinity;
pub mod kernel_matrix;
pub mod logits;
pub mod segmentation;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which distillation modules run, and their weights λ.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillationWeights {
    /// λ1 of the logits module; 0 switches it off.
    pub lm: f64,
    /// λ2 of the kernel matrix module; 0 switches it off.
    pub kmm: f64,
    /// λ3 of the adaptive affinity module; 0 switches it off.
    pub aam: f64,
}

impl Default for DistillationWeights {
    /// The paper's λ1 = 0.2, λ2 = 0.9, λ3 = 0.9.
    fn default() -> Self {
        Self { lm: 0.2, kmm: 0.9, aam: 0.9 }
    }
}

impl DistillationWeights {
    /// The baseline: segmentation loss alone.
    pub fn none() -> Self {
        Self { lm: 0.0, kmm: 0.0, aam: 0.0 }
    }
}

/// Every term of one step, kept for logging.
#[derive(Debug, Clone)]
pub struct LossTerms {
    pub segmentation: Tensor<1>,
    pub lm: Option<Tensor<1>>,
    pub kmm: Option<Tensor<1>>,
    pub aam: Option<Tensor<1>>,
}

impl LossTerms {
    /// Eq. 8 with the given weights; absent terms count as 0.
    pub fn total(&self, weights: &DistillationWeights) -> Tensor<1> {
        [(&self.lm, weights.lm), (&self.kmm, weights.kmm), (&self.aam, weights.aam)]
            .into_iter()
            .filter_map(|(term, weight)| term.as_ref().map(|t| t.clone().mul_scalar(weight)))
            .fold(self.segmentation.clone(), |total, term| total + term)
    }
}
