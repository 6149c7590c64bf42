//! What a run leaves on disk for its networks.
//!
//! A finished model is two files: `NAME.bpk` (Burn's burnpack record of the network alone) and
//! `NAME.yaml`, its [`ModelCard`]: what the network is, how its inputs were prepared and how
//! it was trained, which is everything `export` and `infer` need. The card is written last,
//! so a model whose card exists is complete.
//!
//! While a model trains, `checkpoints/NAME/` holds the state to continue it: `last/` (the
//! trainee with its distillation modules, the optimiser's moments and the [`TrainState`]) and
//! `best.bpk`. `last/` is written beside itself and swapped in by renames, so an interrupted
//! write leaves the previous epoch's checkpoint intact.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use relkd_core::files::{partial_path, write_atomic};
use relkd_core::transforms::Preprocessing;
use relkd_models::{Architecture, Network, NetworkConfig};
use serde::{Deserialize, Serialize};

use crate::trainer::{EpochLog, Resume, TrainState, Trainee};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.into(), source }
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid { path: path.into(), message: message.to_string() }
}

impl From<CheckpointError> for std::io::Error {
    fn from(err: CheckpointError) -> Self {
        std::io::Error::other(err.to_string())
    }
}

/// Everything known about a trained network besides its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// `teacher`, `baseline` or `student`.
    pub model: String,
    pub architecture: Architecture,
    pub width: f64,
    pub in_channels: usize,
    pub classes: usize,
    pub preprocessing: Preprocessing,
    /// Learnable parameters of the network, as PyTorch counts them.
    pub live_params: usize,
    pub trained_sites: Vec<String>,
    pub target_site: String,
    /// The distillation terms it trained with (empty for teacher and baseline).
    pub distillation: Vec<String>,
    pub run_id: String,
    /// FNV-1a of the run's resolved configuration.
    pub config_hash: String,
    pub epochs: usize,
    pub best_epoch: Option<usize>,
    pub best_val_dice: Option<f64>,
    /// Loss terms and validation Dice per epoch.
    pub history: Vec<EpochLog>,
}

impl ModelCard {
    pub fn network_config(&self) -> NetworkConfig {
        NetworkConfig::new(self.architecture)
            .with_in_channels(self.in_channels)
            .with_classes(self.classes)
            .with_width(self.width)
    }

    /// The card of a network at the paper's width that was never trained (random weights),
    /// for measuring timing and storage; `model` says so where the card is shown.
    pub fn untrained(model: &str, architecture: Architecture, net: &Network, preprocessing: Preprocessing) -> Self {
        Self {
            model: model.into(),
            architecture,
            width: 1.0,
            in_channels: preprocessing.channels(),
            classes: 2,
            preprocessing,
            live_params: relkd_models::trainable_params(net),
            trained_sites: vec![],
            target_site: String::new(),
            distillation: vec![],
            run_id: "untrained".into(),
            config_hash: String::new(),
            epochs: 0,
            best_epoch: None,
            best_val_dice: None,
            history: vec![],
        }
    }

    /// The card beside a weights file: `NAME.bpk` → `NAME.yaml`.
    pub fn path_for(weights: &Path) -> PathBuf {
        weights.with_extension("yaml")
    }

    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        serde_yaml::from_str(&text).map_err(|e| invalid(path, format!("not a relkd model card: {e}")))
    }
}

/// Writes a finished network and its card (card last).
pub fn save_model(weights: &Path, net: &Network, card: &ModelCard) -> Result<(), CheckpointError> {
    save_record(weights, net.clone().into_record())?;
    let yaml = serde_yaml::to_string(card).expect("cards serialise");
    let card_path = ModelCard::path_for(weights);
    write_atomic(&card_path, yaml.as_bytes()).map_err(io(&card_path))
}

/// Reads a finished network: its card, then its weights into a network built from the card.
pub fn load_model(weights: &Path, device: &Device) -> Result<(Network, ModelCard), CheckpointError> {
    let card_path = ModelCard::path_for(weights);
    if !card_path.exists() {
        return Err(invalid(weights, format!("no model card {} beside the weights", card_path.display())));
    }
    let card = ModelCard::load(&card_path)?;
    let net = load_into(weights, card.network_config().init(device))?;
    Ok((net, card))
}

/// Copies a finished model (weights, then card) byte for byte.
pub fn copy_model(source: &Path, dest: &Path) -> Result<(), CheckpointError> {
    for (from, to) in
        [(source.to_path_buf(), dest.to_path_buf()), (ModelCard::path_for(source), ModelCard::path_for(dest))]
    {
        let bytes = fs::read(&from).map_err(io(&from))?;
        write_atomic(&to, &bytes).map_err(io(&to))?;
    }
    Ok(())
}

fn save_record(path: &Path, record: ModuleRecord) -> Result<(), CheckpointError> {
    let bytes = record.into_bytes().map_err(|e| invalid(path, e))?;
    write_atomic(path, &bytes).map_err(io(path))
}

fn load_into<M: Module>(path: &Path, module: M) -> Result<M, CheckpointError> {
    if !path.exists() {
        return Err(CheckpointError::Io { path: path.into(), source: std::io::ErrorKind::NotFound.into() });
    }
    let record = ModuleRecord::load(path).map_err(|e| invalid(path, e))?;
    module.try_load_record(record).map_err(|e| invalid(path, format!("does not fit the network: {e}")))
}

/// The checkpoints of one model in training: `checkpoints/NAME/`.
pub struct StageCheckpoints {
    dir: PathBuf,
}

impl StageCheckpoints {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn last(&self) -> PathBuf {
        self.dir.join("last")
    }

    fn best(&self) -> PathBuf {
        self.dir.join("best.bpk")
    }

    /// Saves the end of an epoch: the best weights first when they changed, then `last/`.
    pub fn save(
        &self,
        trainee: &Trainee,
        optimizer: &ModuleOptimizer,
        state: &TrainState,
        improved: bool,
    ) -> Result<(), CheckpointError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        if improved {
            save_record(&self.best(), trainee.clone().into_record())?;
        }
        let last = self.last();
        let staging = partial_path(&last);
        fs::create_dir(&staging).map_err(io(&staging))?;
        save_record(&staging.join("trainee.bpk"), trainee.clone().into_record())?;
        let opt = staging.join("optimizer.bpk");
        let bytes = optimizer.into_bytes().map_err(|e| invalid(&opt, e))?;
        fs::write(&opt, &bytes[..]).map_err(io(&opt))?;
        let state_path = staging.join("state.yaml");
        fs::write(&state_path, serde_yaml::to_string(state).expect("states serialise")).map_err(io(&state_path))?;
        // Swap: last → previous, staging → last, drop previous. A crash in between leaves
        // `previous`, which `load` falls back to.
        let previous = self.dir.join("previous");
        if last.exists() {
            let _ = fs::remove_dir_all(&previous);
            fs::rename(&last, &previous).map_err(io(&last))?;
        }
        fs::rename(&staging, &last).map_err(io(&last))?;
        let _ = fs::remove_dir_all(&previous);
        Ok(())
    }

    /// The saved state to continue from, if any: `trainee` is the freshly built trainee the
    /// weights are loaded into (its structure must match the one saved).
    pub fn load(&self, trainee: Trainee) -> Result<Option<(Trainee, Resume)>, CheckpointError> {
        let dir = [self.last(), self.dir.join("previous")].into_iter().find(|d| d.join("state.yaml").exists());
        let Some(dir) = dir else {
            return Ok(None);
        };
        let state_path = dir.join("state.yaml");
        let text = fs::read_to_string(&state_path).map_err(io(&state_path))?;
        let state: TrainState = serde_yaml::from_str(&text).map_err(|e| invalid(&state_path, e))?;
        let best = load_into(&self.best(), trainee.clone())?;
        let current = load_into(&dir.join("trainee.bpk"), trainee)?;
        let opt_path = dir.join("optimizer.bpk");
        let bytes = fs::read(&opt_path).map_err(io(&opt_path))?;
        let optimizer = burn::optim::AdamConfig::new()
            .init()
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(|e| invalid(&opt_path, e))?;
        Ok(Some((current, Resume { state, optimizer, best })))
    }

    /// Drops the training state once the model is final.
    pub fn remove(&self) -> Result<(), CheckpointError> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

/// FNV-1a, 64 bit: a stable fingerprint of configuration text (std's hasher may change
/// between Rust releases, and these fingerprints name folders on disk).
pub fn fingerprint(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint("foobar"), "85944171f73967e8");
    }
}
