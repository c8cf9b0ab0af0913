//! Where a run's time goes, per phase, in milliseconds: in `run --json`, the results and the
//! report, so the benchmark (and anyone curious about the overhead) can read it.
//!
//! `*_at_ms` fields are Unix milliseconds on the host clock. Containers share that clock, so a
//! process inside one can print its own start time and be placed on the same axis.
//!
//! May not: act or measure: it holds what the phases measured.

use std::time::Instant;

/// One unit's phases, from the attempt its result comes from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnitTimings {
    /// When boxdelegate began creating the agent container.
    pub agent_create_at_ms: Option<u64>,
    /// Creating the agent container, uploading its prompt and files, starting it.
    pub agent_start_ms: Option<u64>,
    /// Reading the change out of the exited container, storing it, writing its tree and patch,
    /// checking its scope.
    pub extract_ms: Option<u64>,
    /// When verification began (before the verify container is created).
    pub verify_at_ms: Option<u64>,
    /// Verification as a whole: container, change applied, checks (their own work included).
    pub verify_ms: Option<u64>,
    /// Landing: objects imported, commit, ref moved (a merged-tree verification included).
    pub land_ms: Option<u64>,
}

/// The phases a run goes through once for all its units.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunTimings {
    /// Taking the snapshot and listing its tree.
    pub snapshot_ms: u64,
    /// Ensuring the dependency and unit images.
    pub images_ms: u64,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Milliseconds since `start`.
pub fn since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}
