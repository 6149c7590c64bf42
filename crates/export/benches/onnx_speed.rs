//! How fast ONNX Runtime runs the graphs relkd emits (issue #5, item 6), and how large they
//! are: each network at paper width (random weights: timing does not depend on their values),
//! CPU provider, 2 intra-op threads, one 1×1×384×384 slice, median of repeated runs after a
//! warm-up.
//!
//!     cargo bench -p relkd-export --bench onnx_speed [-- RUNS]

use burn::tensor::Device;
use onnx_protobuf::Message;
use ort::value::TensorRef;
use relkd_core::timing::time_runs;
use relkd_core::transforms::Preprocessing;
use relkd_export::{Outputs, Precision, to_onnx};
use relkd_infer::runtime::{Provider, runtime};
use relkd_models::{Architecture, NetworkConfig};
use relkd_runs::card::ModelCard;

fn main() {
    let runs: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(20);
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("relkd-onnx-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = runtime().expect("ONNX Runtime (bash ci/setup-ort.sh)");
    println!("ONNX Runtime CPU, 2 threads, 1×1×384×384, {runs} runs after 3 warm-ups");
    println!(
        "{:<11} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "model", "live params", "file MB", "median ms", "p95 ms", "min ms"
    );
    let image: Vec<f32> = (0..384 * 384).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    for architecture in Architecture::ALL {
        let net = NetworkConfig::new(architecture).init(&device);
        let card = ModelCard::untrained("benchmark", architecture, &net, Preprocessing { size: 384, context: 0 });
        let path = dir.join(format!("{}.onnx", architecture.name()));
        let bytes = to_onnx(&net, &card, Precision::F32, 17, Outputs::Logits).write_to_bytes().unwrap();
        std::fs::write(&path, &bytes).unwrap();
        drop(net);
        let (mut session, _) = rt.session(&path, Provider::Cpu, 2).unwrap();
        let mut run = || {
            let input = TensorRef::from_array_view(([1usize, 1, 384, 384], &image[..])).unwrap();
            let outputs = session.run(ort::inputs!["image" => input]).unwrap();
            let _ = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        };
        let slow = architecture == Architecture::Unetpp || architecture == Architecture::Deeplabv3plus;
        let t = time_runs(3, if slow { runs.min(10) } else { runs }, &mut run);
        println!(
            "{:<11} {:>12} {:>10.2} {:>10.3} {:>10.1} {:>10.1} {:>10.1}",
            architecture.display_name(),
            card.live_params,
            bytes.len() as f64 / 1e6,
            bytes.len() as f64 / (4.0 * card.live_params as f64),
            t.median_ms(),
            t.percentile_ms(95.0),
            t.min_ms()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
