//! Stopped agent container → change set → new tree, on the host side of the boundary.
//!
//! Nothing in the container is trusted or run. Which paths under `/work` moved comes from the
//! container's upper layer where the engine is local (`upper`), else the watcher's change log
//! (`watch`: a hint, checked by reading), else the engine's filesystem diff; only those paths
//! are read back through the archive API (several under one small directory in one request:
//! requests, not bytes, dominate) or, for a regular file the upper layer holds whole, from it
//! on the host (`upper::read_file`, as a one-entry archive), and each archive is parsed in
//! memory under limits on what differs from the snapshot (entries, bytes) and on path length.
//! Regular files, directories and symlinks are taken as data — a symlink is never followed, a
//! container path is never opened on the host outside the upper layer's own rules. Blobs go to a private object store (no filters, no
//! attributes); the new tree is written with plumbing, rewriting only the directories on the
//! changed paths. Untracked paths the *snapshot's* ignore rules ignore (build outputs) are
//! dropped; a `.gitignore` the agent wrote has no say.
//!
//! Files: `watch` (the change log's wrapper and parser), `reads` (listing, read planning,
//! bounded archive parsing), `tree` (objects and the new tree); this file drives them and
//! writes the attempt's change set, patch and objects.
//!
//! May not: follow a symlink, trust a name, run anything in the container or open a container path
//! on the host outside the upper layer's rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use futures_util::StreamExt;
use sha1::Digest as _;

use crate::change::{
    bad_name, blob_id, is_git_path, Change, ChangeKind, ChangeSet, Node, Truncated,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::git::Repo;

use crate::snapshot::{EntryKind, TreeEntry};

pub mod fsck;
mod reads;
mod tree;
pub mod upper;
pub mod watch;

pub use reads::ReadLimits;
use reads::*;
use tree::*;

/// An extracted change: the change set plus the contents of the files it writes.
pub struct Extracted {
    pub set: ChangeSet,
    contents: HashMap<Vec<u8>, Vec<u8>>,
}

/// Reads the agent's change out of stopped container `id`, relative to the snapshot `entries`.
pub async fn extract(
    engine: &Engine,
    id: &str,
    repo: &Repo,
    snapshot_tree: &str,
    entries: &[TreeEntry],
    limits: ReadLimits,
) -> Result<Extracted> {
    let (reads, listed_by, why) = listing(engine, id).await?;
    let mut set = ChangeSet {
        listing: listed_by,
        log_unusable: why,
        ..ChangeSet::default()
    };
    if reads.roots.is_empty() && reads.deleted.is_empty() {
        return Ok(Extracted {
            set,
            contents: HashMap::new(),
        });
    }
    let mut deleted: Vec<Vec<u8>> = reads
        .deleted
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .collect();

    let old: BTreeMap<&[u8], &TreeEntry> = entries.iter().map(|e| (e.path.as_slice(), e)).collect();
    let (roots, (extra_files, extra_bytes)) = plan_reads(repo, &reads.roots, &old)?;
    set.reads = roots.len() as u64;

    let mut seen: BTreeMap<Vec<u8>, Seen> = BTreeMap::new();
    let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut budget = (0u64, 0u64);
    // Raw archive bytes allowed: the content budget plus headers (GNU long names included),
    // plus the unchanged snapshot files that merged reads carry.
    let cap = limits.bytes
        + (limits.entries + 16) * 3 * 512
        + (1 << 20)
        + extra_bytes
        + extra_files * 3 * 512;
    let total = AtomicU64::new(0);
    let on_host = AtomicU64::new(0);
    let mut dir_roots: Vec<Vec<u8>> = Vec::new();
    let mut archives = futures_util::stream::iter(roots.iter().map(|root| {
        let path = if root.is_empty() {
            WORK.to_string()
        } else {
            format!("{WORK}/{root}")
        };
        let total = &total;
        let upper = reads.upper.as_deref();
        let on_host = &on_host;
        async move {
            if let Some(upper) = upper {
                if let Ok(read) = read_upper(upper, root, cap, total).await? {
                    on_host.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(read);
                }
            }
            read_capped(Box::pin(engine.download(id, &path)), cap, total).await
        }
    }))
    .buffered(PARALLEL_READS);
    let mut root_iter = roots.iter();
    while let Some(read) = archives.next().await {
        let root = root_iter.next().expect("one read per root");
        let data = match read {
            Ok(Some(d)) => d,
            Ok(None) => {
                set.truncated = Some(Truncated::Bytes {
                    limit: limits.bytes,
                });
                return Ok(Extracted {
                    set,
                    contents: HashMap::new(),
                });
            }
            // Named but not there at the end: gone (from the log); from the engine's diff, a
            // path deleted in the same diff or one whose name it mangled.
            Err(e) if is_not_found(&e) => {
                if reads.missing_is_deleted {
                    deleted.push(root.as_bytes().to_vec());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(t) =
            parse_archive(&data, root, limits, &old, &mut seen, &mut dirs, &mut budget)?
        {
            set.truncated = Some(t);
            return Ok(Extracted {
                set,
                contents: HashMap::new(),
            });
        }
        if dirs.contains(root.as_bytes()) || root.is_empty() {
            dir_roots.push(root.as_bytes().to_vec());
        }
    }
    drop(archives);
    set.host_reads = on_host.into_inner();

    // The new state: the snapshot, minus deletions, minus what a read-back directory no longer
    // holds, with type changes resolved, plus what was read.
    let mut gone: BTreeSet<Vec<u8>> = BTreeSet::new();
    for d in &deleted {
        if old.contains_key(d.as_slice()) {
            gone.insert(d.clone());
        }
        gone.extend(keys_under(&old, d));
    }
    for r in &dir_roots {
        gone.extend(
            keys_under(&old, r)
                .into_iter()
                .filter(|p| !seen.contains_key(p)),
        );
    }
    for d in &dirs {
        if old.contains_key(d.as_slice()) {
            gone.insert(d.clone()); // a file or symlink became a directory
        }
    }
    for p in seen.keys() {
        gone.extend(keys_under(&old, p)); // a directory became a file
    }

    let mut contents = HashMap::new();
    for (path, s) in seen {
        if unchanged(old.get(path.as_slice()).copied(), &s.node) {
            continue;
        }
        let before = old
            .get(path.as_slice())
            .and_then(|e| snapshot_node(e).map(|n| (n, e.oid.clone())));
        gone.remove(&path);
        let kind = if before.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        if let Some(c) = s.content {
            contents.insert(path.clone(), c);
        }
        set.changes.push(Change {
            path,
            kind,
            node: s.node,
            old_mode: before.map(|((m, _), _)| m & 0o7777),
        });
    }
    for p in gone {
        let e = old[p.as_slice()];
        let Some(((mode, _), _)) = snapshot_node(e).map(|n| (n, ())) else {
            continue;
        };
        let node = match e.kind {
            EntryKind::Symlink => Node::Symlink { target: Vec::new() },
            _ => Node::File {
                mode: mode & 0o7777,
                size: 0,
                blob: None,
            },
        };
        set.changes.push(Change {
            path: p,
            kind: ChangeKind::Deleted,
            node,
            old_mode: Some(mode & 0o7777),
        });
    }
    set.changes.sort_by(|a, b| a.path.cmp(&b.path));

    drop_ignored(repo, snapshot_tree, entries, &mut set, &mut contents)?;
    Ok(Extracted { set, contents })
}

/// Drops added paths that the snapshot's own ignore rules ignore (build outputs, caches).
fn drop_ignored(
    repo: &Repo,
    snapshot_tree: &str,
    entries: &[TreeEntry],
    set: &mut ChangeSet,
    contents: &mut HashMap<Vec<u8>, Vec<u8>>,
) -> Result<()> {
    let candidates: Vec<&Change> = set
        .changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Added && bad_name(&c.path).is_none())
        .filter(|c| {
            !c.path
                .split(|b| *b == b'/')
                .any(|p| p.eq_ignore_ascii_case(b".git"))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    // A scratch repository holding only the snapshot's .gitignore files (and the user's
    // info/exclude): the rules come from the snapshot, never from the box.
    let scratch = tempfile::Builder::new()
        .prefix("boxdelegate-ignore-")
        .tempdir()
        .map_err(|e| Error::io("creating a scratch directory", e))?;
    let git = |args: &[&str], input: Option<&[u8]>| -> Result<Vec<u8>> {
        let mut cmd = crate::git::command(scratch.path())?;
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if input.is_some() {
            cmd.stdin(std::process::Stdio::piped());
        }
        let mut child = cmd.spawn().map_err(|e| Error::io("starting git", e))?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("piped");
            let input = input.to_vec();
            std::thread::spawn(move || stdin.write_all(&input));
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("running git", e))?;
        // check-ignore exits 1 when nothing is ignored.
        if !out.status.success() && out.status.code() != Some(1) {
            return Err(Error::Git {
                args: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    };
    git(&["init", "-q"], None)?;
    let _ = snapshot_tree;
    for e in entries
        .iter()
        .filter(|e| e.path.ends_with(b".gitignore") && matches!(e.kind, EntryKind::File { .. }))
    {
        let name = e.path.rsplit(|b| *b == b'/').next().unwrap_or_default();
        // A crafted tree can hold `..` or `.git` components; such a name never becomes a host
        // path.
        if name != b".gitignore" || bad_name(&e.path).is_some() || is_git_path(&e.path) {
            continue;
        }
        let rel = String::from_utf8_lossy(&e.path).into_owned();
        let dest: PathBuf = scratch.path().join(&rel);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(|er| Error::io("writing ignore rules", er))?;
        }
        let data = repo.run(&["cat-file", "blob", &e.oid])?;
        std::fs::write(&dest, data).map_err(|er| Error::io("writing ignore rules", er))?;
    }
    if let Ok(exclude) = std::fs::read(repo.common_dir.join("info/exclude")) {
        let _ = std::fs::write(scratch.path().join(".git/info/exclude"), exclude);
    }
    let mut input = Vec::new();
    for c in &candidates {
        input.extend_from_slice(&c.path);
        input.push(0);
    }
    let out = git(
        &["check-ignore", "--no-index", "-z", "--stdin"],
        Some(&input),
    )?;
    let ignored: BTreeSet<Vec<u8>> = out
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| p.to_vec())
        .collect();
    let before = set.changes.len();
    set.changes
        .retain(|c| !(c.kind == ChangeKind::Added && ignored.contains(&c.path)));
    set.ignored = before - set.changes.len();
    contents.retain(|p, _| !ignored.contains(p));
    Ok(())
}

/// The recorded result of writing a change set as a tree.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Written {
    pub tree: String,
    pub patch_sha256: String,
    /// Changes left out of the tree because git cannot represent them (they are rejected by
    /// the scope check anyway).
    pub left_out: usize,
}

impl Extracted {
    /// The content the change writes at `path` (a regular file's bytes).
    pub fn content(&self, path: &[u8]) -> Option<&[u8]> {
        self.contents.get(path).map(Vec::as_slice)
    }

    /// The changed paths whose name or content `found` matches (e.g. a secret's value).
    pub fn paths_where(&self, found: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        self.set
            .changes
            .iter()
            .filter(|c| {
                found(&c.path)
                    || self.contents.get(&c.path).is_some_and(|d| found(d))
                    // A symlink's target is data that lands too (the blob of the link).
                    || matches!(&c.node, crate::change::Node::Symlink { target } if found(target))
            })
            .map(|c| c.path.clone())
            .collect()
    }

    /// Writes the blobs to the private object store `store`, the new tree through a temporary
    /// index, and the patch (`git diff --binary --full-index -M`) to `patch_file`.
    pub fn write(
        &self,
        repo: &Repo,
        store: &Path,
        snapshot_tree: &str,
        patch_file: &Path,
    ) -> Result<Written> {
        std::fs::create_dir_all(store)
            .map_err(|e| Error::io(format!("creating {}", store.display()), e))?;
        let scratch = tempfile::Builder::new()
            .prefix("boxdelegate-blobs-")
            .tempdir()
            .map_err(|e| Error::io("creating a scratch directory", e))?;
        // Blob contents go through numbered scratch files: no name from the box is ever used
        // as a host path.
        let mut paths_in = Vec::new();
        let mut expected = Vec::new();
        for (i, c) in self.set.changes.iter().enumerate() {
            if c.kind == ChangeKind::Deleted {
                continue;
            }
            let data: &[u8] = match &c.node {
                Node::File { .. } => self
                    .contents
                    .get(&c.path)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
                Node::Symlink { target } => target,
                Node::Special { .. } => continue,
            };
            let f = scratch.path().join(i.to_string());
            std::fs::write(&f, data).map_err(|e| Error::io("writing a scratch blob", e))?;
            paths_in.extend_from_slice(f.as_os_str().as_encoded_bytes());
            paths_in.push(b'\n');
            expected.push(blob_id(data));
        }
        if !expected.is_empty() {
            write_objects(
                repo,
                store,
                &["hash-object", "-w", "--no-filters", "--stdin-paths"],
                &paths_in,
                &expected,
            )?;
        }
        let mut edits: Vec<Edit<'_>> = Vec::new();
        let mut left_out = 0;
        let mut blobs = expected.into_iter();
        for c in &self.set.changes {
            let representable = bad_name(&c.path).is_none()
                && !c
                    .path
                    .split(|b| *b == b'/')
                    .any(|p| p.eq_ignore_ascii_case(b".git"));
            let blob = match (&c.kind, &c.node) {
                (ChangeKind::Deleted, _) => None,
                (_, Node::Special { .. }) => {
                    left_out += 1;
                    continue;
                }
                _ => blobs.next(),
            };
            if !representable {
                left_out += 1;
                continue;
            }
            edits.push((
                c.path.clone(),
                blob.map(|id| (c.node.git_mode().unwrap_or("100644"), id)),
            ));
        }
        let tree = edit_tree(repo, store, snapshot_tree, &edits)?;
        let patch = repo.run_with(
            repo.store_cmd(store)?,
            &[
                "diff",
                "--binary",
                "--full-index",
                "-M",
                "--no-ext-diff",
                "--no-textconv",
                "--no-color",
                snapshot_tree,
                &tree,
            ],
            None,
        )?;
        crate::state::write_private(patch_file, &patch)?;
        let patch_sha256 = hex::encode(sha2::Sha256::digest(&patch));
        Ok(Written {
            tree,
            patch_sha256,
            left_out,
        })
    }
}
