//! Writing files so that a reader (or a crash) never sees half of one: every output goes to a
//! temporary sibling first and is renamed over its destination once complete. And the check
//! that an output never replaces an input.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod pending;

pub use pending::{Pending, remove_pending_on_interrupt};

/// In a runs folder (`runs/`): the file naming the most recent run, written by `train`.
pub const LATEST_RUN: &str = "latest";
/// In a runs folder: the file holding the path of the most recent ONNX export, read by `infer`.
pub const LATEST_EXPORT: &str = "latest-export";

/// A dot-free file stem unique within this process, marking a file as not yet complete.
pub fn partial_stem() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(".relkd-partial-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A temporary sibling of `path`. The name keeps `path`'s file name after the marker so
/// leftovers of a crash are recognisable.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{}-{name}", partial_stem()))
}

/// Removes temporary siblings of `path` left by processes that no longer run (a write killed
/// half-way), so a rerun leaves nothing stray. Temporaries of live processes are kept; where
/// process ids cannot be checked (no `/proc`), nothing is removed.
pub fn remove_stale_partials(path: &Path) {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let suffix = format!("-{}", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(".relkd-partial-").and_then(|r| r.strip_suffix(&suffix)) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `contents` to `path` atomically (temporary sibling, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    remove_stale_partials(path);
    let tmp = Pending::beside(path);
    fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, path))
}

/// Runs `write` on a temporary sibling of `path` and renames it over `path` when it succeeds;
/// for writers that want a path rather than bytes (Burn's records, ONNX protobuf).
pub fn write_atomic_with<E>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E>
where
    E: From<io::Error>,
{
    remove_stale_partials(path);
    let tmp = Pending::beside(path);
    write(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(E::from))
}

/// `path` made absolute with its symbolic links resolved, for comparing paths that may not
/// exist yet: the path itself when it exists, else its folder's resolved path and its name.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent = parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf());
    path.file_name().map_or(parent.clone(), |name| parent.join(name))
}

/// Checks, before anything is written, that no output is one of the inputs (whatever
/// `--force` says: an input is never replaced) and that no two outputs are the same file.
/// Entries are (role, path), e.g. ("--probabilities", path); the error names both roles.
pub fn check_distinct_outputs(inputs: &[(&str, &Path)], outputs: &[(&str, &Path)]) -> Result<(), String> {
    for (i, (role, out)) in outputs.iter().enumerate() {
        let out_resolved = resolved(out);
        if let Some((input_role, _)) = inputs.iter().find(|(_, input)| resolved(input) == out_resolved) {
            return Err(format!("{role} {} is the {input_role}; refusing to overwrite an input", out.display()));
        }
        if let Some((other, _)) = outputs[..i].iter().find(|(_, o)| resolved(o) == out_resolved) {
            return Err(format!("{role} and {other} are the same file, {}; give each its own path", out.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_writers_temporary_is_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mask.nii.gz");
        // A process id above the kernel's limit (2^22) never runs; our own does.
        let dead = dir.path().join(".relkd-partial-4194305-0-mask.nii.gz");
        let alive = dir.path().join(format!(".relkd-partial-{}-99-mask.nii.gz", std::process::id()));
        let other = dir.path().join(".relkd-partial-4194305-0-other.nii.gz");
        for f in [&dead, &alive, &other] {
            fs::write(f, b"half").unwrap();
        }
        write_atomic(&target, b"whole").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        assert!(!dead.exists(), "the dead writer's temporary is left");
        assert!(alive.exists() && other.exists(), "a live writer's or another file's temporary was removed");
    }

    #[test]
    fn outputs_never_name_an_input_or_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("x.nii.gz");
        fs::write(&volume, b"input").unwrap();
        let inputs = [("input volume", volume.as_path())];
        // The same file by another spelling, and a path that does not exist yet twice.
        let other_spelling = dir.path().join("sub/../x.nii.gz");
        fs::create_dir(dir.path().join("sub")).unwrap();
        let err = check_distinct_outputs(&inputs, &[("--probabilities", &other_spelling)]).unwrap_err();
        assert!(err.contains("--probabilities") && err.contains("input volume"), "{err}");
        let mask = dir.path().join("x_mask.nii.gz");
        let twice = dir.path().join("sub/../x_mask.nii.gz");
        let err = check_distinct_outputs(&inputs, &[("--out", &mask), ("--probabilities", &twice)]).unwrap_err();
        assert!(err.contains("--probabilities and --out are the same file"), "{err}");
        let prob = dir.path().join("x_prob.nii.gz");
        assert_eq!(check_distinct_outputs(&inputs, &[("--out", &mask), ("--probabilities", &prob)]), Ok(()));
    }

    #[test]
    fn a_failed_write_leaves_neither_the_target_nor_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        fs::write(&target, b"old").unwrap();
        let err: io::Result<()> = write_atomic_with(&target, |tmp| {
            fs::write(tmp, b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
