//! The state that continues a model still in training: `checkpoints/NAME/` holds `last/` (the
//! trainee with its distillation modules, the optimiser's moments and the [`TrainState`]) and
//! `best.bpk`. `last/` is written beside itself and swapped in by renames, so an interrupted
//! write leaves the previous epoch's checkpoint intact. Finished models are
//! [`relkd_runs::card`]'s business.

use std::fs;
use std::path::PathBuf;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use relkd_core::files::Pending;
pub use relkd_runs::card::{CheckpointError, ModelCard, copy_model, fingerprint, load_model, save_card, save_model};
use relkd_runs::card::{invalid, io, load_into, save_record};

use crate::trainer::{Resume, TrainState, Trainee};

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
        let staging = Pending::beside(&last);
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
