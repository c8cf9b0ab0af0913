//! The change's new objects run through git's own object checks before anything lands: `git
//! fsck --strict` over the private object store alone (the repository's objects are read as
//! alternates, not checked), with every warning taken as a refusal. What git refuses or warns
//! about (`.gitmodules`, `.gitattributes`, `.gitignore` or `.mailmap` as symlinks, `.git`
//! written another way: `git~1`, `.g\u{200c}it`, …) is rejected with git's own message id.
//! git's rules are git's: they are not re-implemented here.
//!
//! May not: run git inside a directory the box wrote; check anything but the private store.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::git::Repo;
use crate::record::Rejection;

/// The objects of `store` as git's fsck judges them; `tree` (the change's new tree, in the
/// store or the repository) names where each refused tree sits.
pub fn check(repo: &Repo, store: &Path, tree: &str) -> Result<Vec<Rejection>> {
    let mut cmd = repo.store_cmd(store)?;
    cmd.args([
        "-c",
        "core.protectNTFS=true",
        "-c",
        "core.protectHFS=true",
        "fsck",
        "--no-full",
        "--strict",
        "--no-dangling",
        "--no-progress",
        "--no-reflogs",
    ]);
    let out = cmd
        .output()
        .map_err(|e| Error::io("running git fsck on the change's objects", e))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<(String, String, String)> = text.lines().filter_map(parse).collect();
    if found.is_empty() && !out.status.success() {
        // fsck failed without saying what it refuses: no evidence the objects are sound.
        return Ok(vec![Rejection {
            path: "*".into(),
            rule: "git-fsck".into(),
            message: format!(
                "git fsck of the change's objects failed: {}",
                text.trim().chars().take(400).collect::<String>()
            ),
            hint: "nothing lands that git's own checks did not pass".into(),
        }]);
    }
    let places = if found.is_empty() {
        HashMap::new()
    } else {
        trees(repo, store, tree)?
    };
    Ok(found
        .into_iter()
        .map(|(id, msg_id, message)| Rejection {
            path: places
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("(object {id})")),
            rule: "git-fsck".into(),
            message: format!("git fsck {msg_id}: {message}"),
            hint: "git itself refuses or warns about this tree (a server with receive.fsckObjects would refuse the push); use ordinary files and names".into(),
        })
        .collect())
}

/// A line `error in tree ID: msgId: text` or `warning in …` → (ID, msgId, text).
fn parse(line: &str) -> Option<(String, String, String)> {
    let rest = line
        .strip_prefix("error in ")
        .or_else(|| line.strip_prefix("warning in "))?;
    let (what, rest) = rest.split_once(": ")?;
    let id = what.split(' ').nth(1)?.to_string();
    let (msg_id, text) = rest.split_once(": ").unwrap_or((rest, ""));
    Some((id, msg_id.to_string(), text.to_string()))
}

/// Every tree under `tree` (itself included, as ".") by id → its path.
fn trees(repo: &Repo, store: &Path, tree: &str) -> Result<HashMap<String, String>> {
    let out = repo.run_with(
        repo.store_cmd(store)?,
        &["ls-tree", "-r", "-t", "-z", "--full-tree", tree],
        None,
    )?;
    let mut map = HashMap::from([(tree.to_string(), ".".to_string())]);
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let meta = String::from_utf8_lossy(&record[..tab]);
        let mut parts = meta.split(' ');
        if parts.nth(1) == Some("tree") {
            if let Some(id) = parts.next() {
                map.insert(
                    id.to_string(),
                    crate::change::display_path(&record[tab + 1..]),
                );
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_gits_error_and_warning_lines() {
        assert_eq!(
            parse("error in tree d646: gitmodulesSymlink: .gitmodules is a symbolic link"),
            Some((
                "d646".into(),
                "gitmodulesSymlink".into(),
                ".gitmodules is a symbolic link".into()
            ))
        );
        assert_eq!(
            parse("warning in tree 6f7f: gitattributesSymlink: .gitattributes is a symlink")
                .map(|p| p.1),
            Some("gitattributesSymlink".into())
        );
        assert_eq!(parse("notice: No default references"), None);
    }
}
