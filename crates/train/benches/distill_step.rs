//! What distillation costs per training step (issue #4, item 7; issue #29): each student at
//! paper width, batch 16, 1×128×128, on the default CPU backend (flex), Adam update included:
//!
//! - `seg`: the student's own step, L_seg alone (the baseline);
//! - `+losses`: the same step with LM + KMM + AAM against teacher outputs computed beforehand
//!   (the teacher's forward excluded: what the three losses themselves add);
//! - `+burn`: the full distilled step, the frozen teacher's forward in Burn;
//! - `+ort`: the same with the teacher exported and run by ONNX Runtime (`teacher.runtime: onnx`).
//!
//! The teacher is UNet++ at paper width. The four variants of one student are timed in one
//! process, interleaved run by run, so their ratios come from the same machine state. With
//! `quick`, the sizes of `configs/quick.yaml` instead: batch 8, 1×64×64, students at width 0.5,
//! UNet++ at width 0.125. ONNX Runtime must be provisioned (`bash ci/setup-ort.sh`).
//!
//!     cargo bench -p relkd-train --bench distill_step [-- RUNS [quick]]

use std::sync::Arc;

use burn::module::Module;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use relkd_core::timing::Timings;
use relkd_core::transforms::Preprocessing;
use relkd_models::{Architecture, NetworkConfig, Segmenter};
use relkd_runs::card::ModelCard;
use relkd_train::config::LossConfig;
use relkd_train::losses::affinity::AffinityConfig;
use relkd_train::losses::kernel_matrix::KernelMatrixConfig;
use relkd_train::losses::segmentation::SegmentationLoss;
use relkd_train::teacher::{OnnxTeacher, Teacher, TeacherOutput};
use relkd_train::trainer::{Distillation, Trainee, loss_terms, teacher_outputs};

/// Batch, input size, student width and teacher width.
const PAPER: (usize, usize, f64, f64) = (16, 128, 1.0, 1.0);
const QUICK: (usize, usize, f64, f64) = (8, 64, 0.5, 0.125);

/// Where a variant's teacher outputs come from.
#[derive(Clone, Copy)]
enum Variant<'a> {
    Seg,
    Precomputed(&'a TeacherOutput),
    Teacher(&'a Distillation),
}

fn main() {
    relkd_models::cpu::keep_freed_memory(); // as the `train` binary does
    let runs: usize = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(5);
    let quick = std::env::args().nth(2).is_some_and(|a| a == "quick");
    let (batch, size, student_width, teacher_width) = if quick { QUICK } else { PAPER };
    let device = Device::flex().autodiff();
    device.seed(0);
    let plain = device.clone().without_autodiff();
    let teacher = NetworkConfig::new(Architecture::Unetpp).with_width(teacher_width).init(&device).valid();
    let card = ModelCard::untrained("teacher", Architecture::Unetpp, &teacher, Preprocessing { size, context: 0 });
    let card = ModelCard { width: teacher_width, ..card };
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let onnx = OnnxTeacher::export(&teacher, &card, &scratch.path().join("teacher.onnx"))
        .unwrap_or_else(|e| panic!("{e:#} (provision ONNX Runtime: bash ci/setup-ort.sh)"));
    let burn = Distillation::new(Teacher::Burn(teacher), &LossConfig::default());
    let ort = Distillation { teacher: Teacher::Onnx(Arc::new(onnx)), ..burn.clone() };
    let images = Tensor::<4>::random([batch, 1, size, size], Distribution::Normal(0.0, 1.0), &device);
    let labels = Tensor::<3, Int>::random([batch, size, size], Distribution::Uniform(0.0, 2.0), &device);
    let seg = SegmentationLoss::default();
    let precomputed = teacher_outputs(&burn, &images, &plain);

    println!(
        "training step, batch {batch}, 1×{size}×{size}, flex, Adam; students at width {student_width}, \
         teacher UNet++ at width {teacher_width}; {runs} runs"
    );
    println!(
        "{:<8} {:>8} {:>11} {:>9} {:>8} {:>8} {:>8} {:>9}",
        "student", "seg ms", "+losses ms", "+burn ms", "+ort ms", "losses", "burn", "ort/burn"
    );
    for architecture in [Architecture::Enet, Architecture::Espnet, Architecture::Erfnet] {
        let net = NetworkConfig::new(architecture).with_width(student_width).init(&device);
        let (s_tap, t_channels) = (net.tap(), burn.teacher.feature_channels().expect("a Burn teacher has its tap"));
        let mut trainee = Trainee {
            net,
            kmm: Some(KernelMatrixConfig::new(s_tap.channels, t_channels).init(&device)),
            aam: Some(AffinityConfig::new(2).init(&device)),
        };
        let mut optimizer = AdamConfig::new().init();
        let mut step = |variant: Variant| {
            let outputs = match variant {
                Variant::Seg => None,
                Variant::Precomputed(out) => Some((out.clone(), &burn)),
                Variant::Teacher(d) => Some((teacher_outputs(d, &images, &plain), d)),
            };
            let terms = loss_terms(&trainee, images.clone(), labels.clone(), &seg, outputs);
            let total = terms.total(&burn.weights);
            let grads = GradientsParams::from_grads(total.backward(), &trainee);
            trainee = optimizer.step(1e-3, trainee.clone(), grads);
            total.into_data(); // waits for every queued operation
        };
        // One warm-up of each, then the variants in turn, `runs` times.
        let variants =
            [Variant::Seg, Variant::Precomputed(&precomputed), Variant::Teacher(&burn), Variant::Teacher(&ort)];
        variants.iter().for_each(|v| step(*v));
        let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, v) in variants.iter().enumerate() {
                let start = std::time::Instant::now();
                step(*v);
                times[i].push(start.elapsed());
            }
        }
        let [own, losses, with_burn, with_ort] = times.map(|t| Timings::from(t).median_ms());
        println!(
            "{:<8} {own:>8.0} {losses:>11.0} {with_burn:>9.0} {with_ort:>8.0} {:>+7.0}% {:>+7.0}% {:>9.2}",
            architecture.display_name(),
            100.0 * (losses / own - 1.0),
            100.0 * (with_burn / own - 1.0),
            with_ort / with_burn
        );
    }
}
