//! `infer` refuses what it cannot do before it writes anything, blames the right thing and says
//! it once: labels off the volume's grid, channel counts the graph and metadata disagree on,
//! malformed metadata that `--size` overrides, ONNX Runtime's own errors. A run that fails or
//! is interrupted leaves the folder as it found it.

mod common;

use std::path::{Path, PathBuf};

use common::{infer, phantom, text, tiny_model};
use onnx_protobuf::{Message, ModelProto};
use relkd_core::nifti_io::{read_volume, write_volume};

/// The tiny model (one input channel in its graph) changed by `edit`, written as `dir/name`.
fn tiny_edited(dir: &Path, name: &str, edit: impl FnOnce(&mut ModelProto)) -> PathBuf {
    let mut model = ModelProto::parse_from_bytes(&std::fs::read(tiny_model()).unwrap()).unwrap();
    edit(&mut model);
    let path = dir.join(name);
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    path
}

/// The tiny model with `entries` as relkd metadata.
fn tiny_with_metadata(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
    tiny_edited(dir, name, |model| {
        for (key, value) in entries {
            let mut entry = onnx_protobuf::StringStringEntryProto::new();
            entry.key = key.to_string();
            entry.value = value.to_string();
            model.metadata_props.push(entry);
        }
    })
}

/// Every file and folder under `dir`, relative, sorted: what a failed run must leave unchanged.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A channel mismatch names where the context came from, and a file whose graph and metadata
/// disagree says so instead of blaming the user's flags.
#[test]
fn channel_mismatches_blame_what_disagrees() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let volume = site.join("Case00.nii.gz");
    let v = volume.to_str().unwrap();
    let contradicts =
        tiny_with_metadata(dir.path(), "contradicts.onnx", &[("relkd.input_size", "32"), ("relkd.in_channels", "3")]);
    let context_one =
        tiny_with_metadata(dir.path(), "context1.onnx", &[("relkd.input_size", "32"), ("relkd.context", "1")]);
    for (model, extra, expected) in [
        (&contradicts, &[][..], "its graph takes 1 input channel(s) but its metadata (relkd.in_channels) says 3"),
        (&context_one, &[][..], "but its metadata's relkd.context 1 makes 3"),
        (&context_one, &["--context", "2"][..], "but --context 2 makes 5"),
    ] {
        let mut args = vec!["--volume", v, "--model", model.to_str().unwrap(), "--provider", "cpu"];
        args.extend_from_slice(extra);
        let out = infer(dir.path(), &args);
        let log = text(&out);
        assert!(!out.status.success() && log.contains(expected), "{args:?}: {log}");
    }
}

/// A malformed `relkd.input_size` stops a run that relies on it, and `--size` overrides it, as
/// the help says.
#[test]
fn size_overrides_a_malformed_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let v = site.join("Case00.nii.gz");
    let model = tiny_with_metadata(dir.path(), "bad-size.onnx", &[("relkd.input_size", "thirty-two")]);
    let args = ["--volume", v.to_str().unwrap(), "--model", model.to_str().unwrap(), "--provider", "cpu"];
    let out = infer(dir.path(), &args);
    let log = text(&out);
    assert!(!out.status.success() && log.contains("'thirty-two' is not a number; give --size"), "{log}");
    let out = infer(dir.path(), &[&args[..], &["--size", "32"]].concat());
    assert!(out.status.success(), "{}", text(&out));
}

/// A label that is unreadable or on another grid (12 mm away) stops `infer` before it writes
/// anything: no mask, no probabilities, and a rerun with a good label is not refused.
#[test]
fn a_bad_label_is_refused_before_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let label = read_volume(&site.join("Case00_segmentation.nii.gz")).unwrap();
    let mut header = label.header.clone();
    header.srow_x[3] += 12.0;
    header.quatern_x += 12.0;
    let shifted = dir.path().join("shifted.nii.gz");
    write_volume(&shifted, &label.data, label.dims, &header).unwrap();
    let truncated = dir.path().join("truncated.nii.gz");
    std::fs::write(&truncated, b"not a label").unwrap();
    let (model, v) = (tiny_model(), site.join("Case00.nii.gz"));
    let (model, v) = (model.to_str().unwrap(), v.to_str().unwrap());
    let base = ["--volume", v, "--model", model, "--provider", "cpu", "--size", "32", "--out", "m.nii.gz"];
    let run = |extra: &[&str]| infer(dir.path(), &[&base[..], extra].concat());
    for (bad, expected) in [(&shifted, "affines differ by up to 12.0000 mm"), (&truncated, "truncated.nii.gz")] {
        let out = run(&["--probabilities", "p.nii.gz", "--label", bad.to_str().unwrap()]);
        let log = text(&out);
        assert!(!out.status.success() && log.contains(expected), "{log}");
        assert!(!log.contains("wrote"), "{log}");
        assert!(!dir.path().join("m.nii.gz").exists() && !dir.path().join("p.nii.gz").exists());
    }
    // An output folder nothing can be written in (/proc, even for root): refused before the mask.
    if Path::new("/proc").is_dir() {
        let out = run(&["--probabilities", "/proc/p.nii.gz"]);
        let log = text(&out);
        assert!(!out.status.success() && log.contains("--probabilities: cannot write in /proc"), "{log}");
        assert!(!dir.path().join("m.nii.gz").exists(), "{log}");
    }
    let good = site.join("Case00_segmentation.nii.gz");
    let out = run(&["--label", good.to_str().unwrap()]);
    assert!(out.status.success() && text(&out).contains("Dice"), "{}", text(&out));
}

/// Every failure of a single-volume run leaves the folder exactly as it was, whether it is
/// caught before the first write (labels that are missing, truncated, 2D, NaN, of another
/// shape or on another grid; an output folder nothing can be written in) or after outputs were
/// written (an overlay that cannot be saved), which are then removed.
#[test]
fn a_failed_run_leaves_the_folder_as_it_found_it() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let label = read_volume(&site.join("Case00_segmentation.nii.gz")).unwrap();
    let [nx, ny, nz] = label.dims;
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let label_with = |name: &str, data: &[f32], dims: [usize; 3], shift: f32| {
        let mut header = label.header.clone();
        header.srow_x[3] += shift;
        header.quatern_x += shift;
        let path = bad.join(name);
        write_volume(&path, data, dims, &header).unwrap();
        path
    };
    let mut nan = label.data.clone();
    nan[7] = f32::NAN;
    let flat = label_with("flat.nii", &label.data[..nx * ny], [nx, ny, 1], 0.0);
    let mut bytes = std::fs::read(&flat).unwrap();
    bytes[40..42].copy_from_slice(&2i16.to_le_bytes()); // dim[0] = 2: a 2D image
    std::fs::write(&flat, bytes).unwrap();
    let truncated = bad.join("truncated.nii.gz");
    std::fs::write(&truncated, b"not a label").unwrap();
    let labels = [
        bad.join("missing.nii.gz"),
        truncated,
        flat,
        label_with("nan.nii.gz", &nan, label.dims, 0.0),
        label_with("shape.nii.gz", &label.data[..nx * ny * (nz - 1)], [nx, ny, nz - 1], 0.0),
        label_with("shifted.nii.gz", &label.data, label.dims, 12.0),
    ];
    // An overlay folder where each slice's PNG name is taken by a folder: found only when
    // saving, after the mask and the probabilities are written.
    let blocked = dir.path().join("blocked");
    for z in 0..nz {
        std::fs::create_dir_all(blocked.join(format!("Case00_z{z:03}.png"))).unwrap();
    }
    let good_label = site.join("Case00_segmentation.nii.gz");
    let (model, v) = (tiny_model(), site.join("Case00.nii.gz"));
    let (model, v) = (model.to_str().unwrap(), v.to_str().unwrap());
    let base = ["--volume", v, "--model", model, "--provider", "cpu", "--size", "32", "--out", "m.nii.gz"];
    let mut failures: Vec<Vec<&str>> =
        labels.iter().map(|l| vec!["--probabilities", "p.nii.gz", "--label", l.to_str().unwrap()]).collect();
    failures.push(vec!["--probabilities", "/proc/p.nii.gz"]);
    failures.push(vec!["--overlay", "/proc/overlays"]);
    failures.push(vec!["--probabilities", "p.nii.gz", "--label", good_label.to_str().unwrap(), "--overlay", "blocked"]);
    for extra in failures {
        let before = listing(dir.path());
        let out = infer(dir.path(), &[&base[..], &extra].concat());
        let log = text(&out);
        assert!(!out.status.success(), "{extra:?} succeeded: {log}");
        assert_eq!(listing(dir.path()), before, "{extra:?} changed the folder: {log}");
    }
}

/// ONNX Runtime's error reaches the user once, in infer's message, with no terminal escape
/// codes; `-v` shows ONNX Runtime's own log line as well, in plain text.
#[test]
fn onnx_runtimes_error_is_printed_once_and_plainly() {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;
    use onnx_protobuf::type_proto::Value;

    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    // The channel axis made symbolic, so only ONNX Runtime's Conv finds that 3 channels (one
    // context slice each side) do not fit its one-channel kernel.
    let model = tiny_edited(dir.path(), "any-channels.onnx", |model| {
        let input = &mut model.graph.as_mut().unwrap().input[0];
        let Some(Value::TensorType(tensor)) = &mut input.type_.as_mut().unwrap().value else {
            panic!("a tensor input")
        };
        tensor.shape.as_mut().unwrap().dim[1].value = Some(Dim::DimParam("C".into()));
    });
    let v = site.join("Case00.nii.gz");
    let args = ["--volume", v.to_str().unwrap(), "--model", model.to_str().unwrap(), "--provider", "cpu"];
    let args = [&args[..], &["--size", "32", "--context", "1"]].concat();
    let cause = "Input channels C is not equal to kernel channels * group";
    let out = infer(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
    assert!(stderr.contains("error:") && !stderr.contains('\x1b'), "{stderr:?}");
    let out = infer(dir.path(), &[&args[..], &["-v"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("onnxruntime error:") && stderr.matches(cause).count() == 2, "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// SIGINT or SIGTERM while infer writes: the process ends by that signal and neither its
/// temporary nor any output of the run is left.
#[cfg(unix)]
#[test]
fn an_interrupted_run_leaves_the_folder_as_it_found_it() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    // A volume large enough that writing its float32 probabilities takes a while.
    let dims = [256, 256, 96];
    let data: Vec<f32> = (0..dims.iter().product::<usize>()).map(|i| ((i * 7919) % 1000) as f32).collect();
    let reference = read_volume(&phantom(dir.path()).join("Case00.nii.gz")).unwrap().header;
    let volume = dir.path().join("big.nii.gz");
    write_volume(&volume, &data, dims, &reference).unwrap();
    for (signal, name) in [(libc_signal::SIGINT, "SIGINT"), (libc_signal::SIGTERM, "SIGTERM")] {
        let before = listing(dir.path());
        let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
            .args(["--volume", "big.nii.gz", "--model", tiny_model().to_str().unwrap(), "--provider", "cpu"])
            .args(["--size", "32", "--probabilities", "big_prob.nii.gz"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Signal as soon as a temporary appears, while it is being written.
        let started = std::time::Instant::now();
        while !listing(dir.path()).iter().any(|n| n.contains(".relkd-partial")) {
            assert!(child.try_wait().unwrap().is_none(), "{name}: infer finished before a temporary was seen");
            assert!(started.elapsed().as_secs() < 60, "{name}: no temporary within 60 s");
        }
        let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(signal), "{name}: {status:?}");
        assert_eq!(listing(dir.path()), before, "{name} left files behind");
    }
}

/// Signal numbers, the same on every Linux architecture relkd builds for.
#[cfg(unix)]
mod libc_signal {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}
