//! What each distillation loss costs on its own (issue #32): its forward and backward, apart
//! from the networks, at the quick configuration's sizes (batch 8, 1×64×64, students at width
//! 0.5, UNet++ at width 0.125), on the default CPU backend (flex).
//!
//! The logit terms (LM, the affinity loss, Hinton's KD) take `[8, 2, 64, 64]` student logits and
//! a teacher whose classes are a disc of foreground in each image, as a trained teacher's are;
//! the feature terms (KMM with its adapter, attention transfer) take each student's tap and the
//! teacher's, from one forward pass of the networks. The terms are timed in turns, run by run,
//! so their medians come from the same machine state. `distill_step` times them inside a whole
//! step; this bench says which term the step's share comes from.
//!
//!     cargo bench -p relkd-train --bench loss_terms [-- RUNS]

use burn::tensor::{Device, Distribution, Int, Tensor};
use relkd_core::timing::Timings;
use relkd_models::{Architecture, NetworkConfig, Segmenter};
use relkd_train::losses::affinity::AffinityConfig;
use relkd_train::losses::attention::attention_transfer;
use relkd_train::losses::hinton::hinton_kd;
use relkd_train::losses::kernel_matrix::KernelMatrixConfig;
use relkd_train::losses::logits::logits_kl;

const BATCH: usize = 8;
const SIZE: usize = 64;

/// Two-class teacher logits with a disc of foreground (radius 14 px) in every image.
fn disc_teacher(device: &Device) -> Tensor<4> {
    let axis = |n: usize, centre: f64| Tensor::<1, Int>::arange(0..n as i64, device).float().sub_scalar(centre);
    let (y, x) = (axis(SIZE, 32.0).reshape([1, 1, SIZE, 1]), axis(SIZE, 30.0).reshape([1, 1, 1, SIZE]));
    let inside = (y.powi_scalar(2) + x.powi_scalar(2)).lower_elem(196.0).float().mul_scalar(8.0).sub_scalar(4.0);
    Tensor::cat(vec![inside.clone().neg(), inside], 1).repeat_dim(0, BATCH) // [8, 2, 64, 64]
}

/// The median time of `loss`'s forward and backward for each of `terms`, timed in turns.
fn time_terms(runs: usize, input: &Tensor<4>, terms: &[(&str, &dyn Fn(Tensor<4>) -> Tensor<1>)]) -> Vec<f64> {
    let step = |loss: &dyn Fn(Tensor<4>) -> Tensor<1>| {
        let x = input.clone().detach().require_grad();
        let grads = loss(x.clone()).backward();
        x.grad(&grads).expect("the input's gradient").into_data(); // waits for the device
    };
    let mut times = vec![Vec::new(); terms.len()];
    for round in 0..runs + 2 {
        for ((_, loss), times) in terms.iter().zip(&mut times) {
            let start = std::time::Instant::now();
            step(*loss);
            if round >= 2 {
                times.push(start.elapsed()); // the first two rounds warm up
            }
        }
    }
    times.into_iter().map(|t| Timings::from(t).median_ms()).collect()
}

fn main() {
    relkd_models::cpu::keep_freed_memory(); // as the `train` binary does
    let runs: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(20);
    let device = Device::flex().autodiff();
    device.seed(0);
    println!("each loss's forward and backward alone, batch {BATCH}, {SIZE}×{SIZE}, flex; median of {runs}, ms");

    let student = Tensor::<4>::random([BATCH, 2, SIZE, SIZE], Distribution::Normal(0.0, 2.0), &device);
    let teacher = disc_teacher(&device);
    let aam = AffinityConfig::new(2).init(&device);
    let (lm, affinity, kd) = (
        |s: Tensor<4>| logits_kl(s, teacher.clone(), 1.0, None),
        |s: Tensor<4>| aam.forward(s, teacher.clone(), None).total,
        |s: Tensor<4>| hinton_kd(s, teacher.clone(), 4.0, None),
    );
    let logit_terms: [(&str, &dyn Fn(Tensor<4>) -> Tensor<1>); 3] = [("LM", &lm), ("AAM", &affinity), ("KD", &kd)];
    let medians = time_terms(runs, &student, &logit_terms);
    for ((name, _), ms) in logit_terms.iter().zip(medians) {
        println!("{:<40} {ms:>6.2}", format!("{name} on [{BATCH}, 2, {SIZE}, {SIZE}] logits"));
    }

    let images = Tensor::<4>::random([BATCH, 1, SIZE, SIZE], Distribution::Normal(0.0, 1.0), &device);
    let unetpp = NetworkConfig::new(Architecture::Unetpp).with_width(0.125).init(&device);
    let t_feature = unetpp.forward_features(images.clone()).feature.detach();
    for architecture in [Architecture::Enet, Architecture::Espnet, Architecture::Erfnet] {
        let net = NetworkConfig::new(architecture).with_width(0.5).init(&device);
        let s_feature = net.forward_features(images.clone()).feature.detach();
        let kmm = KernelMatrixConfig::new(s_feature.dims()[1], t_feature.dims()[1]).init(&device);
        let (kernel, attention) =
            (|s: Tensor<4>| kmm.forward(s, t_feature.clone()), |s: Tensor<4>| attention_transfer(s, t_feature.clone()));
        let feature_terms: [(&str, &dyn Fn(Tensor<4>) -> Tensor<1>); 2] = [("KMM", &kernel), ("AT", &attention)];
        let medians = time_terms(runs, &s_feature, &feature_terms);
        for ((name, _), ms) in feature_terms.iter().zip(medians) {
            let what = format!("{name} on {}'s feature {:?}", architecture.display_name(), s_feature.dims());
            println!("{what:<40} {ms:>6.2}");
        }
    }
}
