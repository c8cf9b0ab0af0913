//! The agent's tree written with plumbing: blobs and trees hashed into the private object
//! store (no filters, no attributes), only the directories on the changed paths rewritten
//! from the snapshot's tree, every id git reports checked against the one computed here.
//!
//! May not: write into the user's repository (only the private store) or run git inside a directory
//! a container wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::path::Path;

use crate::error::{Error, Result};
use crate::git::Repo;
use sha1::Digest as _;

/// Runs git `args` (a command that writes objects and prints one id per line) in the private
/// store with `input`, and checks that git wrote exactly the `expected` ids.
pub(super) fn write_objects(
    repo: &Repo,
    store: &Path,
    args: &[&str],
    input: &[u8],
    expected: &[String],
) -> Result<()> {
    let out = repo.run_with(repo.store_cmd(store)?, args, Some(input))?;
    let got: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    if got != expected {
        return Err(Error::Internal(format!(
            "git {} disagreed with the computed object ids",
            args[0]
        )));
    }
    Ok(())
}

/// A path of a tree edit and what it holds afterwards: its mode (`100644`, `100755`,
/// `120000`) and blob id, or nothing (removed).
pub(super) type Edit<'a> = (Vec<u8>, Option<(&'a str, String)>);

/// One entry of a tree object: its mode as the object writes it (`100644`, `40000`, …) and
/// its object id.
pub(super) type TreeItem = (Vec<u8>, [u8; 20]);

/// Parses a tree object's content into name → (mode, id).
pub(super) fn parse_tree(data: &[u8]) -> Result<BTreeMap<Vec<u8>, TreeItem>> {
    let bad = || Error::Internal("git cat-file returned a malformed tree".into());
    let mut out = BTreeMap::new();
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
        if nul < space || rest.len() < nul + 21 {
            return Err(bad());
        }
        let mut id = [0u8; 20];
        id.copy_from_slice(&rest[nul + 1..nul + 21]);
        out.insert(rest[space + 1..nul].to_vec(), (rest[..space].to_vec(), id));
        rest = &rest[nul + 21..];
    }
    Ok(out)
}

/// A tree object's content in git's order (a tree's name sorts as if it ended in `/`).
pub(super) fn tree_content(items: &BTreeMap<Vec<u8>, TreeItem>) -> Vec<u8> {
    let mut sorted: Vec<(&Vec<u8>, &TreeItem)> = items.iter().collect();
    let key = |name: &[u8], mode: &[u8]| {
        let mut k = name.to_vec();
        if mode == b"40000" {
            k.push(b'/');
        }
        k
    };
    sorted.sort_by_key(|(name, (mode, _))| key(name, mode));
    let mut out = Vec::new();
    for (name, (mode, id)) in sorted {
        out.extend_from_slice(mode);
        out.push(b' ');
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(id);
    }
    out
}

pub(super) fn tree_id(content: &[u8]) -> [u8; 20] {
    let mut h = sha1::Sha1::new();
    h.update(format!("tree {}\0", content.len()).as_bytes());
    h.update(content);
    h.finalize().into()
}

/// The tree of `base` with `edits` applied (path → new mode and blob id, or `None` to
/// remove), written to `store`. Only the directories on the edited paths are read and
/// rewritten: the cost follows the change, not the tree (a temporary index costs the whole
/// tree twice). The ids computed here are checked against those git gives when writing.
pub(super) fn edit_tree(
    repo: &Repo,
    store: &Path,
    base: &str,
    edits: &[Edit<'_>],
) -> Result<String> {
    let decode = |hex_id: &str| -> Result<[u8; 20]> {
        let mut id = [0u8; 20];
        hex::decode_to_slice(hex_id.trim(), &mut id)
            .map_err(|_| Error::Internal(format!("not an object id: {hex_id}")))?;
        Ok(id)
    };
    // Every directory on an edited path, the root ("") included.
    let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::from([Vec::new()]);
    for (path, _) in edits {
        for (i, b) in path.iter().enumerate() {
            if *b == b'/' {
                dirs.insert(path[..i].to_vec());
            }
        }
    }
    // Read those that exist in the base, level by level (one cat-file per level).
    let mut listing: HashMap<Vec<u8>, BTreeMap<Vec<u8>, TreeItem>> = HashMap::new();
    let mut level: Vec<(Vec<u8>, String)> = vec![(Vec::new(), base.to_string())];
    while !level.is_empty() {
        let ids: Vec<&str> = level.iter().map(|(_, id)| id.as_str()).collect();
        let objects = repo.cat_batch(repo.store_cmd(store)?, &ids)?;
        let mut next = Vec::new();
        for ((dir, id), (kind, data)) in level.iter().zip(objects) {
            if kind != "tree" {
                return Err(Error::Internal(format!("git cat-file: {id} is a {kind}")));
            }
            let items = parse_tree(&data)?;
            for (name, (mode, id)) in &items {
                if mode.as_slice() != b"40000" {
                    continue;
                }
                let mut child = dir.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name);
                if dirs.contains(&child) {
                    next.push((child, hex::encode(id)));
                }
            }
            listing.insert(dir.clone(), items);
        }
        level = next;
    }
    // Rewrite bottom-up: the deepest directories first.
    let mut order: Vec<&Vec<u8>> = dirs.iter().collect();
    let depth = |d: &[u8]| {
        if d.is_empty() {
            0
        } else {
            d.iter().filter(|b| **b == b'/').count() + 1
        }
    };
    order.sort_by_key(|d| std::cmp::Reverse(depth(d)));
    let split = |path: &[u8]| -> (Vec<u8>, Vec<u8>) {
        match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (path[..i].to_vec(), path[i + 1..].to_vec()),
            None => (Vec::new(), path.to_vec()),
        }
    };
    let mut written: HashMap<Vec<u8>, Option<[u8; 20]>> = HashMap::new();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for dir in order {
        let mut items = listing.remove(dir).unwrap_or_default();
        // Subdirectories first (rewritten or emptied), then the files: a path that changed
        // from a directory to a file (or back) ends as what the change says.
        for (child, id) in written
            .iter()
            .filter(|(c, _)| !c.is_empty() && split(c).0 == *dir)
        {
            let name = split(child).1;
            match id {
                Some(id) => {
                    items.insert(name, (b"40000".to_vec(), *id));
                }
                None => {
                    if items.get(&name).is_some_and(|(m, _)| m == b"40000") {
                        items.remove(&name);
                    }
                }
            }
        }
        for (path, edit) in edits.iter().filter(|(p, _)| split(p).0 == *dir) {
            let name = split(path).1;
            match edit {
                Some((mode, id)) => {
                    let mode = mode.trim_start_matches('0').as_bytes().to_vec();
                    items.insert(name, (mode, decode(id)?));
                }
                None => {
                    if items.get(&name).is_some_and(|(m, _)| m != b"40000") {
                        items.remove(&name);
                    }
                }
            }
        }
        if items.is_empty() && !dir.is_empty() {
            written.insert(dir.clone(), None);
            continue;
        }
        let content = tree_content(&items);
        let id = tree_id(&content);
        for (name, (mode, item)) in &items {
            let kind = match mode.as_slice() {
                b"40000" => "040000 tree",
                b"160000" => "160000 commit",
                m => {
                    batch.extend_from_slice(m);
                    batch.extend_from_slice(b" blob ");
                    batch.extend_from_slice(hex::encode(item).as_bytes());
                    batch.push(b'\t');
                    batch.extend_from_slice(name);
                    batch.push(0);
                    continue;
                }
            };
            batch.extend_from_slice(format!("{kind} {}\t", hex::encode(item)).as_bytes());
            batch.extend_from_slice(name);
            batch.push(0);
        }
        batch.push(0);
        expected.push(hex::encode(id));
        written.insert(dir.clone(), Some(id));
    }
    write_objects(
        repo,
        store,
        &["mktree", "-z", "--missing", "--batch"],
        &batch,
        &expected,
    )?;
    Ok(expected
        .last()
        .cloned()
        .expect("the root is always written"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository whose HEAD tree holds `files` (path, content, executable).
    fn repo_with(files: &[(&str, &str, bool)]) -> (tempfile::TempDir, Repo, String) {
        let dir = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let out = crate::git::command(dir.path())
                .unwrap()
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        git(&["init", "-q"]);
        for (path, content, exec) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            git(&["add", path]);
            if *exec {
                git(&["update-index", "--chmod=+x", path]);
            }
        }
        let tree = git(&["write-tree"]).trim().to_string();
        let repo = Repo::discover(dir.path()).unwrap();
        (dir, repo, tree)
    }

    /// What git makes of the same edits through a temporary index.
    fn through_index(repo: &Repo, store: &Path, base: &str, edits: &[Edit<'_>]) -> String {
        let index = store.join("index");
        let cmd = || {
            let mut c = repo.store_cmd(store).unwrap();
            c.env("GIT_INDEX_FILE", &index);
            c
        };
        repo.run_with(cmd(), &["read-tree", base], None).unwrap();
        let mut info = Vec::new();
        for (path, edit) in edits {
            match edit {
                None => info.extend_from_slice(b"0 0000000000000000000000000000000000000000\t"),
                Some((mode, id)) => info.extend_from_slice(format!("{mode} {id}\t").as_bytes()),
            }
            info.extend_from_slice(path);
            info.push(0);
        }
        repo.run_with(cmd(), &["update-index", "-z", "--index-info"], Some(&info))
            .unwrap();
        String::from_utf8(repo.run_with(cmd(), &["write-tree"], None).unwrap())
            .unwrap()
            .trim()
            .to_string()
    }

    fn blob(repo: &Repo, store: &Path, data: &str) -> String {
        let out = repo
            .run_with(
                repo.store_cmd(store).unwrap(),
                &["hash-object", "-w", "--stdin"],
                Some(data.as_bytes()),
            )
            .unwrap();
        String::from_utf8(out).unwrap().trim().to_string()
    }

    #[test]
    fn editing_a_tree_in_place_gives_the_tree_git_gives() {
        let (_dir, repo, base) = repo_with(&[
            ("README", "r\n", false),
            ("a/b/c.txt", "c\n", false),
            ("a/b/d.txt", "d\n", false),
            ("a.b", "dot\n", false),
            ("a-c/x", "x\n", false),
            ("gone/only.txt", "o\n", false),
            ("file", "becomes a directory\n", false),
            ("dir/x", "becomes a file\n", false),
            ("run.sh", "#!/bin/sh\n", true),
        ]);
        let store = tempfile::tempdir().unwrap();
        let new = blob(&repo, store.path(), "new\n");
        let cases: Vec<Vec<Edit<'_>>> = vec![
            vec![(b"a/b/c.txt".to_vec(), Some(("100644", new.clone())))],
            vec![
                (b"a/b/c.txt".to_vec(), None),
                (b"a/b/d.txt".to_vec(), None),
                (b"a/new/deep/e".to_vec(), Some(("100755", new.clone()))),
                (b"gone/only.txt".to_vec(), None),
                (b"a/b".to_vec(), Some(("120000", new.clone()))),
            ],
            vec![
                (b"file".to_vec(), None),
                (b"file/inside".to_vec(), Some(("100644", new.clone()))),
                (b"dir/x".to_vec(), None),
                (b"dir".to_vec(), Some(("100644", new.clone()))),
                (b"run.sh".to_vec(), Some(("100644", new.clone()))),
                (b"a.b".to_vec(), Some(("100644", new.clone()))),
            ],
        ];
        for edits in cases {
            let ours = edit_tree(&repo, store.path(), &base, &edits).unwrap();
            assert_eq!(
                ours,
                through_index(&repo, store.path(), &base, &edits),
                "{edits:?}"
            );
            assert_ne!(ours, base);
        }
    }

    #[test]
    fn deleting_every_file_gives_the_empty_tree() {
        let (_dir, repo, base) = repo_with(&[("a/b", "b\n", false), ("c", "c\n", false)]);
        let store = tempfile::tempdir().unwrap();
        let edits = vec![(b"a/b".to_vec(), None), (b"c".to_vec(), None)];
        let ours = edit_tree(&repo, store.path(), &base, &edits).unwrap();
        assert_eq!(ours, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    }
}
