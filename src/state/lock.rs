//! Locks on a repository's boxdelegate state, each a file under `.git/boxdelegate/` holding
//! an flock and its holder's line: the whole state (`lock`: `clean` of every run), a unit
//! (one process delegates or applies a unit at a time), a live run (so others tell it from an
//! interrupted one), a branch while a unit lands on it, and the image builds. Several
//! `boxdelegate run` processes work on one repository at once, each on its own units.
//! It never waits unless asked.
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

/// What a lock guards, and so its file.
pub enum Guarded<'a> {
    /// Unit `id`: delegated or applied by one process at a time.
    Unit(&'a str),
    /// Run `id`, while a process works on it.
    Run(&'a str),
    /// Branch `name`, while a unit lands on it.
    Branch(&'a str),
    /// The dependency and unit image builds (one key built once, not by two at a time).
    Images,
}

impl Guarded<'_> {
    fn path(&self, state_dir: &Path) -> std::path::PathBuf {
        let dir = state_dir.join("locks");
        match self {
            Guarded::Unit(id) => dir.join(format!("unit-{id}")),
            Guarded::Run(id) => dir.join(format!("run-{id}")),
            // A branch name may hold slashes: its hash names the file.
            Guarded::Branch(b) => dir.join(format!(
                "branch-{}",
                &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b.as_bytes()))[..16]
            )),
            Guarded::Images => dir.join("images"),
        }
    }

    fn name(&self) -> String {
        match self {
            Guarded::Unit(id) => format!("unit {id}"),
            Guarded::Run(id) => format!("run {id}"),
            Guarded::Branch(b) => format!("branch {b}"),
            Guarded::Images => "the image builds".into(),
        }
    }
}

impl RepoLock {
    /// Takes the lock on `what` for `command`; when another process holds it, waits (`wait`)
    /// or fails with who holds it.
    pub fn on(state_dir: &Path, what: Guarded<'_>, command: &str, wait: bool) -> Result<RepoLock> {
        super::create_private_dir(state_dir)?;
        super::create_private_dir(&state_dir.join("locks"))?;
        Self::at(&what.path(state_dir), &what.name(), command, wait)
    }

    /// Who holds the lock on `what`, when a process does.
    pub fn holder_of(state_dir: &Path, what: Guarded<'_>) -> Option<String> {
        Self::held_at(&what.path(state_dir))
    }

    /// Takes the lock for `command`; when another process holds it, waits (`wait`) or fails
    /// with who holds it.
    pub fn acquire(state_dir: &Path, command: &str, wait: bool) -> Result<RepoLock> {
        super::create_private_dir(state_dir)?;
        Self::at(&state_dir.join("lock"), "this repository", command, wait)
    }

    fn at(path: &Path, what: &str, command: &str, wait: bool) -> Result<RepoLock> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.to_path_buf();
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
                        message: format!("{holder} is working on {what}"),
                        hint: "wait for it to finish (`boxdelegate status` shows its run), or pass --wait to queue behind it".into(),
                    });
                }
                eprintln!("waiting: {holder} is working on {what}");
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
    /// Who holds the lock at `path`, when another process does (the lock is not taken).
    fn held_at(path: &Path) -> Option<String> {
        let file = std::fs::File::open(path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(_) => Some(
                std::fs::read_to_string(path)
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
    fn units_lock_apart_and_a_held_one_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let a = RepoLock::on(dir.path(), Guarded::Unit("a"), "run", false).unwrap();
        // Another unit, another run, a branch: each its own lock.
        let _b = RepoLock::on(dir.path(), Guarded::Unit("b"), "run", false).unwrap();
        let _r = RepoLock::on(dir.path(), Guarded::Run("1-0001"), "run", false).unwrap();
        let _br = RepoLock::on(dir.path(), Guarded::Branch("feature/x"), "run", false).unwrap();
        let err = RepoLock::on(dir.path(), Guarded::Unit("a"), "run", false)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("is working on unit a"), "{err}");
        assert!(RepoLock::holder_of(dir.path(), Guarded::Unit("a"))
            .is_some_and(|h| h.contains(&format!("pid {}", std::process::id()))),);
        drop(a);
        assert!(RepoLock::holder_of(dir.path(), Guarded::Unit("a")).is_none());
        assert!(RepoLock::holder_of(dir.path(), Guarded::Branch("feature/y")).is_none());
    }

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
