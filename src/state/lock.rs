//! The repository lock: one boxdelegate process at a time acts on a repository's state.
//! It owns the lock file and the holder's line in it; it never waits unless asked.
//!
//! May not: wait unless asked; take a lock another live process holds.

use std::path::Path;

use crate::error::{Error, Result};

/// An exclusive lock on the repository's boxdelegate state, held for the life of the process.
pub struct RepoLock {
    file: std::fs::File,
}

impl Drop for RepoLock {
    /// Unlocks explicitly rather than by closing: an flock belongs to the open file description,
    /// and a child another thread is spawning holds a copy of every descriptor between its fork
    /// and its exec (close-on-exec acts only at the exec), so a bare close could leave the lock
    /// held for a moment after the holder let go.
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl RepoLock {
    /// Takes the lock for `command`; when another process holds it, waits (`wait`) or fails
    /// with who holds it.
    pub fn acquire(state_dir: &Path, command: &str, wait: bool) -> Result<RepoLock> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        super::create_private_dir(state_dir)?;
        let path = state_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another boxdelegate process".to_string()
                } else {
                    format!("another boxdelegate ({holder})")
                };
                if !wait {
                    return Err(Error::Busy {
                        message: format!("{holder} is working on this repository"),
                        hint: "wait for it to finish (`boxdelegate status` shows its run), or pass --wait to queue behind it".into(),
                    });
                }
                eprintln!("waiting: {holder} is working on this repository");
                file.lock()
                    .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "pid {}, `{command}`", std::process::id());
        Ok(RepoLock { file })
    }
}

impl RepoLock {
    /// Who holds the lock, when another process does (the lock is not taken).
    pub fn held_by(state_dir: &Path) -> Option<String> {
        let path = state_dir.join("lock");
        let file = std::fs::File::open(&path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(_) => Some(
                std::fs::read_to_string(&path)
                    .map(|s| s.trim().to_string())
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "another boxdelegate process".into()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = RepoLock::acquire(dir.path(), "run", false).unwrap();
        let err = RepoLock::acquire(dir.path(), "clean", false)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::Busy { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        RepoLock::acquire(dir.path(), "clean", false).unwrap();
    }
}
