//! Does the phantom's domain shift bite? Trains a baseline ENet (segmentation loss only) on
//! five phantom sites and compares its Dice on held-out cases of those sites with its Dice on
//! the sixth, unseen site.
//!
//!     cargo run -p relkd-train --example site_shift [-- TARGET EPOCHS]

use burn::tensor::Device;
use relkd_core::dataset::{Dataset, load_case, split_cases};
use relkd_core::phantom::{Extras, PhantomConfig, generate};
use relkd_core::transforms::{Augmentation, Preprocessing, case_slices};
use relkd_models::{Architecture, NetworkConfig};
use relkd_train::losses::segmentation::SegmentationLoss;
use relkd_train::schedule::CyclicLrConfig;
use relkd_train::trainer::{Quiet, TrainOptions, Trainee, train, validation_dice};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = args.get(1).map_or("HK", String::as_str).to_string();
    let epochs: usize = args.get(2).map_or(12, |e| e.parse().expect("EPOCHS is a number"));
    let dir = tempfile::tempdir().unwrap();
    generate(&PhantomConfig::default(), dir.path(), &Extras::default(), &|_, _| {}).unwrap();
    let data = Dataset::discover(dir.path()).unwrap();
    let prep = Preprocessing { size: 64, context: 0 };

    let (mut train_cases, mut val_cases) = (Vec::new(), Vec::new());
    for site in data.sites.iter().filter(|s| s.name != target) {
        let (tr, va) = split_cases(&site.cases, 0.25, 0);
        train_cases.extend(tr.iter().map(|f| load_case(&site.name, f).unwrap()));
        val_cases.extend(va.iter().map(|f| load_case(&site.name, f).unwrap()));
    }
    let unseen: Vec<_> = data.site(&target).unwrap().cases.iter().map(|f| load_case(&target, f).unwrap()).collect();
    let samples: Vec<_> = train_cases.iter().flat_map(|c| case_slices(&c.image, &c.mask, &prep, true)).collect();

    let device = Device::flex().autodiff();
    device.seed(0);
    let options = TrainOptions {
        prep,
        epochs,
        batch_size: 8,
        // The paper's rate (Adam 0.01 → 1e-6) on a short cycle: a few hundred steps in all.
        lr: CyclicLrConfig { base_lr: 1e-6, max_lr: 0.01, step_size: 100 },
        seed: 0,
        augmentation: Augmentation::default(),
        segmentation: SegmentationLoss::default(),
        devices: vec![],
    };
    let student =
        Trainee { net: NetworkConfig::new(Architecture::Enet).with_width(0.5).init(&device), kmm: None, aam: None };
    println!("training ENet (width 0.5) on {} slices of {} cases, {epochs} epochs", samples.len(), train_cases.len());
    let (trained, state) = train(student, None, &samples, &val_cases, &options, None, &device, &mut Quiet).unwrap();
    for e in &state.history {
        println!("epoch {:>2}  loss {:.4}  val Dice (training sites) {:.3}", e.epoch, e.total, e.val_dice);
    }
    let plain = device.without_autodiff();
    let seen = validation_dice(&trained.net, &val_cases, &prep, 8, &plain);
    let unseen_dice = validation_dice(&trained.net, &unseen, &prep, 8, &plain);
    println!("mean 3D Dice: held-out cases of the training sites {seen:.3}; unseen site {target} {unseen_dice:.3}");
}
