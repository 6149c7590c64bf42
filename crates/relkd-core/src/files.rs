//! Writing files so that a reader (or a crash) never sees half of one: every output goes to a
//! temporary sibling first and is renamed over its destination once complete.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// Writes `contents` to `path` atomically (temporary sibling, then rename).
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = partial_path(path);
    let result = fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Runs `write` on a temporary sibling of `path` and renames it over `path` when it succeeds;
/// for writers that want a path rather than bytes (Burn's records, ONNX protobuf).
pub fn write_atomic_with<E>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E>
where
    E: From<io::Error>,
{
    let tmp = partial_path(path);
    let result = write(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(E::from));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
