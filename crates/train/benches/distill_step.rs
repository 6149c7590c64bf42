//! What distillation costs per training step (issue #4, item 7): each student at paper width,
//! batch 16, 1×128×128, on the default CPU backend (flex), Adam update included:
//!
//! - `seg`: the student's own step, L_seg alone (the baseline);
//! - `+losses`: the same step with LM + KMM + AAM against teacher outputs computed beforehand
//!   (the teacher's forward excluded: what the three losses themselves add);
//! - `+teacher`: the full distilled step, the frozen teacher's forward included.
//!
//! The teacher is UNet++ at paper width. The three variants of one student are timed in one
//! process, interleaved run by run, so their ratios come from the same machine state.
//!
//!     cargo bench -p relkd-train --bench distill_step [-- RUNS]

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use relkd_core::timing::Timings;
use relkd_models::{Architecture, NetworkConfig, Segmenter};
use relkd_train::config::LossConfig;
use relkd_train::losses::affinity::AffinityConfig;
use relkd_train::losses::kernel_matrix::KernelMatrixConfig;
use relkd_train::losses::segmentation::SegmentationLoss;
use relkd_train::trainer::{Distillation, Trainee, loss_terms, teacher_outputs};

const BATCH: usize = 16;
const SIZE: usize = 128;

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let device = Device::flex().autodiff();
    device.seed(0);
    let plain = device.clone().without_autodiff();
    let teacher = NetworkConfig::new(Architecture::Unetpp).init(&device).valid();
    let distillation = Distillation::new(teacher, &LossConfig::default());
    let images = Tensor::<4>::random([BATCH, 1, SIZE, SIZE], Distribution::Normal(0.0, 1.0), &device);
    let labels = Tensor::<3, Int>::random([BATCH, SIZE, SIZE], Distribution::Uniform(0.0, 2.0), &device);
    let seg = SegmentationLoss::default();
    let precomputed = teacher_outputs(&distillation, &images, &plain);

    println!("training step, batch {BATCH}, 1×{SIZE}×{SIZE}, flex, Adam; teacher UNet++ (paper width); {runs} runs");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "student", "seg ms", "+losses ms", "+teacher ms", "losses", "teacher"
    );
    for architecture in [Architecture::Enet, Architecture::Espnet, Architecture::Erfnet] {
        let net = NetworkConfig::new(architecture).init(&device);
        let (s_tap, t_tap) = (net.tap(), distillation.teacher.tap());
        let mut trainee = Trainee {
            net,
            kmm: Some(KernelMatrixConfig::new(s_tap.channels, t_tap.channels).init(&device)),
            aam: Some(AffinityConfig::new(2).init(&device)),
        };
        let mut optimizer = AdamConfig::new().init();
        let mut step = |teacher: Option<Option<&relkd_models::SegOutput>>| {
            let outputs = teacher.map(|pre| {
                let out = pre.cloned().unwrap_or_else(|| teacher_outputs(&distillation, &images, &plain));
                (out, &distillation)
            });
            let terms = loss_terms(&trainee, images.clone(), labels.clone(), &seg, outputs);
            let total = terms.total(&distillation.weights);
            let grads = GradientsParams::from_grads(total.backward(), &trainee);
            trainee = optimizer.step(1e-3, trainee.clone(), grads);
            total.into_data(); // waits for every queued operation
        };
        // One warm-up of each, then the three variants in turn, `runs` times.
        let variants: [Option<Option<&relkd_models::SegOutput>>; 3] = [None, Some(Some(&precomputed)), Some(None)];
        variants.iter().for_each(|v| step(*v));
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, v) in variants.iter().enumerate() {
                let start = std::time::Instant::now();
                step(*v);
                times[i].push(start.elapsed());
            }
        }
        let [own, losses, full] = times.map(|t| Timings::from(t).median_ms());
        println!(
            "{:<8} {own:>12.0} {losses:>12.0} {full:>12.0} {:>+9.0}% {:>+9.0}%",
            architecture.display_name(),
            100.0 * (losses / own - 1.0),
            100.0 * (full / own - 1.0)
        );
    }
}
