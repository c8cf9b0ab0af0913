//! The verification record: everything needed to say what was checked, how, and with what
//! result, and to check it again (`verify --replay`).
//!
//! May not: trust a record's trees without finding them in this repository.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Check, Settings};
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::record::Verdict;

/// Version of the record's format; bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    /// The commit, when the tree came from one.
    pub commit: Option<String>,
    pub tree: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineVersion {
    pub version: String,
    pub api_version: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    pub boxdelegate_version: String,
    pub engine: EngineVersion,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// What the change is judged against (the baseline).
    pub base: Side,
    /// The change.
    pub change: Side,
    /// sha256 of the patch file, for `--patch`.
    pub patch_sha256: Option<String>,
    /// The unit whose protected paths and expected tests applied.
    pub unit: Option<String>,
    pub protected: Vec<String>,
    pub expect: Vec<String>,
    pub profile: String,
    pub deps_key: String,
    pub deps_image: String,
    pub deps_image_id: String,
    pub unit_image: String,
    pub unit_image_id: String,
    /// When the change edits the dependency manifests: the deps key and unit image its checks
    /// ran on (the baseline ran on `unit_image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_deps_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_image: Option<String>,
    pub checks: Vec<Check>,
    pub settings: Settings,
    pub verdict: Verdict,
    /// For `--replay`: the record replayed and whether the verdicts agree.
    pub replay: Option<Replay>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replay {
    /// sha256 of the replayed record file.
    pub record_sha256: String,
    pub matches: bool,
    /// What differs, one line each; empty when the verdicts agree.
    pub differences: Vec<String>,
}

/// Reads a record and checks it belongs to this repository (its trees are here).
pub fn load(repo: &Repo, path: &Path) -> Result<(Record, String)> {
    let data = std::fs::read(path).map_err(|e| Error::Usage {
        message: format!("cannot read the record {}: {e}", path.display()),
        hint: "pass the verification record written by `boxdelegate verify` (its path is printed)"
            .into(),
    })?;
    let record: Record = serde_json::from_slice(&data).map_err(|e| Error::Usage {
        message: format!("{} is not a verification record: {e}", path.display()),
        hint: "pass the JSON record written by `boxdelegate verify`".into(),
    })?;
    if record.schema != SCHEMA {
        return Err(Error::Usage {
            message: format!(
                "{} has record format {}, this boxdelegate reads format {SCHEMA}",
                path.display(),
                record.schema
            ),
            hint: format!(
                "replay it with the boxdelegate version that wrote it ({})",
                record.boxdelegate_version
            ),
        });
    }
    for (what, side) in [("base", &record.base), ("change", &record.change)] {
        if !is_tree(repo, &side.tree) {
            return Err(Error::Usage {
                message: format!(
                    "{} is not a record of this repository: its {what} tree {} is not in {}",
                    path.display(),
                    side.tree,
                    repo.root.display()
                ),
                hint: "replay a record in the repository it was made in (fetch the commits it names first)".into(),
            });
        }
    }
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    Ok((record, sha))
}

fn is_tree(repo: &Repo, id: &str) -> bool {
    id.len() >= 40
        && id.chars().all(|c| c.is_ascii_hexdigit())
        && repo
            .text(&["cat-file", "-t", id])
            .is_ok_and(|t| t == "tree")
}

/// How a replayed verdict differs from the recorded one: the overall verdict, and each check's
/// outcome and failing tests.
pub fn compare(recorded: &Verdict, now: &Verdict) -> Vec<String> {
    let mut diffs = Vec::new();
    if recorded.verdict != now.verdict {
        diffs.push(format!(
            "verdict: recorded {}, now {}",
            recorded.verdict.as_str(),
            now.verdict.as_str()
        ));
    }
    for r in &recorded.checks {
        match now.checks.iter().find(|c| c.name == r.name) {
            None => diffs.push(format!("check {}: recorded, not run now", r.name)),
            Some(c) => {
                if c.outcome != r.outcome {
                    diffs.push(format!(
                        "check {}: recorded {}, now {}",
                        r.name,
                        r.outcome.as_str(),
                        c.outcome.as_str()
                    ));
                }
                if c.regressions != r.regressions {
                    diffs.push(format!(
                        "check {}: regressions recorded [{}], now [{}]",
                        r.name,
                        r.regressions.join(", "),
                        c.regressions.join(", ")
                    ));
                }
            }
        }
    }
    for c in &now.checks {
        if !recorded.checks.iter().any(|r| r.name == c.name) {
            diffs.push(format!("check {}: run now, not recorded", c.name));
        }
    }
    diffs
}
