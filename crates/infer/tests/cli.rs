//! `infer` on phantom volumes with the checked-in tiny model, whose output the tests
//! recompute by hand: masks on the source grid, metrics, folders, and bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::{infer, phantom, text, tiny_model};

use relkd_core::metrics::dice;
use relkd_core::nifti_io::read_volume;
use relkd_core::transforms::{binarize, zscore};

/// The tiny model's mask, computed by hand: background logit 0.5 − x, foreground logit
/// (3×3 binomial blur of x) − 0.5, zero padding, on the z-scored volume; the network runs at
/// the source size, so no resize is involved.
fn expected_mask(data: &[f32], [nx, ny, nz]: [usize; 3]) -> Vec<u8> {
    let mut x = data.to_vec();
    zscore(&mut x);
    let k = [[0.1, 0.2, 0.1], [0.2, 0.4, 0.2], [0.1, 0.2, 0.1]];
    let mut mask = Vec::with_capacity(x.len());
    for z in 0..nz {
        for y in 0..ny as isize {
            for xx in 0..nx as isize {
                let mut blur = 0.0f32;
                for (dy, row) in k.iter().enumerate() {
                    for (dx, w) in row.iter().enumerate() {
                        let (yy, xi) = (y + dy as isize - 1, xx + dx as isize - 1);
                        if (0..ny as isize).contains(&yy) && (0..nx as isize).contains(&xi) {
                            blur += w * x[z * nx * ny + yy as usize * nx + xi as usize];
                        }
                    }
                }
                let v = x[z * nx * ny + y as usize * nx + xx as usize];
                mask.push((blur - 0.5 > 0.5 - v) as u8);
            }
        }
    }
    mask
}

#[test]
fn the_tiny_model_segments_a_volume_on_its_own_grid() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let volume = site.join("Case00.nii.gz");
    let label = site.join("Case00_segmentation.nii.gz");
    let model = tiny_model();
    let (v, l, m) = (volume.to_str().unwrap(), label.to_str().unwrap(), model.to_str().unwrap());
    let out = infer(
        dir.path(),
        &[
            "--volume",
            v,
            "--model",
            m,
            "--provider",
            "cpu",
            "--size",
            "32",
            "--label",
            l,
            "--probabilities",
            "p.nii.gz",
            "--overlay",
            "png",
        ],
    );
    let log = text(&out);
    assert!(out.status.success(), "{log}");

    let source = read_volume(&volume).unwrap();
    let mask = read_volume(&site.join("Case00_mask.nii.gz")).unwrap();
    assert_eq!(mask.dims, source.dims);
    assert_eq!(mask.affine, source.affine);
    assert_eq!(mask.header.datatype, 2, "uint8");
    let got: Vec<u8> = mask.data.iter().map(|&v| v as u8).collect();
    let expected = expected_mask(&source.data, source.dims);
    let mismatches = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert!(mismatches * 1000 <= got.len(), "{mismatches} of {} voxels differ from the hand computation", got.len());
    // The printed Dice is the Dice of the written mask against the label.
    let truth = binarize(&read_volume(&label).unwrap().data);
    let d = dice(&got, &truth);
    assert!(log.contains(&format!("Dice {d:.4}")), "expected Dice {d:.4} in\n{log}");
    let p = read_volume(&dir.path().join("p.nii.gz")).unwrap();
    assert_eq!(p.dims, source.dims);
    assert!(p.data.iter().zip(&got).all(|(&p, &m)| (p > 0.5) == (m == 1) || (p - 0.5).abs() < 1e-4));
    assert!(std::fs::read_dir(dir.path().join("png")).unwrap().count() > 0);

    // A second run does not overwrite the mask unasked.
    let again = infer(dir.path(), &["--volume", v, "--model", m, "--provider", "cpu", "--size", "32"]);
    assert!(!again.status.success() && text(&again).contains("--force"), "{}", text(&again));
}

#[test]
fn a_folder_is_segmented_case_by_case_with_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let model = tiny_model();
    let out = infer(
        dir.path(),
        &["--volume", site.to_str().unwrap(), "--model", model.to_str().unwrap(), "--provider", "cpu", "--size", "32"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let masks = site.with_file_name("RUNMC_masks");
    let csv = std::fs::read_to_string(masks.join("cases.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    for (line, case) in lines[1..].iter().zip(["Case00", "Case01"]) {
        assert!(line.starts_with(case), "{line}");
        let dice: f64 = line.split(',').nth(4).unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&dice), "{line}");
        assert!(masks.join(format!("{case}_mask.nii.gz")).is_file());
    }

    // Rerun after deleting cases.csv: refused whole, before anything is written, and the masks
    // are kept.
    std::fs::remove_file(masks.join("cases.csv")).unwrap();
    let before = std::fs::read(masks.join("Case00_mask.nii.gz")).unwrap();
    let again = infer(
        dir.path(),
        &["--volume", site.to_str().unwrap(), "--model", model.to_str().unwrap(), "--provider", "cpu", "--size", "32"],
    );
    assert!(!again.status.success() && text(&again).contains("already holds 2 of these masks"), "{}", text(&again));
    assert!(!masks.join("cases.csv").exists());
    assert_eq!(std::fs::read(masks.join("Case00_mask.nii.gz")).unwrap(), before);

    // A volume that cannot be read: the others are segmented, the failure has its row in
    // cases.csv with the error, and the message names the file once.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(site.join("Case00.nii.gz"), mixed.join("Case00.nii.gz")).unwrap();
    std::fs::write(mixed.join("Case09.nii.gz"), b"not a volume").unwrap();
    let model = model.to_str().unwrap();
    let o = infer(
        dir.path(),
        &["--volume", mixed.to_str().unwrap(), "--model", model, "--provider", "cpu", "--size", "32"],
    );
    let log = text(&o);
    assert!(!o.status.success() && log.contains("1 volume(s) failed"), "{log}");
    let failure = log.lines().find(|l| l.contains("Case09.nii.gz")).unwrap();
    assert_eq!(failure.matches("Case09.nii.gz").count(), 1, "{log}");
    let csv = std::fs::read_to_string(dir.path().join("mixed_masks/cases.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].ends_with(",error") && rows[1].starts_with("Case00.nii.gz,") && rows[1].ends_with(','), "{csv}");
    assert!(rows[2].starts_with("Case09.nii.gz,,,,,,,\"") && rows[2].len() > 30, "{csv}");
}

/// A constant volume is segmented with a warning; `--model` naming a folder, `--batch 0`,
/// `--size 0`, an absurd `--threads` and a missing label are clear errors, an OS error printed
/// once.
#[test]
fn odd_inputs_are_named_plainly() {
    use relkd_core::nifti_io::write_volume;

    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let volume = read_volume(&site.join("Case00.nii.gz")).unwrap();
    let flat = dir.path().join("flat.nii.gz");
    write_volume(&flat, &vec![7f32; volume.data.len()], volume.dims, &volume.header).unwrap();
    let model = tiny_model();
    let (f, m) = (flat.to_str().unwrap(), model.to_str().unwrap());
    let out = infer(dir.path(), &["--volume", f, "--model", m, "--provider", "cpu", "--size", "32"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is constant (7)"), "{}", text(&out));

    let folder = dir.path().to_str().unwrap();
    for (args, expected) in [
        (vec!["--volume", f, "--model", folder, "--provider", "cpu", "--force"], "is a folder; give the .onnx file"),
        (vec!["--volume", f, "--model", m, "--provider", "cpu", "--size", "32", "--batch", "0"], "--batch"),
        // Refused before ONNX Runtime sees them (a size of 0 failed inside it; 100000 threads
        // grew memory for minutes).
        (vec!["--volume", f, "--model", m, "--provider", "cpu", "--size", "0"], "--size"),
        (vec!["--volume", f, "--model", m, "--provider", "cpu", "--threads", "100000"], "use at most"),
        (vec!["bench", "--models", m, "--threads", "100000"], "use at most"),
        (vec!["bench", "--models", m, "--size", "0"], "--size"),
        (
            vec!["--volume", f, "--model", m, "--provider", "cpu", "--size", "32", "--out", "mask.txt"],
            "name the file .nii.gz",
        ),
        (
            vec![
                "--volume",
                f,
                "--model",
                m,
                "--provider",
                "cpu",
                "--size",
                "32",
                "--force",
                "--probabilities",
                "p.raw",
            ],
            "--probabilities p.raw: volumes are written as NIfTI",
        ),
    ] {
        let started = std::time::Instant::now();
        let out = infer(dir.path(), &args);
        assert!(!out.status.success() && text(&out).contains(expected), "{args:?}: {}", text(&out));
        assert!(started.elapsed().as_secs() < 10, "{args:?} took {:?}", started.elapsed());
    }
    let out = infer(
        dir.path(),
        &["--volume", f, "--model", m, "--provider", "cpu", "--size", "32", "--force", "--label", "nosuch.nii.gz"],
    );
    let log = text(&out);
    assert!(!out.status.success() && log.contains("nosuch.nii.gz"), "{log}");
    assert_eq!(log.matches("(os error 2)").count(), 1, "{log}");
}

/// A NIfTI-1 file with the given dims (float32), written by hand.
fn raw_nifti(path: &Path, dims: &[i16]) {
    let mut h = vec![0u8; 352];
    let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
    put(&mut h, 0, &348i32.to_le_bytes());
    put(&mut h, 40, &(dims.len() as i16).to_le_bytes());
    for i in 0..7 {
        put(&mut h, 42 + 2 * i, &dims.get(i).copied().unwrap_or(1).to_le_bytes());
    }
    put(&mut h, 70, &16i16.to_le_bytes());
    put(&mut h, 72, &32i16.to_le_bytes());
    for i in 0..8 {
        put(&mut h, 76 + 4 * i, &1f32.to_le_bytes());
    }
    put(&mut h, 108, &352f32.to_le_bytes());
    put(&mut h, 344, b"n+1\0");
    let voxels: usize = dims.iter().map(|&d| d as usize).product();
    h.extend((0..voxels).flat_map(|i| (i as f32).to_le_bytes()));
    std::fs::write(path, h).unwrap();
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let volume = site.join("Case00.nii.gz");
    let v = volume.to_str().unwrap();
    let model = tiny_model();
    let m = model.to_str().unwrap();
    std::fs::write(dir.path().join("corrupt.nii.gz"), b"not a nifti file at all").unwrap();
    raw_nifti(&dir.path().join("flat.nii"), &[8, 8]);
    raw_nifti(&dir.path().join("series.nii"), &[8, 8, 4, 3]);
    // The data loss of issue #15: --probabilities naming the input, even with --force; and the
    // probabilities over the mask.
    let (volume_bytes, model_bytes) = (std::fs::read(&volume).unwrap(), std::fs::read(&model).unwrap());
    for (extra, expected) in [
        (&["--out", "x_mask.nii.gz", "--probabilities", v, "--force"][..], "--probabilities"),
        (&["--out", "x_mask.nii.gz", "--probabilities", "x_mask.nii.gz"][..], "are the same file"),
        (&["--out", m, "--force"][..], "is the model"),
    ] {
        let mut args = vec!["--volume", v, "--model", m, "--provider", "cpu", "--size", "32"];
        args.extend_from_slice(extra);
        let out = infer(dir.path(), &args);
        let log = text(&out);
        assert!(!out.status.success() && log.contains(expected), "{extra:?}:\n{log}");
    }
    assert!(std::fs::read(&volume).unwrap() == volume_bytes, "the input volume was replaced");
    assert!(std::fs::read(&model).unwrap() == model_bytes, "the model was replaced");
    assert!(!dir.path().join("x_mask.nii.gz").exists());
    // A model whose logits are not at the input's size (stride 2, relkd metadata): an error,
    // never an empty mask or a panic, with or without the probabilities.
    let strided = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_strided.onnx");
    let s = strided.to_str().unwrap();
    let cases: [(&[&str], &str); 10] = [
        (&["--volume", v, "--model", s, "--provider", "cpu"], "logits are [8, 2, 16, 16]"),
        (
            &["--volume", v, "--model", s, "--provider", "cpu", "--probabilities", "p.nii.gz"],
            "not a segmentation model",
        ),
        (&["--volume", "missing.nii.gz", "--model", m, "--provider", "cpu", "--size", "32"], "does not exist"),
        (&["--volume", "corrupt.nii.gz", "--model", m, "--provider", "cpu", "--size", "32"], "corrupt.nii.gz"),
        (&["--volume", "flat.nii", "--model", m, "--provider", "cpu", "--size", "32"], "flat.nii"),
        (&["--volume", "series.nii", "--model", m, "--provider", "cpu", "--size", "32"], "series.nii"),
        (
            &["--volume", v, "--model", m, "--provider", "cpu", "--size", "32", "--context", "1"],
            "expects 1 input channel",
        ),
        (
            &["--volume", v, "--model", m, "--provider", "cpu", "--size", "32", "--out", "no/such/dir/mask.nii.gz"],
            "does not exist",
        ),
        (&["--volume", v, "--model", m, "--provider", "cpu"], "--size and --context"),
        (&["--volume", v, "--model", m, "--provider", "cpu", "--size", "32", "--out", v], "refusing to overwrite"),
    ];
    let before: Vec<_> = std::fs::read_dir(&site).unwrap().map(|e| e.unwrap().file_name()).collect();
    for (args, expected) in cases {
        let out = infer(dir.path(), args);
        let log = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{log}");
        assert!(log.contains(expected), "{args:?}: expected '{expected}' in\n{log}");
        assert!(!log.contains("panicked"), "{args:?}:\n{log}");
    }
    let after: Vec<_> = std::fs::read_dir(&site).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(before, after, "a failed command wrote into the data folder");
    assert!(!dir.path().join("no").exists());
}

#[test]
fn strict_cuda_fails_clearly_here_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let volume = site.join("Case00.nii.gz");
    let model = tiny_model();
    let out = infer(
        dir.path(),
        &[
            "--volume",
            volume.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--provider",
            "cuda",
            "--size",
            "32",
        ],
    );
    let log = text(&out);
    if out.status.success() {
        return; // a machine with a working CUDA provider
    }
    assert!(log.contains("CUDA") && log.contains("--provider cpu") && log.contains("setup-ort.sh"), "{log}");
    assert!(!site.join("Case00_mask.nii.gz").exists());
}

/// `infer` killed at any moment leaves either no mask or a whole one under the target name,
/// and the next run removes what a killed write leaves (its temporary sibling). `export` writes
/// through the same `relkd_core::files` functions.
#[test]
fn a_killed_infer_leaves_no_half_mask_and_the_next_run_no_temporary() {
    use relkd_core::nifti_io::write_volume;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let site = phantom(dir.path());
    let small = read_volume(&site.join("Case00.nii.gz")).unwrap();
    // A volume large enough to be caught mid-way (256×256×48).
    let dims = [256, 256, 48];
    let data: Vec<f32> = (0..dims.iter().product::<usize>()).map(|i| ((i * 37) % 1000) as f32).collect();
    let big = dir.path().join("big.nii");
    write_volume(&big, &data, dims, &small.header).unwrap();
    let model = tiny_model();
    let args = ["--volume", big.to_str().unwrap(), "--model", model.to_str().unwrap(), "--provider", "cpu"];
    let args = [&args[..], &["--size", "256", "--force"]].concat();
    let mask = dir.path().join("big_mask.nii.gz");
    for delay_ms in [30, 120, 250, 400, 700] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infer"))
            .args(&args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        if mask.exists() {
            assert_eq!(read_volume(&mask).unwrap().dims, dims, "a half-written mask after a kill at {delay_ms} ms");
        }
    }
    // The write itself takes milliseconds, so a kill rarely lands inside it: leave what such a
    // kill leaves, a temporary of a process that no longer runs (ids above 2^22 never do).
    std::fs::write(dir.path().join(".relkd-partial-4194305-0-big_mask.nii.gz"), b"half").unwrap();
    let out = infer(dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out));
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".relkd-partial"))
        .collect();
    assert!(stray.is_empty(), "temporaries left: {stray:?}");
    assert_eq!(read_volume(&mask).unwrap().dims, dims);
}
