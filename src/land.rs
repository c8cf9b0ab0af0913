//! Landing a tree as a commit on a host branch, with plumbing only.
//!
//! `commit-tree` with the snapshot commit as parent; if the branch moved meanwhile,
//! `merge-tree --write-tree` onto its head (a conflict writes nothing); then `update-ref` with
//! the expected old value, so a concurrent change of the branch is never overwritten. The
//! user's index and working tree are touched only when the target is the checked-out branch and
//! the working tree is clean.
//!
//! May not: overwrite a branch that moved; touch a dirty working tree or one whose branch is not
//! the target.

use std::path::Path;

use crate::error::{Error, Result};
use crate::git::Repo;
use crate::record::Landed;
use crate::verify::Verified;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// Trailer keys recorded on every landed commit.
pub const TRAILER_UNIT: &str = "Boxdelegate-Unit";
/// The verification of the tree that landed: its tree id and verdict.
pub const TRAILER_VERIFIED: &str = "Boxdelegate-Verified";
/// The sha256 of the verification record (`sha256:<hex>`), which `verify --replay COMMIT` reads.
pub const TRAILER_RECORD: &str = "Boxdelegate-Record";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LandRequest {
    pub branch: String,
    pub snapshot_commit: String,
    pub snapshot_tree: String,
    pub tree: String,
    pub unit_id: String,
    pub title: String,
    pub body: String,
    pub agent: String,
    pub co_author: String,
    pub patch_sha256: String,
}

/// Validates a branch name as git would (`git check-ref-format --branch`).
pub fn check_branch_name(repo: &Repo, name: &str) -> Result<()> {
    let ok = !name.starts_with('-')
        && repo
            .run(&["check-ref-format", "--branch", name])
            .is_ok_and(|out| String::from_utf8_lossy(&out).trim() == name);
    if ok {
        Ok(())
    } else {
        Err(Error::Usage {
            message: format!("{name:?} is not a valid branch name"),
            hint: "pick a name git accepts (see `git check-ref-format --branch NAME`)".into(),
        })
    }
}

/// Checks a landing target before any work: a valid branch name, and if it is the checked-out
/// branch, a clean working tree.
pub fn check_target(repo: &Repo, branch: &str) -> Result<()> {
    check_branch_name(repo, branch)?;
    if checked_out_branch(repo).as_deref() == Some(branch) && !worktree_clean(repo)? {
        return Err(Error::Repo {
            path: repo.root.clone(),
            message: format!(
                "the target branch {branch} is checked out and the working tree has uncommitted changes"
            ),
            hint: Some(
                "commit or stash your changes first, or land on another branch (--branch; the default is boxdelegate/<unit-id>)".into(),
            ),
        });
    }
    Ok(())
}

/// The branch checked out in the repository's work tree, if any.
pub fn checked_out_branch(repo: &Repo) -> Option<String> {
    repo.text(&["symbolic-ref", "-q", "HEAD"])
        .ok()
        .and_then(|r| r.strip_prefix("refs/heads/").map(str::to_string))
}

/// Whether the work tree and index have no changes to tracked files.
pub fn worktree_clean(repo: &Repo) -> Result<bool> {
    let out = repo.run(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--ignore-submodules",
    ])?;
    Ok(out.is_empty())
}

/// A commit on `branch` (or `HEAD`) that already carries this unit's trailer.
pub fn find_landed(repo: &Repo, branch: &str, unit_id: &str) -> Result<Option<String>> {
    let mut args = vec![
        "log".to_string(),
        "-n".into(),
        "500".into(),
        format!("--format=%H%x09%(trailers:key={TRAILER_UNIT},valueonly,separator=%x2C)"),
        "HEAD".into(),
    ];
    if repo.resolve(&format!("refs/heads/{branch}"))?.is_some() {
        args.push(format!("refs/heads/{branch}"));
    }
    args.push("--".into());
    let out = repo.text(&args)?;
    Ok(out.lines().find_map(|line| {
        let (commit, units) = line.split_once('\t')?;
        units
            .split(',')
            .any(|u| u.trim() == unit_id)
            .then(|| commit.to_string())
    }))
}

/// Copies the loose objects of the private store into the repository's object database (no
/// overwrite: objects are content-addressed).
pub fn import_objects(repo: &Repo, store: &Path) -> Result<()> {
    let dest = repo.common_dir.join("objects");
    let Ok(dirs) = std::fs::read_dir(store) else {
        return Ok(());
    };
    for dir in dirs.flatten() {
        let name = dir.file_name();
        let name = name.to_string_lossy();
        if name.len() != 2 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let target_dir = dest.join(&*name);
        for obj in std::fs::read_dir(dir.path())
            .map_err(|e| Error::io("reading the object store", e))?
            .flatten()
        {
            let target = target_dir.join(obj.file_name());
            if target.exists() {
                continue;
            }
            std::fs::create_dir_all(&target_dir)
                .map_err(|e| Error::io(format!("creating {}", target_dir.display()), e))?;
            let tmp = target_dir.join(format!(
                ".tmp-boxdelegate-{}",
                obj.file_name().to_string_lossy()
            ));
            std::fs::copy(obj.path(), &tmp).map_err(|e| Error::io("copying an object", e))?;
            std::fs::rename(&tmp, &target).map_err(|e| Error::io("copying an object", e))?;
        }
    }
    Ok(())
}

/// The author and committer: the caller's `GIT_AUTHOR_*` if set, else the user's git identity,
/// else a neutral one. Only these values are read from the user's configuration.
fn identity(repo: &Repo) -> Vec<(String, String)> {
    let read = |key: &str| crate::git::user_config(&repo.root, key);
    let name = read("user.name").unwrap_or_else(|| "boxdelegate".into());
    let email = read("user.email").unwrap_or_else(|| "boxdelegate@localhost".into());
    let mut env = Vec::new();
    for (var, value) in [
        ("GIT_AUTHOR_NAME", &name),
        ("GIT_AUTHOR_EMAIL", &email),
        ("GIT_COMMITTER_NAME", &name),
        ("GIT_COMMITTER_EMAIL", &email),
    ] {
        if std::env::var_os(var).is_none() {
            env.push((var.to_string(), value.clone()));
        }
    }
    env
}

pub fn message(req: &LandRequest, verified: &Verified) -> String {
    let mut body = req.body.trim().to_string();
    if body.len() > 4000 {
        let mut cut = 4000;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push_str("\n[…]");
    }
    let record = verified
        .record()
        .map(|r| format!("{TRAILER_RECORD}: sha256:{r}\n"))
        .unwrap_or_default();
    format!(
        "{}\n\n{}\n\n{TRAILER_UNIT}: {}\nBoxdelegate-Agent: {}\nBoxdelegate-Snapshot: {}\nBoxdelegate-Patch-Sha256: {}\n{TRAILER_VERIFIED}: {}\n{record}Co-authored-by: {}\n",
        req.title.trim(),
        body,
        req.unit_id,
        req.agent,
        req.snapshot_tree,
        req.patch_sha256,
        verified.trailer(),
        req.co_author
    )
}

fn commit_tree(repo: &Repo, tree: &str, parent: &str, msg: &str) -> Result<String> {
    let mut cmd = repo.cmd()?;
    for (k, v) in identity(repo) {
        cmd.env(k, v);
    }
    let out = repo.run_with(
        cmd,
        &["commit-tree", tree, "-p", parent, "-F", "-"],
        Some(msg.as_bytes()),
    )?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// Where a change would land, worked out before anything is committed.
#[derive(Debug, Clone)]
pub enum Prepared {
    Ready {
        /// The branch head the commit will be made against (None: the branch is new).
        old: Option<String>,
        /// When the branch had moved: its head, and the merged tree (the tree that lands,
        /// which differs from the verified one).
        merged: Option<(String, String)>,
    },
    /// The branch's head already holds exactly the tree that would land: nothing to commit.
    Already {
        head: String,
    },
    Conflict(Landed),
}

impl Prepared {
    /// The tree that would land.
    pub fn tree<'a>(&'a self, req: &'a LandRequest) -> Option<&'a str> {
        match self {
            Prepared::Ready {
                merged: Some((_, tree)),
                ..
            } => Some(tree),
            Prepared::Ready { merged: None, .. } => Some(&req.tree),
            _ => None,
        }
    }
}

/// Works out where `req.tree` lands on `req.branch`: on the snapshot commit, or merged onto the
/// branch head when it moved. Writes objects only (a candidate commit to merge), never a ref.
pub fn prepare(repo: &Repo, req: &LandRequest) -> Result<Prepared> {
    let refname = format!("refs/heads/{}", req.branch);
    let old = repo.resolve(&refname)?;
    let Some(head) = old.clone() else {
        return Ok(Prepared::Ready { old, merged: None });
    };
    let head_tree = repo.text(&["rev-parse", &format!("{head}^{{tree}}")])?;
    if head_tree == req.tree {
        return Ok(Prepared::Already { head });
    }
    if head == req.snapshot_commit {
        return Ok(Prepared::Ready { old, merged: None });
    }
    let candidate = commit_tree(
        repo,
        &req.tree,
        &req.snapshot_commit,
        &format!("boxdelegate: candidate for {}\n", req.unit_id),
    )?;
    let out = repo
        .cmd()?
        .args(["merge-tree", "--write-tree", "--name-only", "--no-messages"])
        .arg(format!("--merge-base={}", req.snapshot_commit))
        .arg(&head)
        .arg(&candidate)
        .output()
        .map_err(|e| Error::io("running git merge-tree", e))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => {
            let merged = text.lines().next().unwrap_or_default().trim().to_string();
            // The branch already holds the change (a re-run of a unit that landed): merging
            // it again changes nothing, and an empty commit is no landing.
            if merged == head_tree {
                return Ok(Prepared::Already { head });
            }
            Ok(Prepared::Ready {
                old,
                merged: Some((head, merged)),
            })
        }
        Some(1) => {
            let paths = text
                .lines()
                .skip(1)
                .take_while(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            Ok(Prepared::Conflict(Landed::Conflict {
                branch: req.branch.clone(),
                head,
                paths,
            }))
        }
        _ => Err(Error::Git {
            args: "merge-tree --write-tree".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// The commit that will land, made from a [`Prepared::Ready`] and the [`Verified`] key of the
/// tree it holds; only [`commit`] makes one, and only [`finish`] moves a branch, to one.
#[derive(Debug, Clone)]
pub struct Commit {
    id: String,
    old: Option<String>,
    rebased_onto: Option<String>,
}

impl Commit {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn old(&self) -> Option<&str> {
        self.old.as_deref()
    }
}

/// Makes the commit for a prepared landing. The landing gate: `verified` must be the key of
/// exactly the tree that lands (the merged tree when the branch moved), else nothing is made.
pub fn commit(
    repo: &Repo,
    req: &LandRequest,
    prepared: &Prepared,
    verified: &Verified,
) -> Result<Commit> {
    let Prepared::Ready { old, merged } = prepared else {
        return Err(Error::Internal(
            "only a prepared landing that is ready can be committed".into(),
        ));
    };
    let tree = prepared.tree(req).unwrap_or_default();
    if verified.tree() != tree {
        return Err(Error::Internal(format!(
            "landing gate: tree {tree} would land on {} but the verification is of tree {}; nothing landed",
            req.branch,
            verified.tree()
        )));
    }
    let msg = message(req, verified);
    let (parent, rebased_onto) = match merged {
        Some((head, _)) => (head.as_str(), Some(head.clone())),
        None => (req.snapshot_commit.as_str(), None),
    };
    Ok(Commit {
        id: commit_tree(repo, tree, parent, &msg)?,
        old: old.clone(),
        rebased_onto,
    })
}

/// Lands `req.tree` on `req.branch` with its verification `verified` of that tree; when the
/// branch moved, the merged tree lands only with `merged_key`'s key for it (`None`: the merged
/// tree is not verified, and nothing lands: the result says so).
pub fn land(
    repo: &Repo,
    req: &LandRequest,
    verified: &Verified,
    merged_key: impl FnOnce(&str) -> Option<Verified>,
) -> Result<std::result::Result<Landed, String>> {
    let prepared = prepare(repo, req)?;
    let key = match &prepared {
        Prepared::Conflict(landed) => return Ok(Ok(landed.clone())),
        Prepared::Already { head } => return Ok(Ok(already(req, head))),
        Prepared::Ready {
            merged: Some((head, tree)),
            ..
        } => match merged_key(tree) {
            Some(k) => k,
            None => {
                return Ok(Err(format!(
                "{} moved to {} since the change was verified, and the merged tree is not verified",
                req.branch,
                &head[..head.len().min(12)]
            )))
            }
        },
        Prepared::Ready { merged: None, .. } => verified.clone(),
    };
    let commit = commit(repo, req, &prepared, &key)?;
    Ok(Ok(finish(repo, req, commit)?))
}

/// What landing says when the branch already holds the tree.
pub fn already(req: &LandRequest, head: &str) -> Landed {
    Landed::Already {
        commit: head.to_string(),
        branch: req.branch.clone(),
    }
}

/// Moves the branch to a landing's commit (compare-and-swap on the head it was made against).
pub fn finish(repo: &Repo, req: &LandRequest, commit: Commit) -> Result<Landed> {
    let Commit {
        id: new,
        old,
        rebased_onto,
    } = commit;
    let refname = format!("refs/heads/{}", req.branch);
    let expected = old.clone().unwrap_or_else(|| ZERO.to_string());
    let update_ref = || {
        repo.run(&[
            "update-ref",
            "-m",
            "boxdelegate: land",
            &refname,
            &new,
            &expected,
        ])
    };
    let checked_out = checked_out_branch(repo).as_deref() == Some(req.branch.as_str());
    let (worktree_updated, note) = match old.as_deref() {
        Some(old) if checked_out && worktree_clean(repo)? => {
            // `status` compared contents where stat information was stale, but `read-tree`
            // trusts only stat information: refresh it first.
            repo.run(&["update-index", "-q", "--refresh"])?;
            // Index and work tree first, then the ref (compare-and-swap); undo on a lost race.
            repo.run(&["read-tree", "-m", "-u", old, &new])?;
            if let Err(e) = update_ref() {
                let _ = repo.run(&["read-tree", "-m", "-u", &new, old]);
                return Err(e);
            }
            (true, None)
        }
        Some(old) if checked_out => {
            update_ref()?;
            (false, Some(format!(
                "{} is checked out with local changes, so only the branch moved; once your changes are committed or stashed, bring the files in with: git read-tree -m -u {old} {new}",
                req.branch
            )))
        }
        _ => {
            update_ref()?;
            (false, None)
        }
    };
    Ok(Landed::Committed {
        commit: new,
        branch: req.branch.clone(),
        rebased_onto,
        worktree_updated,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_has_title_body_and_trailers() {
        let req = LandRequest {
            branch: "b".into(),
            snapshot_commit: "c".into(),
            snapshot_tree: "t0".into(),
            tree: "t1".into(),
            unit_id: "wu-auth".into(),
            title: "Add login".into(),
            body: "Do it.".into(),
            agent: "command".into(),
            co_author: "A <a@b>".into(),
            patch_sha256: "ff".into(),
        };
        let checks = [crate::verify::Check {
            name: "test".into(),
            command: "make test".into(),
        }];
        let v = crate::verify::Verified::without_checks("t1", &[]).unwrap();
        assert!(crate::verify::Verified::without_checks("t1", &checks).is_err());
        let m = message(&req, &v);
        assert!(
            m.starts_with("Add login\n\nDo it.\n\nBoxdelegate-Unit: wu-auth\n"),
            "{m}"
        );
        assert!(
            m.contains("Boxdelegate-Patch-Sha256: ff\nBoxdelegate-Verified: t1 none: the project configures no checks\nCo-authored-by: A <a@b>\n"),
            "{m}"
        );
    }
}
