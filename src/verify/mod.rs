//! Verification in a second, clean container: the unit image with the change applied, no
//! network, no secrets, the same hardening and limits. Each check's exit code comes from the
//! engine, never from parsing output.
//!
//! A unit whose project configures no checks passes verification trivially (and the report
//! says so); only a passing unit lands.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;

use crate::config::profile::Profile;
use crate::config::{Limits, VerifyConfig};
use crate::engine::{hardened_host_config, labels, Engine};
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::images;
use crate::snapshot;

pub mod counts;

/// Default limit per check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub name: String,
    pub command: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub command: String,
    /// None when the check was stopped by its timeout.
    pub exit_code: Option<i64>,
    pub seconds: f64,
    /// The last lines of the check's output.
    pub tail: String,
    /// For the test check: the tests the runner reported, when its summary was recognised.
    pub tests: Option<counts::Counts>,
    /// Whether the check passed: exit code 0 and, for tests, at least one test run.
    pub passed: bool,
    /// Why the verdict is what it is, when the exit code alone does not say it.
    pub note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<CheckResult>,
}

/// The checks to run: `[verify]` keys override the profile's (`""` disables one).
pub fn checks(profile: &Profile, verify: &VerifyConfig) -> Vec<Check> {
    let pick = |name: &str, over: &Option<String>, default: &Option<String>| {
        over.clone()
            .or_else(|| default.clone())
            .filter(|c| !c.trim().is_empty())
            .map(|command| Check {
                name: name.into(),
                command,
            })
    };
    [
        pick("test", &verify.test, &profile.checks.test),
        pick("lint", &verify.lint, &profile.checks.lint),
        pick("typecheck", &verify.typecheck, &profile.checks.typecheck),
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub struct VerifyRequest<'a> {
    pub image: &'a str,
    pub snapshot_tree: &'a str,
    pub new_tree: &'a str,
    pub checks: &'a [Check],
    pub limits: &'a Limits,
    pub timeout: Duration,
    pub run_id: &'a str,
    pub unit_id: &'a str,
    pub log: &'a Path,
}

/// Runs the checks against `new_tree` (whose objects must be in `repo`).
pub async fn verify(
    engine: &Engine,
    repo: &Repo,
    req: &VerifyRequest<'_>,
    on_line: &(dyn Fn(&str) + Sync),
) -> Result<Verdict> {
    let mut host = hardened_host_config(req.limits);
    host.network_mode = Some("none".into());
    let id = engine
        .create_container(ContainerCreateBody {
            image: Some(req.image.to_string()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            working_dir: Some("/work".into()),
            labels: Some(HashMap::from([
                (labels::KIND.to_string(), "verify".to_string()),
                (labels::RUN.to_string(), req.run_id.to_string()),
                (labels::UNIT.to_string(), req.unit_id.to_string()),
            ])),
            network_disabled: Some(true),
            host_config: Some(host),
            ..Default::default()
        })
        .await?;
    let result = run_checks(engine, repo, &id, req, on_line).await;
    engine.remove_container(&id).await?;
    result
}

async fn run_checks(
    engine: &Engine,
    repo: &Repo,
    id: &str,
    req: &VerifyRequest<'_>,
    on_line: &(dyn Fn(&str) + Sync),
) -> Result<Verdict> {
    engine.start(id).await?;
    // Make /work hold exactly the new tree: deletions, then the changed entries.
    let diff = snapshot::diff_trees(repo, req.snapshot_tree, req.new_tree)?;
    if !diff.deleted.is_empty() {
        engine
            .upload(id, "/tmp", images::deletion_list(&diff.deleted)?)
            .await?;
        let code = engine
            .exec(
                id,
                vec!["sh".into(), "-c".into(), images::DELETE_SCRIPT.into()],
                "/work",
                |_| {},
            )
            .await?;
        if code != 0 {
            return Err(Error::Internal(format!(
                "applying deletions in the verify container failed (exit {code})"
            )));
        }
    }
    let (body, done) = images::tar_body(repo.clone(), diff.upserted.clone(), vec![]);
    engine.upload(id, "/work", body).await?;
    images::join_tar(done).await?;

    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(req.log)
        .map_err(|e| Error::io(format!("opening {}", req.log.display()), e))?;
    let mut results = Vec::new();
    let mut passed = true;
    for check in req.checks {
        let started = Instant::now();
        let _ = writeln!(log, "$ {}", check.command);
        on_line(&format!("verify {}: {}", check.name, check.command));
        let mut tail: Vec<String> = Vec::new();
        let mut partial = String::new();
        // Summary lines come last: keep the end of the output for counting tests.
        let mut recent = String::new();
        let exec = engine.exec(
            id,
            vec!["sh".into(), "-c".into(), check.command.clone()],
            "/work",
            |chunk| {
                let _ = log.write_all(chunk);
                let text = String::from_utf8_lossy(chunk);
                recent.push_str(&text);
                if recent.len() > 512 * 1024 {
                    let mut cut = recent.len() - 256 * 1024;
                    while !recent.is_char_boundary(cut) {
                        cut += 1;
                    }
                    recent.drain(..cut);
                }
                partial.push_str(&text);
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let line = line.trim_end().to_string();
                    on_line(&line);
                    tail.push(line);
                    if tail.len() > 30 {
                        tail.remove(0);
                    }
                }
            },
        );
        let code = match tokio::time::timeout(req.timeout, exec).await {
            Ok(code) => Some(code?),
            Err(_) => None,
        };
        if !partial.is_empty() {
            tail.push(partial.trim_end().to_string());
        }
        let tests = (check.name == "test")
            .then(|| counts::count(&recent))
            .flatten();
        let (ok, note) = match (code, &tests) {
            (None, _) => (
                false,
                Some(format!(
                    "stopped after {}s (timeout)",
                    req.timeout.as_secs()
                )),
            ),
            (Some(0), Some(t)) if t.total == 0 => (
                false,
                Some(format!("{} ran zero tests, which is not a pass", t.runner)),
            ),
            (Some(0), None) if check.name == "test" => (
                true,
                Some("test runner not recognised: judged by its exit code alone".into()),
            ),
            (Some(c), _) => (c == 0, None),
        };
        passed &= ok;
        results.push(CheckResult {
            name: check.name.clone(),
            command: check.command.clone(),
            exit_code: code,
            seconds: started.elapsed().as_secs_f64(),
            tail: tail.join("\n"),
            tests,
            passed: ok,
            note,
        });
        if code.is_none() {
            break; // the container is busy with the timed-out check; the rest cannot run cleanly
        }
    }
    Ok(Verdict {
        passed,
        checks: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_keys_override_and_disable_profile_checks() {
        let mut profile: Profile = crate::config::parse_toml(
            "description = \"d\"\nimage = \"i\"\n[checks]\ntest = \"pytest\"\nlint = \"ruff\"\n",
            Path::new("p"),
        )
        .unwrap();
        profile.name = "p".into();
        let none = VerifyConfig::default();
        let names: Vec<String> = checks(&profile, &none)
            .into_iter()
            .map(|c| c.command)
            .collect();
        assert_eq!(names, ["pytest", "ruff"]);
        let over = VerifyConfig {
            test: Some("make test".into()),
            lint: Some("".into()),
            ..Default::default()
        };
        let names: Vec<String> = checks(&profile, &over)
            .into_iter()
            .map(|c| c.command)
            .collect();
        assert_eq!(names, ["make test"]);
    }
}
