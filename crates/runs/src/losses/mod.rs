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

use std::collections::BTreeMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor};
use serde::{Deserialize, Serialize};

use relkd_models::cpu::{PixelKl, pixel_kl_of_logits, runs_on_flex};
use relkd_models::layers::resize_bilinear;

/// Where the pixel-wise distillation terms (LM, AAM, Hinton's KD) apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Every pixel (the paper).
    #[default]
    None,
    /// Only pixels where the teacher's predicted class equals the ground truth of the student's
    /// own image (not the paper's): where the teacher is wrong on the student's site, nothing of
    /// it is passed on. KMM and attention transfer compare whole images and are not gated.
    TeacherCorrect,
}

impl Gate {
    pub fn is_none(&self) -> bool {
        *self == Gate::None
    }

    /// The pixel mask `[b, 1, h, w]` (1 = distil) for student logits of size h × w, or None for
    /// every pixel. `labels [b, h, w]`; teacher logits of another size are resized (bilinear).
    pub fn mask(self, teacher: &Tensor<4>, labels: &Tensor<3, Int>) -> Option<Tensor<4>> {
        match self {
            Gate::None => None,
            Gate::TeacherCorrect => {
                let [b, h, w] = labels.dims();
                let predicted = resize_bilinear(teacher.clone().detach(), [h, w]).argmax(1); // [b, 1, h, w]
                Some(predicted.equal(labels.clone().reshape([b, 1, h, w])).float())
            }
        }
    }
}

/// The divergence between softmax(z / T) of the student and of the teacher at every pixel
/// `[b, 1, h, w]`: KL(p_s ‖ p_t) when `student_first`, else KL(p_t ‖ p_s). The teacher's logits
/// are detached and, if of another size, resized to the student's (bilinear). On the CPU backend
/// in float32 it is one operation each way (relkd-models' cpu module), elsewhere Burn's.
fn tempered_pixel_kl(student: Tensor<4>, teacher: Tensor<4>, temperature: f64, student_first: bool) -> Tensor<4> {
    let [_, _, h, w] = student.dims();
    let teacher = resize_bilinear(teacher.detach(), [h, w]);
    let float32 = student.dtype() == DType::F32 && teacher.dtype() == DType::F32;
    if float32 && runs_on_flex(&student.device()) {
        return pixel_kl_of_logits(student, teacher, PixelKl { temperature: temperature as f32, student_first });
    }
    let log_s = log_softmax(student.div_scalar(temperature), 1);
    let log_t = log_softmax(teacher.div_scalar(temperature), 1);
    let (log_p, log_q) = if student_first { (log_s, log_t) } else { (log_t, log_s) };
    (log_p.clone().exp() * (log_p - log_q)).sum_dim(1)
}

/// The mean of a per-pixel map `[b, 1, h, w]` over the pixels the mask keeps (all without one;
/// 0 when it keeps none).
fn masked_mean(per_pixel: Tensor<4>, mask: Option<&Tensor<4>>) -> Tensor<1> {
    match mask {
        None => per_pixel.mean(),
        Some(mask) => (per_pixel * mask.clone()).sum() / mask.clone().sum().clamp_min(1.0),
    }
}

/// A term of the total loss. Its key names it everywhere: the config's weights, the step's
/// values, the epoch log in model cards and `metrics.csv`'s columns. A new distiller is a new
/// variant here and its loss function beside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Term {
    /// L_seg, always on.
    Segmentation,
    /// λ1 · L_LM, the logits module.
    Lm,
    /// λ2 · L_KM, the kernel matrix module.
    Kmm,
    /// λ3 · L_AA, the adaptive affinity module.
    Aam,
    /// Hinton's logit KD (Table 4).
    Kd,
    /// Attention transfer (Table 4), weighted by β/2.
    At,
}

impl Term {
    /// In column order.
    pub const ALL: [Term; 6] = [Term::Segmentation, Term::Lm, Term::Kmm, Term::Aam, Term::Kd, Term::At];

    /// Compares the student's and teacher's distillation features (not their logits): a
    /// teacher without a feature cannot give it.
    pub fn reads_features(self) -> bool {
        matches!(self, Term::Kmm | Term::At)
    }

    pub fn key(self) -> &'static str {
        match self {
            Term::Segmentation => "segmentation",
            Term::Lm => "lm",
            Term::Kmm => "kmm",
            Term::Aam => "aam",
            Term::Kd => "kd",
            Term::At => "at",
        }
    }
}

/// One value per term that is on, keyed by [`Term`]. Serialised as a map from term keys;
/// a `null` value (older cards) reads as absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    from = "BTreeMap<Term, Option<T>>",
    into = "BTreeMap<Term, T>",
    bound(deserialize = "T: Deserialize<'de>", serialize = "T: Serialize + Clone")
)]
pub struct Terms<T>(BTreeMap<Term, T>);

impl<T> Default for Terms<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<T> From<BTreeMap<Term, Option<T>>> for Terms<T> {
    fn from(map: BTreeMap<Term, Option<T>>) -> Self {
        Self(map.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
    }
}

impl<T> From<Terms<T>> for BTreeMap<Term, T> {
    fn from(terms: Terms<T>) -> Self {
        terms.0
    }
}

impl<T> FromIterator<(Term, T)> for Terms<T> {
    fn from_iter<I: IntoIterator<Item = (Term, T)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<T> Terms<T> {
    pub fn get(&self, term: Term) -> Option<&T> {
        self.0.get(&term)
    }

    pub fn insert(&mut self, term: Term, value: T) {
        self.0.insert(term, value);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn remove(&mut self, term: Term) -> Option<T> {
        self.0.remove(&term)
    }

    /// The terms present, in [`Term::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Term, &T)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub fn map<U>(&self, f: impl Fn(Term, &T) -> U) -> Terms<U> {
        self.iter().map(|(k, v)| (k, f(k, v))).collect()
    }
}

impl Terms<f64> {
    /// Term by term sum; a term absent from one side counts as 0 there.
    pub fn plus(&self, other: &Self) -> Self {
        let mut sum = self.clone();
        for (k, v) in other.iter() {
            *sum.0.entry(k).or_insert(0.0) += v;
        }
        sum
    }

    pub fn scaled(&self, factor: f64) -> Self {
        self.map(|_, v| v * factor)
    }
}

/// The weight of each distillation term that is on (the segmentation loss always weighs 1).
pub type DistillationWeights = Terms<f64>;

impl DistillationWeights {
    /// The paper's λ1 = 0.2, λ2 = 0.9, λ3 = 0.9.
    pub fn paper() -> Self {
        [(Term::Lm, 0.2), (Term::Kmm, 0.9), (Term::Aam, 0.9)].into_iter().collect()
    }

    /// The weight of `term`, 0 when it is off.
    pub fn weight(&self, term: Term) -> f64 {
        self.get(term).copied().unwrap_or(0.0)
    }

    /// Whether `term` is on (weight above 0).
    pub fn on(&self, term: Term) -> bool {
        self.weight(term) > 0.0
    }
}

/// Every term of one step, as tensors (for the backward pass and for logging).
pub type LossTerms = Terms<Tensor<1>>;

impl LossTerms {
    /// Eq. 8 (plus any comparison distiller) with the given weights; the segmentation loss
    /// weighs 1, absent terms count as 0.
    pub fn total(&self, w: &DistillationWeights) -> Tensor<1> {
        let segmentation = self.get(Term::Segmentation).expect("every step has a segmentation loss").clone();
        self.iter()
            .filter(|(term, _)| *term != Term::Segmentation)
            .fold(segmentation, |total, (term, t)| total + t.clone().mul_scalar(w.weight(term)))
    }
}
