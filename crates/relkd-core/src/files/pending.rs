//! Paths a command has begun writing and not finished: removed when the command fails (the
//! guard drops) and when SIGINT, SIGTERM or SIGHUP stop the process, so an interrupted or
//! failed command leaves the folder as it found it. (SIGKILL cannot be caught; its
//! temporaries are removed by the next write to the same name, see `remove_stale_partials`.)

use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::partial_path;

/// Every path of this process a [`Pending`] guards, for the interrupt handler.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes a file, or a folder with its contents; a path that is gone already is fine.
fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => drop(fs::remove_dir_all(path)),
        Ok(_) => drop(fs::remove_file(path)),
        Err(_) => {}
    }
}

/// A path this process is writing (a file or a folder), removed when the guard drops unless
/// [`Pending::keep`] was called. A temporary that was renamed into place is gone by then, so
/// dropping its guard removes nothing.
#[derive(Debug)]
pub struct Pending(PathBuf);

impl Pending {
    /// Guards `path`, which the caller is about to create or has just created.
    pub fn claim(path: PathBuf) -> Self {
        pending().push(path.clone());
        Self(path)
    }

    /// A temporary sibling of `target` (see [`partial_path`]), guarded.
    pub fn beside(target: &Path) -> Self {
        Self::claim(partial_path(target))
    }

    /// The command finished with this path: it stays.
    pub fn keep(self) {
        self.forget();
        // Skip `Drop` (which would remove the file) but free the path.
        drop(std::mem::take(&mut std::mem::ManuallyDrop::new(self).0));
    }

    fn forget(&self) {
        let mut all = pending();
        if let Some(i) = all.iter().rposition(|p| *p == self.0) {
            all.swap_remove(i);
        }
    }
}

impl Deref for Pending {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Pending {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        remove(&self.0);
        self.forget();
    }
}

/// On SIGINT, SIGTERM or SIGHUP: removes every pending path, then lets the signal end the
/// process as it would have (same exit status). Each binary calls this once at start. The
/// removal runs on a thread of its own, not in the signal handler, so it may take the lock.
pub fn remove_pending_on_interrupt() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else { return };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let mut all = pending();
                for path in all.drain(..) {
                    remove(&path);
                }
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_removes_its_file_or_folder_and_a_kept_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (file, folder, kept) = (dir.path().join("a.bin"), dir.path().join("staging"), dir.path().join("k"));
        {
            let f = Pending::claim(file.clone());
            fs::write(&f, b"half").unwrap();
            let d = Pending::claim(folder.clone());
            fs::create_dir(&d).unwrap();
            fs::write(d.join("inside"), b"x").unwrap();
            let k = Pending::claim(kept.clone());
            fs::write(&k, b"whole").unwrap();
            k.keep();
            let registered = pending().clone();
            assert!(registered.contains(&file) && !registered.contains(&kept));
        }
        assert!(!file.exists() && !folder.exists() && kept.exists());
        assert!(!pending().iter().any(|p| p.starts_with(dir.path())), "guards left registered");
    }
}
