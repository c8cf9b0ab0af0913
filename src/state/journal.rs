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
//!
//! May not: let a corrupt journal panic or pass silently; write a journal other than atomically.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{Role, UnitResult};

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
    /// Unix milliseconds, to order runs that started within one second (0 in journals written
    /// before it was kept).
    #[serde(default)]
    pub started_at_ms: u64,
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
        crate::state::write_private(&self.path, &data)?;
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
}
