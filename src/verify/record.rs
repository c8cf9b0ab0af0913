//! The verification record: everything needed to say what was checked, how, and with what
//! result, and to check it again (`verify --replay`).
//!
//! May not: trust a record's trees without finding them in this repository.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Check, Settings, VerifyRequest};
use crate::engine::Engine;
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

/// Where a verification's trees came from, beyond what its request says.
pub struct Origin<'a> {
    pub base_commit: Option<&'a str>,
    pub change_commit: Option<&'a str>,
    pub patch_sha256: Option<&'a str>,
    /// The unit whose protected paths and expected tests applied.
    pub unit: Option<&'a str>,
    pub profile: &'a str,
    /// The dependency image the unit image was built on.
    pub deps_image: &'a str,
}

/// The record of `verdict`, reached by verifying `req`: every `verify`, and every landing
/// `run`, `apply` and `resume` make one the same way, so a landed commit can name its record
/// and `verify --replay` can check it again.
pub async fn make(
    engine: &Engine,
    req: &VerifyRequest<'_>,
    origin: Origin<'_>,
    verdict: Verdict,
    created: u64,
) -> Result<Record> {
    let info = engine.info().await?;
    let id = |name: &str| {
        let name = name.to_string();
        async move { engine.image_id(&name).await.map(Option::unwrap_or_default) }
    };
    Ok(Record {
        schema: SCHEMA,
        boxdelegate_version: env!("CARGO_PKG_VERSION").to_string(),
        engine: EngineVersion {
            version: info.version,
            api_version: info.api_version,
            os: info.os,
        },
        created,
        base: Side {
            commit: origin.base_commit.map(str::to_string),
            tree: req.base_tree.to_string(),
        },
        change: Side {
            commit: origin.change_commit.map(str::to_string),
            tree: req.tree.to_string(),
        },
        patch_sha256: origin.patch_sha256.map(str::to_string),
        unit: origin.unit.map(str::to_string),
        protected: req
            .protected
            .map(|g| g.patterns.clone())
            .unwrap_or_default(),
        expect: req.expect.to_vec(),
        profile: origin.profile.to_string(),
        deps_key: req.deps_key.to_string(),
        deps_image: origin.deps_image.to_string(),
        deps_image_id: id(origin.deps_image).await?,
        unit_image: req.image.to_string(),
        unit_image_id: id(req.image).await?,
        change_deps_key: req.change_image.map(|(_, k)| k.to_string()),
        change_image: req.change_image.map(|(i, _)| i.to_string()),
        checks: req.checks.to_vec(),
        settings: req.settings.clone(),
        verdict,
        replay: None,
    })
}

/// The record's bytes and their sha256, the id a landed commit's `Boxdelegate-Record` trailer
/// names.
pub fn encode(record: &Record) -> Result<(Vec<u8>, String)> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal(e.to_string()))?;
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&json));
    Ok((json, sha))
}

/// Writes a record under `dir` named by its sha256 (`<sha256>.json`), where `verify --replay
/// COMMIT` finds the record its trailer names. Returns the sha256.
pub fn store(dir: &Path, record: &Record) -> Result<String> {
    let (json, sha) = encode(record)?;
    crate::state::create_private_dir(dir)?;
    crate::state::write_private(&dir.join(format!("{sha}.json")), &json)?;
    Ok(sha)
}

/// The path of the stored record `sha` under `dir`; `None` for an id that is not a sha256.
pub fn stored_path(dir: &Path, sha: &str) -> Option<std::path::PathBuf> {
    (sha.len() == 64
        && sha
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
    .then(|| dir.join(format!("{sha}.json")))
}

/// Reads a record and checks it belongs to this repository (its trees are here).
pub fn load(repo: &Repo, path: &Path) -> Result<(Record, String)> {
    let data = std::fs::read(path).map_err(|e| Error::Usage {
        message: format!("cannot read the record {}: {e}", path.display()),
        hint: "pass the verification record written by `boxdelegate verify` (its path is printed)"
            .into(),
    })?;
    parse(repo, path, &data)
}

/// Reads the record a landed commit's `Boxdelegate-Record` trailer names (`sha256:<hex>`) from
/// `dir`, and checks its bytes still hash to that name.
pub fn load_stored(repo: &Repo, dir: &Path, commit: &str, named: &str) -> Result<(Record, String)> {
    let usage = |message: String, hint: String| Error::Usage { message, hint };
    let anew = format!("verify the commit anew: boxdelegate verify --commit {commit}");
    let Some(path) = named
        .strip_prefix("sha256:")
        .and_then(|h| stored_path(dir, h))
    else {
        return Err(usage(
            format!("commit {commit} names the verification record {named:?}, which is not a sha256:<hex> name"),
            anew,
        ));
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage(
                format!(
                    "the verification record {named} that commit {commit} names is not among this repository's records ({}): records stay in the repository that landed the commit",
                    dir.display()
                ),
                format!("replay it there, or {anew}"),
            ))
        }
        Err(e) => return Err(Error::io("reading a verification record", e)),
    };
    let (record, sha) = parse(repo, &path, &data)?;
    if format!("sha256:{sha}") != named {
        return Err(usage(
            format!(
                "the verification record {} no longer hashes to the name commit {commit} gives it ({named}; its bytes hash to sha256:{sha}): it was changed after the commit landed",
                path.display()
            ),
            anew,
        ));
    }
    Ok((record, sha))
}

fn parse(repo: &Repo, path: &Path, data: &[u8]) -> Result<(Record, String)> {
    let record: Record = serde_json::from_slice(data).map_err(|e| Error::Usage {
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
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
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
