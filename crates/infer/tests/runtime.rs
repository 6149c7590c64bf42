//! ONNX Runtime found through the discovery path and run on the checked-in tiny model.

use std::path::{Path, PathBuf};

use ort::value::TensorRef;
use relkd_infer::runtime::{Provider, RuntimeError, find_library, runtime};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_conv.onnx")
}

/// The fixture's convolution (see tests/fixtures/make_tiny_model.py), computed by hand.
fn reference_conv(image: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
    let kernels =
        [[[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]], [[0.1, 0.2, 0.1], [0.2, 0.4, 0.2], [0.1, 0.2, 0.1]]];
    let bias = [0.5, -0.5];
    let mut out = Vec::new();
    for b in 0..n {
        for (k, kernel) in kernels.iter().enumerate() {
            for y in 0..h as isize {
                for x in 0..w as isize {
                    let mut acc = bias[k];
                    for (dy, row) in kernel.iter().enumerate() {
                        for (dx, weight) in row.iter().enumerate() {
                            let (yy, xx) = (y + dy as isize - 1, x + dx as isize - 1);
                            if (0..h as isize).contains(&yy) && (0..w as isize).contains(&xx) {
                                acc += weight * image[b * h * w + (yy as usize) * w + xx as usize];
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}

#[test]
fn tiny_model_runs_on_the_cpu_provider() {
    let rt = runtime().expect("ONNX Runtime should be provisioned by ci/setup-ort.sh");
    assert!(rt.library.ends_with("libonnxruntime.so.1.31.1"), "{}", rt.library.display());
    let (mut session, provider) = rt.session(&tiny_model(), Provider::Cpu, 1).unwrap();
    assert_eq!(provider, Provider::Cpu);
    assert_eq!(session.inputs()[0].name(), "image");
    assert_eq!(session.outputs()[0].name(), "logits");

    // Symbolic batch, height and width: a 2×1×4×5 input.
    let (n, h, w) = (2usize, 4usize, 5usize);
    let image: Vec<f32> = (0..n * h * w).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let input = TensorRef::from_array_view(([n, 1, h, w], &image[..])).unwrap();
    let outputs = session.run(ort::inputs!["image" => input]).unwrap();
    let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&shape[..], &[2, 2, 4, 5]);
    for (got, want) in logits.iter().zip(reference_conv(&image, n, h, w)) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}

#[test]
fn cuda_is_never_a_silent_cpu_fallback() {
    let rt = runtime().unwrap();
    match rt.session(&tiny_model(), Provider::Cuda, 1) {
        Ok((_, provider)) => assert_eq!(provider, Provider::Cuda),
        Err(err) => {
            assert!(matches!(err, RuntimeError::CudaUnavailable { .. }), "{err}");
            let msg = err.to_string();
            eprintln!("strict CUDA on this machine: {msg}");
            assert!(msg.contains("--provider cpu") && msg.contains("setup-ort.sh"), "{msg}");
            // Auto falls back, and says so through the provider it returns.
            let (_, provider) = rt.session(&tiny_model(), Provider::Auto, 1).unwrap();
            assert_eq!(provider, Provider::Cpu);
        }
    }
}

#[test]
fn missing_library_lists_every_path_tried() {
    let tried = vec![PathBuf::from("/nowhere/libonnxruntime.so"), PathBuf::from("/also/not/here.so")];
    let err = find_library(&tried).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nowhere/libonnxruntime.so") && msg.contains("/also/not/here.so"), "{msg}");
    assert!(msg.contains("ci/setup-ort.sh") && msg.contains("ORT_DYLIB_PATH"), "{msg}");
}
