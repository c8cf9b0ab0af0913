//! The run journal and the repository lock.
//!
//! Each run has a directory `<git common dir>/boxdelegate/runs/<run-id>/` (inside the git
//! directory, so never part of the work tree) with `journal.json`: the request, the snapshot,
//! and for every unit its phase, its attempts (container, phase, partial result) and its final
//! result. The journal is rewritten atomically (temp file, fsync, rename) at every phase
//! boundary, so after a crash it holds the last finished phase and `boxdelegate run` (or
//! `resume`) continues from there.
//!
//! One boxdelegate process works on a repository at a time: [`RepoLock`] is an exclusive
//! advisory lock on `<state dir>/lock`, released by the kernel when the process dies.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::run::UnitResult;

/// The journal's format version.
pub const SCHEMA: u32 = 1;
pub const FILE: &str = "journal.json";

/// What was asked for: a re-run of the same request resumes the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub units: Vec<String>,
    pub branch: Option<String>,
    pub rerun: bool,
    pub include_dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub schema: u32,
    pub run_id: String,
    /// Unix seconds.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    pub request: Request,
    pub snapshot_commit: String,
    pub snapshot_tree: String,
    pub unit_image: Option<String>,
    /// Why no new unit was started, once the circuit breaker opened.
    pub breaker: Option<String>,
    /// Attempts stopped by the infrastructure in a row (over all units).
    #[serde(default)]
    pub consecutive_infra: u32,
    pub units: Vec<UnitEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitPhase {
    /// Not started.
    Pending,
    /// Attempts under way.
    Working,
    /// An attempt passed every check; waiting for its turn to land.
    Ready,
    /// The commit was made and the branch is being moved.
    Landing,
    /// Final: `result` says how it ended.
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitEntry {
    pub id: String,
    pub phase: UnitPhase,
    pub attempts: Vec<Attempt>,
    /// The commit made for landing and the branch head it was made against, written before
    /// the branch moves: on resume, a branch that already holds it means the unit landed.
    pub landing: Option<Landing>,
    pub result: Option<UnitResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Landing {
    pub commit: String,
    pub old: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The configured agent.
    Primary,
    /// `[agent.fallback]`, after the primary's retries.
    Fallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptPhase {
    /// The container is being created and prepared; it may not exist yet.
    Starting,
    /// The agent container was started (`container`).
    Running,
    /// The agent exited; its container still holds the change.
    Exited,
    /// The change was read out and stored in the attempt's directory; the container is gone.
    Extracted,
    /// Judged: `result.status` says how (`landed` here means "ready to land").
    Done,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based, over the unit's whole run (infrastructure retries included).
    pub n: u32,
    pub role: Role,
    pub agent: String,
    pub dir: PathBuf,
    pub phase: AttemptPhase,
    pub container: Option<String>,
    /// Unix seconds when the agent container started (for its timeout after a resume).
    pub started_at: Option<f64>,
    /// Seconds the agent ran.
    pub agent_seconds: f64,
    /// When the infrastructure stopped the attempt: what (`oom`, `engine`, `timeout`,
    /// `model-endpoint`, `verify`).
    pub infra: Option<String>,
    /// What the attempt produced so far; final once `phase` is `done`.
    pub result: UnitResult,
}

impl Journal {
    pub fn unit(&self, id: &str) -> &UnitEntry {
        self.units
            .iter()
            .find(|u| u.id == id)
            .expect("units come from the journal")
    }

    pub fn unit_mut(&mut self, id: &str) -> &mut UnitEntry {
        self.units
            .iter_mut()
            .find(|u| u.id == id)
            .expect("units come from the journal")
    }

    pub fn finished(&self) -> bool {
        self.finished_at.is_some()
    }
}

/// A journal being written by a run: every change is saved before the run goes on.
pub struct Live {
    path: PathBuf,
    journal: Mutex<Journal>,
}

impl Live {
    pub fn new(dir: &Path, journal: Journal) -> Result<Live> {
        let live = Live {
            path: dir.join(FILE),
            journal: Mutex::new(journal),
        };
        live.update(|_| {})?;
        Ok(live)
    }

    /// Applies `f` and saves the journal atomically.
    pub fn update<T>(&self, f: impl FnOnce(&mut Journal) -> T) -> Result<T> {
        let mut j = self.journal.lock().expect("poisoned");
        let out = f(&mut j);
        let data = serde_json::to_vec_pretty(&*j).map_err(|e| Error::Internal(e.to_string()))?;
        crate::extract::write_private(&self.path, &data)?;
        Ok(out)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Journal) -> T) -> T {
        f(&self.journal.lock().expect("poisoned"))
    }
}

/// The directory holding every run.
pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// Loads a run's journal; a missing, truncated or corrupt one is a clear error with a way out.
pub fn load(state_dir: &Path, run_id: &str) -> Result<Journal> {
    let path = runs_dir(state_dir).join(run_id).join(FILE);
    let way_out = format!(
        "remove the run with `boxdelegate clean --run {run_id}` (its containers and kept patches go with it), then run the units again"
    );
    let data = std::fs::read(&path).map_err(|e| Error::State {
        path: path.clone(),
        message: format!("the journal of run {run_id} cannot be read: {e}"),
        hint: way_out.clone(),
    })?;
    let journal: Journal = serde_json::from_slice(&data).map_err(|e| Error::State {
        path: path.clone(),
        message: format!(
            "the journal of run {run_id} is corrupt or truncated ({e}; {} bytes)",
            data.len()
        ),
        hint: way_out.clone(),
    })?;
    if journal.schema != SCHEMA || journal.run_id != run_id {
        return Err(Error::State {
            path,
            message: format!(
                "the journal of run {run_id} is of another format (schema {}, run {:?})",
                journal.schema, journal.run_id
            ),
            hint: way_out,
        });
    }
    Ok(journal)
}

/// Every run id with a directory, oldest first (ids start with the start time).
pub fn run_ids(state_dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(runs_dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|id| valid_run_id(id))
        .collect();
    ids.sort_by_key(|id| sort_key(id));
    ids
}

fn sort_key(id: &str) -> (u64, String) {
    let secs = id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (secs, id.to_string())
}

/// Run ids are `<unix seconds>-<4 hex digits>`.
pub fn valid_run_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((secs, tag)) => {
            !secs.is_empty()
                && secs.bytes().all(|b| b.is_ascii_digit())
                && tag.len() == 4
                && tag.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

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
        crate::run::create_private_dir(state_dir)?;
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
    fn run_ids_are_validated_and_sorted_by_time() {
        assert!(valid_run_id("1763800000-0a1f"));
        assert!(!valid_run_id("../x"));
        assert!(!valid_run_id("1763800000-0a1"));
        assert!(!valid_run_id("abc-0a1f"));
        let dir = tempfile::tempdir().unwrap();
        for id in ["999-000a", "1000-0001", "junk", "20-ffff"] {
            std::fs::create_dir_all(runs_dir(dir.path()).join(id)).unwrap();
        }
        assert_eq!(run_ids(dir.path()), ["20-ffff", "999-000a", "1000-0001"]);
    }

    #[test]
    fn a_truncated_journal_is_a_clear_state_error() {
        let dir = tempfile::tempdir().unwrap();
        let run = runs_dir(dir.path()).join("1-0001");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join(FILE), b"{\"schema\": 1, \"run_id\": \"1-00").unwrap();
        let err = load(dir.path(), "1-0001").unwrap_err();
        assert!(matches!(err, Error::State { .. }), "{err:?}");
        assert!(err.to_string().contains("corrupt or truncated"), "{err}");
        assert!(err
            .hint()
            .unwrap()
            .contains("boxdelegate clean --run 1-0001"));
        let missing = load(dir.path(), "2-0002").unwrap_err();
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
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
