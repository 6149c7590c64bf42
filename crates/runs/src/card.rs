//! What a run leaves on disk for its finished networks.
//!
//! A finished model is two files: `NAME.bpk` (Burn's burnpack record of the network alone) and
//! `NAME.yaml`, its [`ModelCard`]: what the network is, how its inputs were prepared and how
//! it was trained (with its per-epoch [`EpochLog`]), which is everything `export` and `infer`
//! need. The card is written last, so a model whose card exists is complete. (The state that
//! continues a model still in training lives in `relkd-train`'s checkpoints.)

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Device;
use relkd_core::files::write_atomic;
use relkd_core::transforms::Preprocessing;
use relkd_models::{Architecture, Network, NetworkConfig};
use serde::{Deserialize, Serialize};

use crate::losses::Terms;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Wraps an IO error with the path it concerns.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.into(), source }
}

/// A file that is there but not what it should be.
pub fn invalid(path: &Path, message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Invalid { path: path.into(), message: message.to_string() }
}

impl From<CheckpointError> for std::io::Error {
    fn from(err: CheckpointError) -> Self {
        std::io::Error::other(err.to_string())
    }
}

/// Mean loss terms and validation Dice of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Mean of each term that was on (unweighted).
    #[serde(flatten)]
    pub terms: Terms<f64>,
    pub total: f64,
    /// Mean 3D Dice over the validation cases (NaN without validation cases).
    pub val_dice: f64,
    /// L2 norm of each weighted term's gradient on the network's weights, on the epoch's first
    /// batch: which term drives the student (empty in cards that predate it).
    #[serde(default, skip_serializing_if = "Terms::is_empty")]
    pub grad_norms: Terms<f64>,
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
    save_card(weights, card)
}

/// Writes the card beside `weights`, which makes the model final.
pub fn save_card(weights: &Path, card: &ModelCard) -> Result<(), CheckpointError> {
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

pub fn save_record(path: &Path, record: ModuleRecord) -> Result<(), CheckpointError> {
    let bytes = record.into_bytes().map_err(|e| invalid(path, e))?;
    write_atomic(path, &bytes).map_err(io(path))
}

pub fn load_into<M: Module>(path: &Path, module: M) -> Result<M, CheckpointError> {
    if !path.exists() {
        return Err(CheckpointError::Io { path: path.into(), source: std::io::ErrorKind::NotFound.into() });
    }
    let record = ModuleRecord::load(path).map_err(|e| invalid(path, e))?;
    module.try_load_record(record).map_err(|e| invalid(path, format!("does not fit the network: {e}")))
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
