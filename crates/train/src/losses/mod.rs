//! The losses of the paper (SPEC §4), each in its own module, and their total (eq. 8):
//! `L = L_seg + λ1·L_LM + λ2·L_KM + λ3·L_AA`, each distillation term switchable for the
//! ablation of Table 3. Logit KD (Hinton) and attention transfer are the comparison
//! distillers of Table 4, added to `L_seg` the same way.

pub mod affinity;
pub mod attention;
pub mod hinton;
pub mod kernel_matrix;
pub mod logits;
pub mod segmentation;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which distillation terms run, and their weights; 0 switches a term off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistillationWeights {
    /// λ1 of the logits module.
    pub lm: f64,
    /// λ2 of the kernel matrix module.
    pub kmm: f64,
    /// λ3 of the adaptive affinity module.
    pub aam: f64,
    /// Weight of Hinton's logit KD.
    pub kd: f64,
    /// Weight of attention transfer (β/2).
    pub at: f64,
}

impl Default for DistillationWeights {
    /// The paper's λ1 = 0.2, λ2 = 0.9, λ3 = 0.9; no comparison distiller.
    fn default() -> Self {
        Self { lm: 0.2, kmm: 0.9, aam: 0.9, ..Self::none() }
    }
}

impl DistillationWeights {
    /// The baseline: segmentation loss alone.
    pub fn none() -> Self {
        Self { lm: 0.0, kmm: 0.0, aam: 0.0, kd: 0.0, at: 0.0 }
    }
}

/// Every term of one step, kept for logging.
#[derive(Debug, Clone)]
pub struct LossTerms {
    pub segmentation: Tensor<1>,
    pub lm: Option<Tensor<1>>,
    pub kmm: Option<Tensor<1>>,
    pub aam: Option<Tensor<1>>,
    pub kd: Option<Tensor<1>>,
    pub at: Option<Tensor<1>>,
}

impl LossTerms {
    /// The segmentation loss alone.
    pub fn segmentation_only(segmentation: Tensor<1>) -> Self {
        Self { segmentation, lm: None, kmm: None, aam: None, kd: None, at: None }
    }

    /// Eq. 8 (plus any comparison distiller) with the given weights; absent terms count as 0.
    pub fn total(&self, w: &DistillationWeights) -> Tensor<1> {
        [(&self.lm, w.lm), (&self.kmm, w.kmm), (&self.aam, w.aam), (&self.kd, w.kd), (&self.at, w.at)]
            .into_iter()
            .filter_map(|(term, weight)| term.as_ref().map(|t| t.clone().mul_scalar(weight)))
            .fold(self.segmentation.clone(), |total, term| total + term)
    }
}
