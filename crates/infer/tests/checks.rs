//! `infer` refuses what it cannot do before it writes anything, and blames the right thing:
//! labels off the volume's grid, channel counts the graph and metadata disagree on, malformed
//! metadata that `--size` overrides.

mod common;

use std::path::{Path, PathBuf};

use common::{infer, phantom, text, tiny_model};
use relkd_core::nifti_io::read_volume;

/// The tiny model (one input channel in its graph) with `entries` as relkd metadata.
fn tiny_with_metadata(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
    use onnx_protobuf::{Message, ModelProto, StringStringEntryProto};

    let mut model = ModelProto::parse_from_bytes(&std::fs::read(tiny_model()).unwrap()).unwrap();
    for (key, value) in entries {
        let mut entry = StringStringEntryProto::new();
        entry.key = key.to_string();
        entry.value = value.to_string();
        model.metadata_props.push(entry);
    }
    let path = dir.join(name);
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    path
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
    use relkd_core::nifti_io::write_volume;

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
