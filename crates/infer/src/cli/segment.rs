//! `infer --volume`: one volume or a folder of them through a model, with every input and
//! output checked before the first write, and nothing left behind by a run that fails.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use relkd_core::dataset::grid_mismatch;
use relkd_core::files::{Pending, check_distinct_outputs, write_atomic};
use relkd_core::metrics::{dice, surface_distances};
use relkd_core::nifti_io::{read_volume, write_mask, write_volume};
use relkd_core::png::overlay;
use relkd_core::transforms::binarize;

use super::{ProviderArg, SegmentArgs, model_path};
use crate::model::Model;
use crate::runtime::Provider;

fn is_volume(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    (name.ends_with(".nii") || name.ends_with(".nii.gz"))
        && !name.contains("_segmentation")
        && !name.contains("_mask")
        && !name.contains("_prob")
}

/// `case.nii.gz` → `case_SUFFIX.nii.gz` in `dir`.
fn sibling(input: &Path, dir: &Path, suffix: &str) -> PathBuf {
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, ext) = match name.strip_suffix(".nii.gz") {
        Some(stem) => (stem.to_string(), ".nii.gz"),
        None => (name.strip_suffix(".nii").unwrap_or(&name).to_string(), ".nii.gz"),
    };
    dir.join(format!("{stem}{suffix}{ext}"))
}

/// A constant volume z-scores to zeros: whatever mask comes out says nothing about the image.
fn warn_if_constant(path: &Path, image: &relkd_core::nifti_io::Volume) {
    if let Some(&first) = image.data.first().filter(|&&v| image.data.iter().all(|&x| x == v)) {
        eprintln!(
            "warning: {} is constant ({first}): there is no image to segment; its mask means nothing",
            path.display()
        );
    }
}

pub(super) fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        bail!("{} already exists; choose another output or add --force to replace it", path.display());
    }
    Ok(())
}

pub(super) fn segment(args: &SegmentArgs) -> anyhow::Result<()> {
    let Some(volume) = &args.volume else {
        bail!("nothing to segment: give --volume FILE.nii.gz (or a folder), or see `infer --help`");
    };
    ensure!(volume.exists(), "volume {} does not exist", volume.display());
    let model_file = model_path(&args.model)?;
    let mut model = Model::open(&model_file, args.provider.into(), args.threads)?;
    if args.provider == ProviderArg::Auto && model.provider == Provider::Cpu {
        println!("provider: CUDA is unavailable here, running on the CPU (--provider cpu says so up front)");
    }
    let prep = model.preprocessing(args.size, args.context)?;
    println!(
        "{} ({}) on {:?}; input {}×{}, {} context slice(s)",
        model.info.name,
        model.info.provenance(),
        model.provider,
        prep.size,
        prep.size,
        prep.context
    );
    if volume.is_dir() {
        return segment_folder(args, &mut model, &prep, volume);
    }
    let out = args.out.clone().unwrap_or_else(|| sibling(volume, volume.parent().unwrap_or(Path::new(".")), "_mask"));
    check_outputs(args, volume, &model_file, &out)?;
    let start = Instant::now();
    let image = read_volume(volume)?;
    warn_if_constant(volume, &image);
    // The label is read and checked before anything is written, so a bad one leaves nothing.
    let truth = match &args.label {
        Some(label) => {
            let labels = read_volume(label)?;
            if let Some(mismatch) = grid_mismatch(&image, &labels, "label") {
                bail!("{}: {mismatch}; a label must be on the volume's grid", label.display());
            }
            Some(binarize(&labels.data))
        }
        None => None,
    };
    let seg = model.segment(&image, &prep, args.batch, args.probabilities.is_some())?;
    // What this run writes is removed again if it fails or is interrupted before the end.
    let mut written = Vec::new();
    write_mask(&out, &seg.mask, &image)?;
    written.push(Pending::claim(out.clone()));
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "wrote {} ({}×{}×{}, {} foreground voxels): {seconds:.2} s from reading to writing, {:.2} s of it in ONNX Runtime",
        out.display(),
        image.dims[0],
        image.dims[1],
        image.dims[2],
        seg.mask.iter().filter(|&&v| v != 0).count(),
        model.session_time.as_secs_f64()
    );
    if let (Some(path), Some(foreground)) = (&args.probabilities, &seg.foreground) {
        write_volume(path, foreground, image.dims, &image.header)?;
        written.push(Pending::claim(path.clone()));
        println!("wrote {} (foreground probability, float32)", path.display());
    }
    if let Some(truth) = &truth {
        let d = surface_distances(&seg.mask, truth, image.dims, image.spacing);
        println!("Dice {:.4}  HD95 {:.2} mm  ASD {:.2} mm", dice(&seg.mask, truth), d.hd95, d.asd);
    }
    if let Some(dir) = &args.overlay {
        let count = write_overlays(dir, volume, &image, truth.as_deref(), &seg.mask, &mut written)?;
        println!("wrote {count} overlay(s) to {}", dir.display());
    }
    written.into_iter().for_each(Pending::keep);
    Ok(())
}

/// Outputs are checked before any work: their folders exist, nothing is overwritten unasked,
/// no input (volume, label, model) is ever an output, even with `--force`, and no two outputs
/// are the same file.
fn check_outputs(args: &SegmentArgs, volume: &Path, model: &Path, out: &Path) -> anyhow::Result<()> {
    let mut inputs = vec![("input volume", volume), ("model", model)];
    inputs.extend(args.label.as_deref().map(|l| ("--label", l)));
    let mut outputs = vec![("--out", out)];
    outputs.extend(args.probabilities.as_deref().map(|p| ("--probabilities", p)));
    check_distinct_outputs(&inputs, &outputs).map_err(|e| anyhow::anyhow!(e))?;
    for (flag, path) in
        std::iter::once(("--out", out)).chain(args.probabilities.as_deref().map(|p| ("--probabilities", p)))
    {
        let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        ensure!(
            name.ends_with(".nii.gz") || name.ends_with(".nii"),
            "{flag} {}: volumes are written as NIfTI; name the file .nii.gz (or .nii)",
            path.display()
        );
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        ensure!(parent.is_dir(), "the folder of {}, {}, does not exist", path.display(), parent.display());
        check_writable(flag, parent)?;
        refuse_overwrite(path, args.force)?;
    }
    if let Some(dir) = &args.overlay {
        ensure!(dir.is_dir() || !dir.exists(), "--overlay {} is not a folder", dir.display());
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        ensure!(parent.is_dir(), "the folder of --overlay {}, {}, does not exist", dir.display(), parent.display());
        check_writable("--overlay", if dir.is_dir() { dir } else { parent })?;
    }
    Ok(())
}

/// Creates and removes a file in `dir`, so that an output that cannot be written fails the
/// command before its first output rather than after.
fn check_writable(flag: &str, dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".relkd-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("{flag}: cannot write in {}", dir.display()))?;
    std::fs::remove_file(&probe).with_context(|| format!("removing {}", probe.display()))
}

fn write_overlays(
    dir: &Path,
    volume: &Path,
    image: &relkd_core::nifti_io::Volume,
    truth: Option<&[u8]>,
    mask: &[u8],
    written: &mut Vec<Pending>,
) -> anyhow::Result<usize> {
    if !dir.exists() {
        written.push(Pending::claim(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let [nx, ny, nz] = image.dims;
    let plane = nx * ny;
    let stem =
        sibling(volume, dir, "").file_name().map(|n| n.to_string_lossy().replace(".nii.gz", "")).unwrap_or_default();
    let zoom = (256 / nx.max(ny)).max(1);
    let mut count = 0;
    for z in 0..nz {
        let m = &mask[z * plane..][..plane];
        let t = truth.map(|t| &t[z * plane..][..plane]);
        if m.iter().all(|&v| v == 0) && t.is_none_or(|t| t.iter().all(|&v| v == 0)) {
            continue;
        }
        let path = dir.join(format!("{stem}_z{z:03}.png"));
        // Atomic, and claimed only once saved, so a failure never removes what was there.
        overlay(image.slice(z), t, m, ny, nx, zoom).save(&path).with_context(|| format!("{}", path.display()))?;
        written.push(Pending::claim(path));
        count += 1;
    }
    Ok(count)
}

fn segment_folder(
    args: &SegmentArgs,
    model: &mut Model,
    prep: &relkd_core::transforms::Preprocessing,
    folder: &Path,
) -> anyhow::Result<()> {
    let mut volumes: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("{}", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_volume(p))
        .collect();
    volumes.sort();
    ensure!(!volumes.is_empty(), "{} holds no .nii or .nii.gz volumes", folder.display());
    let name = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "volumes".into());
    let out = args.out.clone().unwrap_or_else(|| folder.with_file_name(format!("{name}_masks")));
    ensure!(!out.exists() || out.is_dir(), "--out {} is not a folder", out.display());
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure!(parent.is_dir(), "the folder of {}, {}, does not exist", out.display(), parent.display());
    }
    let table = out.join("cases.csv");
    refuse_overwrite(&table, args.force)?;
    // Every mask is checked before the first is written, so a rerun is refused whole rather than
    // case by case.
    let existing: Vec<PathBuf> =
        volumes.iter().map(|v| sibling(v, &out, "_mask")).filter(|m| m.exists() && !args.force).collect();
    if let Some(first) = existing.first() {
        bail!(
            "{} already holds {} of these masks ({}…); choose another --out or add --force to replace them",
            out.display(),
            existing.len(),
            first.display()
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bar = ProgressBar::new(volumes.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut rows = String::from("case,dims,foreground_voxels,seconds,dice,hd95_mm,asd_mm,error\n");
    let mut failures = Vec::new();
    for path in &volumes {
        let case = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        bar.set_message(case.clone());
        let result = (|| -> anyhow::Result<String> {
            let image = read_volume(path)?;
            bar.suspend(|| warn_if_constant(path, &image));
            let mask_path = sibling(path, &out, "_mask");
            refuse_overwrite(&mask_path, args.force)?;
            let start = Instant::now();
            let seg = model.segment(&image, prep, args.batch, false)?;
            let seconds = start.elapsed().as_secs_f64();
            write_mask(&mask_path, &seg.mask, &image)?;
            let mut row = format!(
                "{case},{}x{}x{},{},{seconds:.3}",
                image.dims[0],
                image.dims[1],
                image.dims[2],
                seg.mask.iter().filter(|&&v| v != 0).count()
            );
            let label = [sibling(path, folder, "_segmentation"), sibling(path, folder, "_Segmentation")]
                .into_iter()
                .find(|p| p.exists());
            match label.map(|l| read_volume(&l)).transpose()? {
                Some(labels) if labels.dims == image.dims => {
                    let truth = binarize(&labels.data);
                    let d = surface_distances(&seg.mask, &truth, image.dims, image.spacing);
                    let _ = write!(row, ",{:.4},{:.3},{:.3}", dice(&seg.mask, &truth), d.hd95, d.asd);
                }
                _ => row.push_str(",,,"),
            }
            Ok(row)
        })();
        match result {
            Ok(row) => {
                rows.push_str(&row);
                rows.push_str(",\n");
            }
            Err(e) => {
                // Most errors already name the file; name it once.
                let message = format!("{e:#}");
                let _ = writeln!(rows, "{case},,,,,,,\"{}\"", message.replace('"', "'").replace('\n', " "));
                failures.push(if message.contains(&case) { message } else { format!("{case}: {message}") });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_atomic(&table, rows.as_bytes()).with_context(|| format!("{}", table.display()))?;
    println!("wrote {} mask(s) and {} to {}", volumes.len() - failures.len(), table.display(), out.display());
    if !failures.is_empty() {
        bail!("{} volume(s) failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(())
}
