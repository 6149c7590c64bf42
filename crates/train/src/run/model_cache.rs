//! When a trained model is reused: the cache keeps teachers, and the grids' baselines, by a
//! fingerprint of everything that decides what they learn; a teacher given with
//! `--teacher-checkpoint` must be the architecture, width and input the run asks for.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use burn::tensor::Device;
use serde::Serialize;

use super::stage::{RunModel, Runtime, Stage, write_metrics};
use crate::checkpoint::{ModelCard, copy_model, fingerprint, load_model, save_card};
use crate::config::{ExperimentConfig, ModelSpec, TeacherRuntime};
use crate::trainer::TraineeConfig;
use relkd_core::files::write_atomic;
use relkd_runs::data::{Cases, cache_dir};

impl Stage<'_> {
    /// Puts a trained teacher at `STEM.bpk` in the run folder: kept when already there, else
    /// the one `given`, else the cached teacher trained with the same data, sites and
    /// settings, else a new one (which is then cached). Says how it was obtained.
    pub fn teacher(&self, stem: &str, root: &Path, cases: &Cases, given: Option<&Path>) -> anyhow::Result<String> {
        let config = self.config;
        let (Some(spec), Some(network)) = (config.teacher.network(), config.teacher_network()) else {
            bail!("the teacher {} is an ONNX file, used as it is: relkd trains none", config.teacher.display_name());
        };
        let weights = self.run_dir.join(format!("{stem}.bpk"));
        let cached = cache_dir()
            .join("teachers")
            .join(cache_key(config, root, self.devices.runtime, RunModel::Teacher, spec))
            .join("teacher.bpk");
        if ModelCard::path_for(&weights).exists() {
            println!("{stem}: done earlier in this run");
            return Ok("(from this run)".to_string());
        }
        if let Some(path) = given {
            adopt_teacher(path, &weights, config, &self.devices.main)?;
            return Ok(format!("(given: {})", path.display()));
        }
        if ModelCard::path_for(&cached).exists() {
            adopt_teacher(&cached, &weights, config, &self.devices.main)?;
            println!("{stem}: reusing {} (same data, sites and settings)", cached.display());
            return Ok("(reused from the cache)".to_string());
        }
        self.train(stem, RunModel::Teacher, &TraineeConfig::plain(network), cases, None)?;
        if let Some(dir) = cached.parent() {
            fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
        copy_model(&weights, &cached)?;
        Ok("(trained)".to_string())
    }

    /// Puts the baseline at `STEM.bpk` in the run folder: kept when already there, else the
    /// cached baseline trained on the same students' data with the same settings (a baseline
    /// does not depend on the teacher, so cross, LOSO and teacher-side variants of a grid share
    /// it), else a new one, then cached. An adopted baseline's card takes this run's id and
    /// configuration hash; its epochs go into this run's metrics.csv.
    pub fn baseline(&self, stem: &str, trainee: &TraineeConfig, root: &Path, cases: &Cases) -> anyhow::Result<()> {
        let weights = self.run_dir.join(format!("{stem}.bpk"));
        let key = cache_key(self.config, root, self.devices.runtime, RunModel::Baseline, &self.config.student);
        let cached = cache_dir().join("baselines").join(key).join("baseline.bpk");
        let card_path = ModelCard::path_for(&weights);
        if !card_path.exists() && ModelCard::path_for(&cached).exists() {
            let mut card = ModelCard::load(&ModelCard::path_for(&cached))?;
            card.run_id = self.run_id.to_string();
            card.config_hash = self.config_hash.to_string();
            let bytes = fs::read(&cached).with_context(|| format!("{}", cached.display()))?;
            write_atomic(&weights, &bytes).with_context(|| format!("{}", weights.display()))?;
            write_metrics(self.run_dir, stem, &card.history)?;
            save_card(&weights, &card)?;
            println!("{stem}: reusing {} (same students' data and settings)", cached.display());
            return Ok(());
        }
        let trained_now = !card_path.exists();
        self.train(stem, RunModel::Baseline, trainee, cases, None)?;
        if trained_now {
            if let Some(dir) = cached.parent() {
                fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            }
            copy_model(&weights, &cached)?;
        }
        Ok(())
    }
}

/// The training arithmetic's revision, part of the cache key: bump it whenever a code change
/// moves what a seed trains (an op's summation order, a kernel), so that teachers trained by
/// earlier code are retrained rather than mixed with this code's students. 2: relkd's own CPU
/// convolution, batch norm and PReLU (issue #16), DeepLabV3+'s separable units included. 3: the
/// bilinear resize as plain 2D products (issue #30), which moves UNet++'s and DeepLabV3+'s. 4: a
/// teacher's or baseline's per-epoch gradient norm read from its first step's own gradients
/// (issue #32): the extra forward pass it replaces updated the batch norms' running statistics
/// (and drew dropout masks) before that step, so every network's training moves. 5: gemm's
/// AVX-512 kernels where the CPU has them (issue #32), which round the convolutions' and matrix
/// products' sums differently from the AVX2 ones. 6: the affinity loss's softmax, clamp and log
/// and LM's and Hinton's divergences computed per pixel on flex (issue #32), which round a
/// distilled student's gradients differently (teachers and baselines train as with 5).
const TRAINING_NUMERICS: u32 = 6;

/// Everything that decides what a model learns; equal keys mean an interchangeable model. The
/// field names are those of the teachers' key before baselines were cached (`teacher` for the
/// model), so cached teachers keep their fingerprints.
#[derive(Serialize)]
struct Key<'a> {
    numerics: u32,
    /// Absent for flex: its keys keep the form they had before other runtimes.
    #[serde(skip_serializing_if = "Runtime::is_flex")]
    runtime: Runtime,
    data: String,
    sites: &'a [String],
    split_seed: u64,
    test_fraction: f32,
    val_fraction: f32,
    preprocessing: &'a relkd_core::transforms::Preprocessing,
    foreground_only: bool,
    augmentation: relkd_core::transforms::Augmentation,
    #[serde(rename = "teacher")]
    model: &'a crate::config::ModelSpec,
    training: crate::config::TrainingConfig,
    segmentation: &'a crate::losses::segmentation::SegmentationLoss,
    eval_sites: &'a [String],
}

/// The cache key of the run's teacher network `spec`, or of its baseline `spec`: the students'
/// sites, augmentation, network, training and runtime, not the teacher, its sites or its epochs.
fn cache_key(config: &ExperimentConfig, root: &Path, runtime: Runtime, model: RunModel, spec: &ModelSpec) -> String {
    let key = key_text(config, root, runtime, model, spec);
    format!("{}-{}", spec.architecture.name(), fingerprint(&key))
}

/// The key's fields as YAML, the text `cache_key` fingerprints.
fn key_text(config: &ExperimentConfig, root: &Path, runtime: Runtime, model: RunModel, spec: &ModelSpec) -> String {
    let plan = config.sites.as_ref().expect("planned");
    let (sites, augmentation, training) = match model {
        RunModel::Teacher => (&plan.teacher_sites, config.teacher_augmentation(), config.training),
        RunModel::Baseline | RunModel::Student => {
            let training = crate::config::TrainingConfig { teacher_epochs: None, ..config.training };
            (&plan.student_sites, config.augmentation, training)
        }
    };
    let key = Key {
        numerics: TRAINING_NUMERICS,
        runtime,
        data: data_identity(config, root),
        sites,
        split_seed: config.split_seed,
        test_fraction: config.test_fraction,
        val_fraction: config.val_fraction,
        preprocessing: &config.preprocessing,
        foreground_only: config.foreground_only,
        augmentation,
        model: &ModelSpec { runtime: TeacherRuntime::Auto, ..*spec },
        training,
        segmentation: &config.losses.segmentation,
        eval_sites: &plan.eval_sites,
    };
    serde_yaml::to_string(&key).expect("serialises")
}

/// The dataset a model learns from: its folder, or the phantom's manifest.
fn data_identity(config: &ExperimentConfig, root: &Path) -> String {
    match &config.data.root {
        Some(_) => root.display().to_string(),
        None => config.data.phantom.manifest(),
    }
}

/// Checks that a trained teacher's card describes the teacher this run asks for.
pub(super) fn check_teacher(source: &Path, config: &ExperimentConfig) -> anyhow::Result<()> {
    let card_path = ModelCard::path_for(source);
    let card = ModelCard::load(&card_path)
        .with_context(|| format!("teacher checkpoint {}: its model card", source.display()))?;
    let Some(want) = config.teacher.network() else {
        bail!(
            "--teacher-checkpoint {} is one of relkd's teachers, but this run's teacher is the ONNX file {}",
            source.display(),
            config.teacher.display_name()
        );
    };
    ensure!(
        card.architecture == want.architecture,
        "teacher checkpoint {} is a {} (see {}), but this run's teacher is a {}",
        source.display(),
        card.architecture.display_name(),
        card_path.display(),
        want.architecture.display_name()
    );
    ensure!(
        card.width == want.width && card.preprocessing == config.preprocessing,
        "teacher checkpoint {} has width {} and input {:?}; this run needs width {} and {:?}",
        source.display(),
        card.width,
        card.preprocessing,
        want.width,
        config.preprocessing
    );
    Ok(())
}

/// Copies a trained teacher into the run, byte for byte, after checking that it is the
/// teacher asked for and that its weights load.
fn adopt_teacher(source: &Path, weights: &Path, config: &ExperimentConfig, device: &Device) -> anyhow::Result<()> {
    check_teacher(source, config)?;
    load_model(source, device).with_context(|| format!("teacher checkpoint {}", source.display()))?;
    Ok(copy_model(source, weights)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relkd_runs::protocol::SitePlan;

    fn tiny_config() -> ExperimentConfig {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/tiny-run.yaml"));
        let mut config = ExperimentConfig::load(path).unwrap();
        let sites = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        config.sites = Some(SitePlan {
            teacher_sites: sites(&["HCRUDB"]),
            student_sites: sites(&["RUNMC", "BMC"]),
            eval_sites: sites(&["HCRUDB"]),
        });
        config
    }

    /// A model trained by another runtime is another model (they agree to the last bits, which
    /// training amplifies), and flex's key has the form it had before runtimes were in it.
    #[test]
    fn each_runtime_caches_its_own_models_and_flex_keys_keep_their_form() {
        let config = tiny_config();
        let spec = config.teacher.network().unwrap();
        let key = |runtime, model| cache_key(&config, Path::new("data"), runtime, model, spec);
        for model in [RunModel::Teacher, RunModel::Baseline] {
            let keys = [Runtime::Flex, Runtime::CubeclCpu, Runtime::Cuda].map(|r| key(r, model));
            assert!(keys.iter().all(|k| k.starts_with("unetpp-")), "{keys:?}");
            assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2], "{keys:?}");
        }
        let flex = key_text(&config, Path::new("data"), Runtime::Flex, RunModel::Teacher, spec);
        let cuda = key_text(&config, Path::new("data"), Runtime::Cuda, RunModel::Teacher, spec);
        assert!(!flex.contains("runtime") && flex.starts_with("numerics: "), "{flex}");
        assert_eq!(cuda.replacen("runtime: cuda\n", "", 1), flex);
    }
}
