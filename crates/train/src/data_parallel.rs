//! Data-parallel training on several devices (`train --devices cuda:0,cuda:1`) through
//! burn-train's multi-device train step, the engine of its `ExecutionStrategy::MultiDevice`
//! with the optimiser on the main device.
//!
//! burn-train's Learner owns its loop, and distillation needs ours (a frozen teacher, three
//! extra losses, per-epoch checkpoints and validation), so the loop stays in
//! [`crate::trainer`] and only the step is burn-train's: each step's batch is split across the
//! devices, [`MultiDevicesTrainStep`] runs forward and backward of a fork of the trainee on every
//! device in its own thread, and the gradients are brought to the main device and summed there
//! ([`GradientsAccumulator`]) for one Adam step, as burn-train's `OptimMainDevice` does. Each
//! device's loss is weighted by its share of the batch, so the sum is the gradient of the whole
//! batch's mean loss (exactly for per-pixel terms; batch statistics — batch norm, the Dice
//! denominators, KMM's batch Gram — are per device, as in any data-parallel training).

use burn::data::dataloader::{DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ExecutionError;
use burn::tensor::{Device, Int, Tensor};
use burn_train::train::MultiDevicesTrainStep;
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use relkd_core::transforms::{Preprocessing, Slice2d};

use crate::losses::segmentation::SegmentationLoss;
use crate::trainer::{Distillation, Objective, TermValues, Trainee, to_batch};

/// One device's part of a batch.
pub struct Part {
    pub images: Tensor<4>,
    pub labels: Tensor<3, Int>,
    /// Its share of the batch's samples; its loss is weighted by it.
    pub share: f64,
    /// The distillation weights' ramp factor at this step.
    pub ramp: f64,
}

/// The trainee as burn-train's multi-device step sees it: the network with its distillation
/// modules, and (not trained) what its loss needs on each device.
#[derive(Module, Debug)]
pub struct DistillStep {
    pub trainee: Trainee,
    #[module(skip)]
    context: StepContext,
}

#[derive(Clone, Debug)]
struct StepContext {
    segmentation: SegmentationLoss,
    /// The frozen teacher forked to each device, by the device's autodiff twin; empty for the
    /// baseline and the teacher.
    distillations: Vec<(Device, Distillation)>,
}

impl DistillStep {
    /// The part's loss and terms, weighted by its share of the batch.
    fn terms(&self, part: Part) -> (Tensor<1>, TermValues) {
        let device = part.images.device();
        let distillation = (!self.context.distillations.is_empty()).then(|| {
            self.context
                .distillations
                .iter()
                .find(|(d, _)| *d == device)
                .map(|(_, d)| d)
                .unwrap_or_else(|| panic!("no teacher on {device:?}"))
        });
        let objective = Objective { segmentation: &self.context.segmentation, distillation, ramp: part.ramp };
        let (total, values) = objective.batch_loss(&self.trainee, part.images, part.labels);
        (total.mul_scalar(part.share), values.scaled(part.share))
    }
}

impl TrainStep for DistillStep {
    type Input = Part;
    type Output = TermValues;

    fn step(&self, part: Part) -> TrainOutput<TermValues> {
        let (loss, values) = self.terms(part);
        TrainOutput::new(self, loss.backward(), values)
    }
}

impl InferenceStep for DistillStep {
    type Input = Part;
    type Output = TermValues;

    fn step(&self, part: Part) -> TermValues {
        self.terms(part).1
    }
}

impl ItemLazy for TermValues {
    fn sync(self) -> Result<Self, ExecutionError> {
        Ok(self)
    }
}

/// burn-train's iterator protocol for a single part.
struct OnePart(Option<Part>);

impl Iterator for OnePart {
    type Item = Result<Part, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.take().map(Ok)
    }
}

impl DataLoaderIterator<Part> for OnePart {
    fn progress(&self) -> Progress {
        Progress { items_processed: usize::from(self.0.is_none()), items_total: 1, unit: None }
    }
}

/// The devices a trainee's steps are spread over; the first is the main device, which keeps
/// the weights and the optimiser state.
pub struct DataParallel {
    devices: Vec<Device>,
    step: MultiDevicesTrainStep<DistillStep>,
    context: StepContext,
}

impl DataParallel {
    /// `devices` are autodiff devices; the teacher is forked to each of them.
    pub fn new(devices: &[Device], segmentation: SegmentationLoss, distillation: Option<&Distillation>) -> Self {
        let distillations = distillation.map_or(vec![], |d| {
            devices
                .iter()
                .map(|device| {
                    let teacher = d.teacher.fork(&device.clone().without_autodiff());
                    (device.clone(), Distillation { teacher, ..d.clone() })
                })
                .collect()
        });
        Self {
            devices: devices.to_vec(),
            step: MultiDevicesTrainStep::new(devices),
            context: StepContext { segmentation, distillations },
        }
    }

    /// One batch: split, stepped on every device, gradients summed on the main device.
    /// Returns the batch's loss terms and gradients for `trainee` (same parameter ids).
    pub fn step(
        &self,
        trainee: &Trainee,
        batch: &[Slice2d],
        prep: &Preprocessing,
        ramp: f64,
    ) -> Result<(TermValues, GradientsParams), String> {
        let model = DistillStep { trainee: trainee.clone(), context: self.context.clone() };
        let main = &self.devices[0];
        if batch.len() < self.devices.len() {
            // burn-train's step needs a part for every device: an epoch's last, smaller batch
            // runs whole on the main device.
            let (images, labels) = to_batch(batch, prep, main);
            let (total, values) = model.terms(Part { images, labels, share: 1.0, ramp });
            return Ok((values, GradientsParams::from_grads(total.backward(), trainee)));
        }
        let mut start = 0;
        let mut parts: Vec<Box<dyn DataLoaderIterator<Part>>> = split_sizes(batch.len(), self.devices.len())
            .into_iter()
            .zip(&self.devices)
            .map(|(size, device)| {
                let samples = &batch[start..start + size];
                start += size;
                let (images, labels) = to_batch(samples, prep, device);
                let share = samples.len() as f64 / batch.len() as f64;
                Box::new(OnePart(Some(Part { images, labels, share, ramp }))) as Box<dyn DataLoaderIterator<Part>>
            })
            .collect();
        let (outputs, _) = self.step.step(&mut parts, &model).map_err(|e| e.to_string())?;
        let mut accumulator = GradientsAccumulator::new();
        let mut values = TermValues::default();
        for output in outputs {
            accumulator.accumulate(&model, output.output.grads.to_device(main, &model));
            values = values.plus(&output.output.item);
        }
        Ok((values, accumulator.grads()))
    }
}

/// Sizes of `devices` parts of a batch of `len ≥ devices` samples, as even as they come.
fn split_sizes(len: usize, devices: usize) -> Vec<usize> {
    (0..devices).map(|i| len / devices + usize::from(i < len % devices)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_device_gets_a_part() {
        assert_eq!(super::split_sizes(4, 3), vec![2, 1, 1]);
        assert_eq!(super::split_sizes(5, 2), vec![3, 2]);
        assert_eq!(super::split_sizes(2, 2), vec![1, 1]);
    }
}
