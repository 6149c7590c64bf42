//! Writes the five networks at the paper's width (random weights) as ONNX files, for timing
//! and storage: `infer bench` reads them to build the efficiency table. Each file goes through
//! the same verification as `export` (random inputs at 384×384). The students are also written
//! in int8 (`NAME-int8.onnx`).
//!
//!     cargo run --release -p relkd-export --example paper_models -- OUT_DIR

use burn::tensor::Device;
use relkd_core::transforms::Preprocessing;
use relkd_export::{Acceptance, Int8Options, Options, Probe, export, export_int8, speed};
use relkd_models::{Architecture, NetworkConfig, Role};
use relkd_runs::card::ModelCard;

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "paper-models".into()));
    std::fs::create_dir_all(&out)?;
    let device = Device::flex();
    device.seed(0);
    for architecture in Architecture::ALL {
        let net = NetworkConfig::new(architecture).init(&device);
        let card = ModelCard::untrained(
            &format!("{} (random weights)", architecture.role()),
            architecture,
            &net,
            Preprocessing { size: 384, context: 0 },
        );
        let path = out.join(format!("{}.onnx", architecture.name()));
        let probe = Probe::random([1, 1, 384, 384], &device);
        let checks = export(&net, &card, &path, &Options::fp32(), &[probe], &device)?;
        println!(
            "{:<28} {:>8.2} MB  max |ONNX Runtime − Burn| {:.1e}",
            path.display(),
            std::fs::metadata(&path)?.len() as f64 / 1e6,
            checks[0].max_abs_diff
        );
        if architecture.role() == Role::Student {
            // Calibrated on normal noise, as z-scored slices roughly are. With random weights
            // the logits have no margins, so the predictions' agreement is only reported: these
            // files are for time and size (`export --int8` holds a trained model to 2%).
            let calibration: Vec<Probe> = (0..4).map(|_| Probe::random([2, 1, 384, 384], &device)).collect();
            // The faster int8 form on this CPU, as `export --int8` chooses.
            let options = Int8Options {
                opset: 17,
                calibration: &calibration,
                acceptance: Acceptance::Masks(1.0),
                activations: None,
            };
            let path = out.join(format!("{}-int8.onnx", architecture.name()));
            let probe = Probe::random([1, 1, 384, 384], &device);
            let written = export_int8(&net, &card, &path, &options, &[probe], &device)?;
            let checks = written.checks;
            println!(
                "{:<28} {:>8.2} MB  predicted classes differ from Burn's at {:.1}% of pixels (random weights)",
                path.display(),
                std::fs::metadata(&path)?.len() as f64 / 1e6,
                100.0 * checks[0].mask_disagreement as f64 / (384.0 * 384.0)
            );
            println!("  {}", speed::describe(written.activations, written.timing.as_ref()));
        }
    }
    Ok(())
}
