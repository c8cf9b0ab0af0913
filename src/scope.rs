//! The scope policy: which changes a unit may make. Pure functions over a change set.
//!
//! Fixed denials hold for every unit (`.git` paths, names git or a terminal would misread,
//! special files, symlinks leaving the tree, setuid/setgid, unexpected executable bits, size and
//! count limits); then the unit's own globs (scope, deny, protected). Every rejection names the
//! path, the rule and what to do.
//!
//! May not: read a file, call the engine or git: it judges the change set it is given.

use std::path::Path;

use crate::change::{bad_name, display_path, is_git_path, Change, ChangeKind, ChangeSet, Node};
use crate::config::unit::UnitGlobs;
use crate::config::Limits;
use crate::record::Rejection;

/// Whether a relative symlink at `path` pointing to `target` stays inside the tree.
pub fn symlink_stays_inside(path: &[u8], target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return false;
    }
    let mut depth: i64 = path.split(|b| *b == b'/').count() as i64 - 1;
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// How many links one resolution may follow before it counts as a loop (Linux's own bound).
pub const MAX_LINK_HOPS: usize = 40;

/// Why a symlink of the new tree is refused, resolved as a checkout's file system would resolve
/// it: against the tree itself, other links included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEscape {
    /// Resolves to a place above the repository's root, or to an absolute path.
    Leaves,
    /// Resolves into a `.git` directory (the repository's own metadata, hooks included).
    EntersGit,
    /// Follows more than [`MAX_LINK_HOPS`] links: a loop.
    Loops,
}

/// The links one resolution went through, the first link first.
pub type Chain = Vec<Vec<u8>>;

/// Resolves the symlink at `path` through `links` (every symlink of the new tree: path →
/// target). `Ok` with the links followed (the chain, the link itself first) when it stays in
/// the tree; else why not, with the chain so far.
pub fn resolve_link(
    links: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    path: &[u8],
) -> Result<Chain, (LinkEscape, Chain)> {
    use std::collections::VecDeque;
    let mut chain = vec![path.to_vec()];
    let Some(target) = links.get(path) else {
        return Ok(chain);
    };
    // Where we stand (directory components), and what is left to walk.
    let mut at: Vec<Vec<u8>> = path.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
    at.pop();
    let mut todo: VecDeque<Vec<u8>> = VecDeque::new();
    let mut hops = 1;
    let start = |target: &[u8], todo: &mut VecDeque<Vec<u8>>| {
        for c in target.split(|b| *b == b'/').rev() {
            todo.push_front(c.to_vec());
        }
    };
    if target.starts_with(b"/") || target.is_empty() {
        return Err((LinkEscape::Leaves, chain));
    }
    start(target, &mut todo);
    while let Some(c) = todo.pop_front() {
        match c.as_slice() {
            b"" | b"." => {}
            b".." => {
                if at.pop().is_none() {
                    return Err((LinkEscape::Leaves, chain));
                }
            }
            name => {
                if crate::change::is_git_path(name) || name.eq_ignore_ascii_case(b".git") {
                    return Err((LinkEscape::EntersGit, chain));
                }
                at.push(name.to_vec());
                let here = at.join(&b'/');
                if let Some(next) = links.get(&here) {
                    hops += 1;
                    chain.push(here);
                    if hops > MAX_LINK_HOPS {
                        return Err((LinkEscape::Loops, chain));
                    }
                    if next.starts_with(b"/") || next.is_empty() {
                        return Err((LinkEscape::Leaves, chain));
                    }
                    at.pop();
                    start(next, &mut todo);
                }
            }
        }
    }
    Ok(chain)
}

/// The symlinks of the new tree (`links`: every one, path → target) that leave it, enter
/// `.git` or loop when a checkout resolves them, where the link itself or a link it goes
/// through is one the change wrote (`changed`): one rejection each, naming the chain.
pub fn check_links(
    links: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    changed: &std::collections::BTreeSet<Vec<u8>>,
) -> Vec<Rejection> {
    let mut out = Vec::new();
    for path in links.keys() {
        let (why, chain) = match resolve_link(links, path) {
            Ok(_) => continue,
            Err(e) => e,
        };
        if !chain.iter().any(|l| changed.contains(l)) {
            continue; // the snapshot's own, untouched
        }
        let steps: Vec<String> = chain
            .iter()
            .map(|l| {
                format!(
                    "{} -> {}",
                    display_path(l),
                    display_path(links.get(l).map(Vec::as_slice).unwrap_or_default())
                )
            })
            .collect();
        let what = match why {
            LinkEscape::Leaves => "leaves the repository",
            LinkEscape::EntersGit => "enters .git",
            LinkEscape::Loops => "loops",
        };
        out.push(Rejection {
            path: display_path(path),
            rule: "symlink-escape".into(),
            message: format!(
                "is a symlink that {what} when a checkout resolves it: {}",
                steps.join(", then ")
            ),
            hint: "use a relative symlink that stays inside the repository (not through .git), or copy the file".into(),
        });
    }
    out
}

/// Checks every change; an empty result means the change set is accepted.
pub fn check(
    changes: &ChangeSet,
    globs: &UnitGlobs,
    limits: &Limits,
    unit_file: &Path,
) -> Vec<Rejection> {
    let mut out = Vec::new();
    let unit_file = unit_file.display();
    let reject =
        |out: &mut Vec<Rejection>, path: &[u8], rule: &str, message: String, hint: String| {
            out.push(Rejection {
                path: display_path(path),
                rule: rule.into(),
                message,
                hint,
            });
        };
    if let Some(reason) = &changes.truncated {
        reject(
            &mut out,
            b"/work",
            reason.rule(),
            reason.to_string(),
            reason.hint(limits),
        );
        return out;
    }
    let count = changes.changes.len() as u64;
    if count > limits.max_files {
        reject(
            &mut out,
            b"*",
            "limit-files",
            format!(
                "{count} files changed, more than the limit of {}",
                limits.max_files
            ),
            "split the unit, or raise [limits] max_files".into(),
        );
    }
    let total: u64 = changes.changes.iter().map(|c| c.node.size()).sum();
    if total > limits.max_bytes {
        reject(
            &mut out,
            b"*",
            "limit-bytes",
            format!(
                "the change writes {total} bytes, more than the limit of {}",
                limits.max_bytes
            ),
            "raise [limits] max_bytes if this much output is expected".into(),
        );
    }
    for change in &changes.changes {
        check_one(&mut out, change, globs, limits, &unit_file.to_string());
    }
    out
}

fn check_one(
    out: &mut Vec<Rejection>,
    change: &Change,
    globs: &UnitGlobs,
    limits: &Limits,
    unit_file: &str,
) {
    let path = &change.path;
    let mut reject = |rule: &str, message: String, hint: String| {
        out.push(Rejection {
            path: display_path(path),
            rule: rule.into(),
            message,
            hint,
        });
    };
    if is_git_path(path) {
        reject(
            "git-path",
            "writes inside a .git directory".into(),
            "agents must not touch git metadata; boxdelegate commits for them".into(),
        );
        return;
    }
    if let Some(why) = bad_name(path) {
        reject(
            "path-name",
            format!("the file name {why}"),
            "use plain UTF-8 file names".into(),
        );
        return;
    }
    match &change.node {
        Node::Special { what } => reject(
            "special-file",
            format!("is a {what}"),
            "only regular files, directories and symlinks can be landed".into(),
        ),
        Node::Symlink { target }
            if change.kind != ChangeKind::Deleted && !symlink_stays_inside(path, target) =>
        {
            reject(
                "symlink-escape",
                format!(
                    "is a symlink to {}, outside the repository",
                    display_path(target)
                ),
                "use a relative symlink that stays inside the repository, or copy the file".into(),
            )
        }
        Node::File { mode, size, .. } if change.kind != ChangeKind::Deleted => {
            if mode & 0o6000 != 0 {
                reject(
                    "setuid",
                    format!("has the setuid/setgid bit (mode {mode:o})"),
                    "remove the bit (chmod u-s,g-s)".into(),
                );
            }
            let was_exec = change.old_mode.is_some_and(|m| m & 0o111 != 0);
            if mode & 0o111 != 0
                && !was_exec
                && !globs
                    .executable
                    .is_match(Path::new(&String::from_utf8_lossy(path).into_owned()))
            {
                reject(
                    "exec-bit",
                    "gains an executable bit".into(),
                    format!(
                        "allow it with executable = [\"{}\"] in {unit_file}",
                        display_path(path)
                    ),
                );
            }
            if *size > limits.max_bytes {
                reject(
                    "file-size",
                    format!("is {size} bytes, over the limit of {}", limits.max_bytes),
                    "raise [limits] max_bytes if this is expected".into(),
                );
            }
        }
        _ => {}
    }
    let p = Path::new(std::str::from_utf8(path).unwrap_or_default());
    if !globs.scope.is_match(p) {
        reject(
            "out-of-scope",
            format!(
                "{} but the unit allows only {}",
                change.kind.verb(),
                globs.scope.patterns.join(", ")
            ),
            format!("widen scope in {unit_file}, or tell the agent to leave this file alone"),
        );
    } else if globs.deny.is_match(p) {
        reject(
            "denied",
            format!(
                "{} but matches deny {}",
                change.kind.verb(),
                globs.deny.patterns.join(", ")
            ),
            format!("remove it from deny in {unit_file} if the change is intended"),
        );
    }
    if globs.protected.is_match(p) {
        reject(
            "protected",
            format!("{} but is protected", change.kind.verb()),
            "protected files (e.g. the tests that define done) may not be modified by the agent"
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::unit::Globs;

    fn globs(scope: &[&str]) -> UnitGlobs {
        let g =
            |v: &[&str]| Globs::new(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        UnitGlobs {
            scope: g(scope),
            deny: g(&["src/secret/**"]),
            protected: g(&["tests/spec.rs"]),
            executable: g(&["bin/*"]),
            hidden: g(&[]),
        }
    }

    fn file(path: &str, kind: ChangeKind, mode: u32, old_mode: Option<u32>) -> Change {
        Change {
            path: path.as_bytes().to_vec(),
            kind,
            node: Node::File {
                mode,
                size: 3,
                blob: None,
            },
            old_mode,
        }
    }

    fn rules(changes: Vec<Change>) -> Vec<(String, String)> {
        let set = ChangeSet {
            changes,
            ..Default::default()
        };
        check(
            &set,
            &globs(&["src/**", "tests/**", "bin/*"]),
            &Limits::default(),
            Path::new("units/u.md"),
        )
        .into_iter()
        .map(|r| (r.path, r.rule))
        .collect()
    }

    #[test]
    fn links_are_resolved_through_other_links_as_a_checkout_would() {
        use std::collections::{BTreeMap, BTreeSet};
        let links = |pairs: &[(&str, &str)]| -> BTreeMap<Vec<u8>, Vec<u8>> {
            pairs
                .iter()
                .map(|(p, t)| (p.as_bytes().to_vec(), t.as_bytes().to_vec()))
                .collect()
        };
        let all =
            |l: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeSet<Vec<u8>> { l.keys().cloned().collect() };
        // The chain the issue names: each link alone stays inside.
        let l = links(&[
            ("calc/up", ".."),
            ("calc/esc", "up/calc/up/calc/up/../../etc/passwd"),
        ]);
        assert!(symlink_stays_inside(b"calc/up", b".."));
        assert!(symlink_stays_inside(
            b"calc/esc",
            b"up/calc/up/calc/up/../../etc/passwd"
        ));
        let r = check_links(&l, &all(&l));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].path, "calc/esc");
        assert!(
            r[0].message.contains("leaves the repository"),
            "{}",
            r[0].message
        );
        assert!(r[0].message.contains("calc/up -> .."), "{}", r[0].message);
        // Into .git, directly or through a link.
        for (p, t) in [("a/hooks", "../.git/hooks"), ("a/g", "../.GIT")] {
            let l = links(&[(p, t)]);
            assert_eq!(
                resolve_link(&l, p.as_bytes()).unwrap_err().0,
                LinkEscape::EntersGit
            );
        }
        let l = links(&[("a/root", ".."), ("a/h", "root/.git/config")]);
        assert_eq!(
            resolve_link(&l, b"a/h").unwrap_err().0,
            LinkEscape::EntersGit
        );
        // Loops.
        let l = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(resolve_link(&l, b"a").unwrap_err().0, LinkEscape::Loops);
        let l = links(&[("x/self", "../x/self/y")]);
        assert_eq!(
            resolve_link(&l, b"x/self").unwrap_err().0,
            LinkEscape::Loops
        );
        // Fine: inside, through links, dangling inside.
        let l = links(&[
            ("a/up", ".."),
            ("a/doc", "up/docs/readme.md"),
            ("b", "nowhere/yet"),
        ]);
        assert!(check_links(&l, &all(&l)).is_empty());
        assert_eq!(resolve_link(&l, b"a/doc").unwrap().len(), 2);
        // A snapshot's own escaping link the change did not touch is not the change's.
        let l = links(&[("old", "/etc"), ("new", "docs")]);
        let changed: BTreeSet<Vec<u8>> = [b"new".to_vec()].into();
        assert!(check_links(&l, &changed).is_empty());
        // But a new link through it is.
        let l = links(&[("old", ".."), ("new", "old/x")]);
        assert_eq!(check_links(&l, &changed).len(), 1);
    }

    #[test]
    fn in_scope_changes_pass() {
        assert!(rules(vec![
            file("src/a.rs", ChangeKind::Added, 0o644, None),
            file("src/b.rs", ChangeKind::Deleted, 0o644, Some(0o644))
        ])
        .is_empty());
    }

    #[test]
    fn each_rule_names_path_and_rule() {
        let r = rules(vec![
            file("docs/x.md", ChangeKind::Modified, 0o644, Some(0o644)),
            file("src/secret/k.rs", ChangeKind::Added, 0o644, None),
            file("tests/spec.rs", ChangeKind::Deleted, 0o644, Some(0o644)),
            file("src/.git/hooks/pre-commit", ChangeKind::Added, 0o755, None),
            file("src/run.sh", ChangeKind::Modified, 0o755, Some(0o644)),
            file("bin/tool", ChangeKind::Added, 0o755, None),
            file("src/was-exec.sh", ChangeKind::Modified, 0o755, Some(0o755)),
            file("src/suid", ChangeKind::Added, 0o4755, None),
            file("src/a\nb", ChangeKind::Added, 0o644, None),
        ]);
        let expect = [
            ("docs/x.md", "out-of-scope"),
            ("src/secret/k.rs", "denied"),
            ("tests/spec.rs", "protected"),
            ("src/.git/hooks/pre-commit", "git-path"),
            ("src/run.sh", "exec-bit"),
            ("src/suid", "setuid"),
            ("src/a\\nb", "path-name"),
        ];
        for (p, rule) in expect {
            assert!(
                r.contains(&(p.to_string(), rule.to_string())),
                "{p} {rule}: {r:?}"
            );
        }
        assert!(
            !r.iter()
                .any(|(p, _)| p == "bin/tool" || p == "src/was-exec.sh"),
            "{r:?}"
        );
    }

    #[test]
    fn a_rename_is_checked_on_its_old_and_new_paths() {
        // Extraction sees a rename as a deletion plus an addition; both paths must be allowed.
        let out = rules(vec![
            file("docs/old.md", ChangeKind::Deleted, 0o644, Some(0o644)),
            file("src/new.md", ChangeKind::Added, 0o644, None),
        ]);
        assert_eq!(
            out,
            vec![("docs/old.md".to_string(), "out-of-scope".to_string())]
        );
        let out = rules(vec![
            file("src/old.md", ChangeKind::Deleted, 0o644, Some(0o644)),
            file("docs/new.md", ChangeKind::Added, 0o644, None),
        ]);
        assert_eq!(
            out,
            vec![("docs/new.md".to_string(), "out-of-scope".to_string())]
        );
    }

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(symlink_stays_inside(b"src/a", b"b"));
        assert!(symlink_stays_inside(b"src/a", b"../README.md"));
        assert!(!symlink_stays_inside(b"src/a", b"../../etc/passwd"));
        assert!(!symlink_stays_inside(b"a", b"/etc/passwd"));
        assert!(!symlink_stays_inside(b"a", b""));
        assert!(symlink_stays_inside(b"a/b/c", b"../d/../../e"));
        assert!(!symlink_stays_inside(b"a/b/c", b"../../../e"));
    }

    #[test]
    fn names_are_checked() {
        assert!(bad_name(b"ok/name.rs").is_none());
        assert!(bad_name(b"a/../b").is_some());
        assert!(bad_name(&[b'a', 0xff]).is_some());
        assert!(bad_name(b"a\tb").is_some());
        assert_eq!(display_path(&[b'a', 0xff, b'\n']), "a\\xff\\n");
        assert!(is_git_path(b"x/.GIT/config"));
        assert!(is_git_path(b".git"));
        assert!(!is_git_path(b".github/workflows/ci.yml"));
    }
}
