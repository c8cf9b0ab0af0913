//! Stopped agent container → change set → new tree, on the host side of the boundary.
//!
//! Nothing in the container is trusted or run. Which paths under `/work` moved comes from the
//! watcher's change log (`watch`: a hint, checked by reading) or, where that log cannot be
//! used, from the engine's filesystem diff; only those paths are read back through the archive
//! API (several under one small directory in one request: requests, not bytes, dominate), and
//! each archive is parsed in memory under limits on what differs from the snapshot (entries,
//! bytes) and on path length.
//! Regular files, directories and symlinks are taken as data — a symlink is never followed, a
//! path is never opened on the host. Blobs go to a private object store (no filters, no
//! attributes); the new tree is written with plumbing, rewriting only the directories on the
//! changed paths. Untracked paths the *snapshot's* ignore rules ignore (build outputs) are
//! dropped; a `.gitignore` the agent wrote has no say.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use sha1::Digest as _;

use crate::change::{
    bad_name, blob_id, is_git_path, Change, ChangeKind, ChangeSet, Listing, Node, Truncated,
};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::git::Repo;

use crate::snapshot::{EntryKind, TreeEntry};
use crate::watch;

const WORK: &str = "/work";
const MAX_PATH: usize = 4096;

/// Limits applied while reading archives from the container.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub entries: u64,
    pub bytes: u64,
}

/// An extracted change: the change set plus the contents of the files it writes.
pub struct Extracted {
    pub set: ChangeSet,
    contents: HashMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Seen {
    node: Node,
    content: Option<Vec<u8>>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// Chooses which paths to read back: the top-most added paths, modified leaves, and — where the
/// engine could not name a path faithfully (non-UTF-8 names come back mangled) — its parent.
fn download_roots(changes: &[(String, u8)]) -> Vec<String> {
    let listed: BTreeSet<&str> = changes.iter().map(|(p, _)| p.as_str()).collect();
    // In sorted order, the first listed path at or after "p/" is under p if anything is.
    let has_children = |p: &str| {
        let prefix = format!("{p}/");
        listed
            .range(prefix.as_str()..)
            .next()
            .is_some_and(|q| q.starts_with(&prefix))
    };
    let mut roots: BTreeSet<String> = BTreeSet::new();
    let mut forced: BTreeSet<String> = BTreeSet::new();
    for (path, kind) in changes {
        if *kind == 2 {
            continue;
        }
        let mut p = path.as_str();
        if p.contains('\u{FFFD}') {
            while p.contains('\u{FFFD}') {
                p = parent(p);
            }
            forced.insert(p.to_string());
            continue;
        }
        if *kind == 0 && has_children(p) {
            continue; // a directory whose listed children carry the change
        }
        roots.insert(p.to_string());
    }
    roots.extend(forced);
    // Drop roots inside another root: its archive holds them already.
    let all: Vec<String> = roots.iter().cloned().collect();
    roots
        .into_iter()
        .filter(|r| {
            !all.iter()
                .any(|o| o != r && is_under(r.as_bytes(), o.as_bytes()))
        })
        .collect()
}

/// Reads a whole archive stream into memory; `None` once the bytes read by all the reads
/// sharing `total` pass `cap`.
async fn read_capped(
    mut stream: impl futures_util::Stream<Item = Result<bytes::Bytes>> + Unpin,
    cap: u64,
    total: &AtomicU64,
) -> Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let len = chunk.len() as u64;
        if total.fetch_add(len, Ordering::Relaxed) + len > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf))
}

fn is_not_found(e: &Error) -> bool {
    matches!(
        e,
        Error::Engine {
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            },
            ..
        }
    )
}

/// The paths the watcher's log names, or why the log cannot be used.
async fn read_log(
    engine: &Engine,
    id: &str,
) -> Result<std::result::Result<BTreeSet<Vec<u8>>, watch::Unusable>> {
    let stream = Box::pin(engine.download(id, watch::LOG));
    // The archive holds one entry: its header, the log, padding and the end blocks.
    let data = match read_capped(stream, watch::LOG_CAP + 8192, &AtomicU64::new(0)).await {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(Err(watch::Unusable::TooLarge)),
        Err(e) if is_not_found(&e) => return Ok(Err(watch::Unusable::Missing)),
        Err(e) => return Err(e),
    };
    let mut ar = tar::Archive::new(data.as_slice());
    let Some(Ok(mut entry)) = ar.entries().ok().and_then(|mut e| e.next()) else {
        return Ok(Err(watch::Unusable::Malformed));
    };
    // The agent may have put anything at that path: only a regular file is a log.
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Ok(Err(watch::Unusable::Malformed));
    }
    let mut log = Vec::new();
    if (&mut entry)
        .take(watch::LOG_CAP)
        .read_to_end(&mut log)
        .is_err()
    {
        return Ok(Err(watch::Unusable::Malformed));
    }
    Ok(watch::parse(&log))
}

/// What to read back, from either listing.
struct Reads {
    roots: Vec<String>,
    /// Paths known to be gone (the engine's deletions).
    deleted: Vec<String>,
    /// Whether a root that is not there any more is a deletion (the log names paths that went;
    /// the engine lists those as deletions and may name a path it mangled).
    missing_is_deleted: bool,
}

/// The change log's roots, else the engine's diff.
async fn listing(engine: &Engine, id: &str) -> Result<(Reads, Listing, Option<String>)> {
    let why = match read_log(engine, id).await? {
        Ok(paths) => {
            return Ok((
                Reads {
                    roots: watch::roots(&paths, watch::MAX_ROOTS),
                    deleted: Vec::new(),
                    missing_is_deleted: true,
                },
                Listing::Watch,
                None,
            ))
        }
        Err(why) => why,
    };
    tracing::info!(container = %crate::engine::short(id), "{why}; listing the change with the engine's filesystem diff");
    let changes: Vec<(String, u8)> = engine
        .changes(id)
        .await?
        .into_iter()
        .filter_map(|(p, k)| p.strip_prefix("/work/").map(|r| (r.to_string(), k)))
        .collect();
    Ok((
        Reads {
            roots: download_roots(&changes),
            deleted: changes
                .iter()
                .filter(|(_, k)| *k == 2)
                .map(|(p, _)| p.clone())
                .collect(),
            missing_is_deleted: false,
        },
        Listing::Engine,
        Some(why.to_string()),
    ))
}

/// The paths of `map` strictly under directory `dir` ("" for everything), in order.
fn keys_under<V>(map: &BTreeMap<&[u8], V>, dir: &[u8]) -> Vec<Vec<u8>> {
    under(map, dir).map(|(k, _)| k.to_vec()).collect()
}

/// What one archive request costs, in snapshot files read along with it: the engine starts a
/// helper process and mounts the container's filesystem for every request (about 100 ms on
/// fuse-overlayfs), while one more small file in an archive costs well under a millisecond.
const REQUEST_COST: usize = 256;
/// A directory is read in one request in place of the paths under it only while it holds at
/// most this many snapshot files…
const MERGE_MAX_FILES: usize = 1024;
/// …and this many snapshot bytes (reading them must stay cheaper than the requests saved).
const MERGE_MAX_BYTES: u64 = 4 << 20;

/// Chooses the reads for `roots`: a directory holding several roots is read in one request
/// when that costs less than reading each (see [`REQUEST_COST`]), as `files_under` (snapshot
/// files strictly under a path, counting may stop past [`MERGE_MAX_FILES`]) tells. Directories
/// in `forbidden` are never chosen. Every root is covered by exactly one read, and a read is a
/// root or an ancestor directory of roots (pure).
fn merge_reads(
    roots: &[String],
    files_under: &dyn Fn(&[u8]) -> usize,
    forbidden: &BTreeSet<Vec<u8>>,
) -> Vec<String> {
    if roots.len() < 2 {
        return roots.to_vec();
    }
    let ancestors = |p: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut p = p;
        while !p.is_empty() {
            p = parent(p);
            out.push(p.to_string());
        }
        out
    };
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for r in roots {
        for a in ancestors(r) {
            if !forbidden.contains(a.as_bytes()) {
                dirs.insert(a);
            }
        }
    }
    // Each root and each directory hangs under its nearest candidate ancestor (None: the top).
    let nearest = |p: &str| ancestors(p).into_iter().find(|a| dirs.contains(a));
    let mut roots_in: BTreeMap<Option<String>, Vec<&String>> = BTreeMap::new();
    for r in roots {
        roots_in.entry(nearest(r)).or_default().push(r);
    }
    let mut dirs_in: BTreeMap<Option<String>, Vec<&String>> = BTreeMap::new();
    for d in &dirs {
        if !d.is_empty() {
            dirs_in.entry(nearest(d)).or_default().push(d);
        }
    }
    let depth = |d: &str| {
        if d.is_empty() {
            0
        } else {
            d.matches('/').count() + 1
        }
    };
    let mut order: Vec<&String> = dirs.iter().collect();
    order.sort_by_key(|d| std::cmp::Reverse(depth(d)));
    let mut best: HashMap<String, (usize, Vec<String>)> = HashMap::new();
    let gather = |at: Option<String>, best: &mut HashMap<String, (usize, Vec<String>)>| {
        let mut cost = 0;
        let mut plan = Vec::new();
        for r in roots_in.get(&at).into_iter().flatten() {
            cost += REQUEST_COST + files_under(r.as_bytes()).min(MERGE_MAX_FILES + 1);
            plan.push((*r).clone());
        }
        for d in dirs_in.get(&at).into_iter().flatten() {
            let (c, p) = best.remove(*d).expect("deeper directories come first");
            cost += c;
            plan.extend(p);
        }
        (cost, plan)
    };
    for d in order {
        let (cost, plan) = gather(Some(d.clone()), &mut best);
        let files = files_under(d.as_bytes());
        let merged = REQUEST_COST + files;
        if plan.len() >= 2 && files <= MERGE_MAX_FILES && merged < cost {
            best.insert(d.clone(), (merged, vec![d.clone()]));
        } else {
            best.insert(d.clone(), (cost, plan));
        }
    }
    let (_, mut plan) = match best.remove("") {
        Some(top) => top, // `/work` itself was a candidate: everything hangs under it
        None => gather(None, &mut best),
    };
    plan.sort();
    plan
}

/// The entries of `map` strictly under directory `dir` ("" for everything), in order.
fn under<'m, 'a, V>(
    map: &'m BTreeMap<&'a [u8], V>,
    dir: &[u8],
) -> impl Iterator<Item = (&'m &'a [u8], &'m V)> + 'm {
    use std::ops::Bound;
    let (lo, hi) = if dir.is_empty() {
        (Bound::Unbounded, Bound::Unbounded)
    } else {
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        (Bound::Included(lo), Bound::Excluded(hi))
    };
    map.range::<[u8], _>((
        lo.as_ref().map(Vec::as_slice),
        hi.as_ref().map(Vec::as_slice),
    ))
}

/// The reads for `roots`, merged where that pays off and the merged directories' snapshot
/// bytes stay under [`MERGE_MAX_BYTES`] (sizes from `git cat-file --batch-check`, the
/// repository's own objects). Returns the reads and the snapshot (files, bytes) the merged
/// reads carry besides the change.
fn plan_reads(
    repo: &Repo,
    roots: &[String],
    old: &BTreeMap<&[u8], &TreeEntry>,
) -> Result<(Vec<String>, (u64, u64))> {
    // Counting stops past the most a merged directory may hold.
    let count = |d: &[u8]| under(old, d).take(MERGE_MAX_FILES + 1).count();
    let mut forbidden: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut sizes: HashMap<String, u64> = HashMap::new();
    loop {
        let plan = merge_reads(roots, &count, &forbidden);
        let merged: Vec<&String> = plan.iter().filter(|p| !roots.contains(p)).collect();
        if merged.is_empty() {
            return Ok((plan, (0, 0)));
        }
        let wanted: Vec<&str> = merged
            .iter()
            .flat_map(|d| under(old, d.as_bytes()))
            .filter(|(_, e)| e.kind != EntryKind::Gitlink && !sizes.contains_key(&e.oid))
            .map(|(_, e)| e.oid.as_str())
            .collect();
        if !wanted.is_empty() {
            let input: String = wanted.iter().map(|o| format!("{o}\n")).collect();
            let out = repo.run_with(
                repo.cmd()?,
                &["cat-file", "--batch-check=%(objectsize)"],
                Some(input.as_bytes()),
            )?;
            let out = String::from_utf8_lossy(&out);
            let mut lines = out.lines();
            for oid in wanted {
                let size = lines
                    .next()
                    .and_then(|l| l.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Error::Internal(format!("git cat-file gave no size for {oid}"))
                    })?;
                sizes.insert(oid.to_string(), size);
            }
        }
        let mut extra = (0u64, 0u64);
        let mut too_big = Vec::new();
        for d in &merged {
            let (files, bytes) = under(old, d.as_bytes())
                .map(|(_, e)| sizes.get(&e.oid).copied().unwrap_or(0))
                .fold((0u64, 0u64), |(f, b), s| (f + 1, b + s));
            if bytes > MERGE_MAX_BYTES {
                too_big.push(d.as_bytes().to_vec());
            }
            extra = (extra.0 + files, extra.1 + bytes);
        }
        if too_big.is_empty() {
            return Ok((plan, extra));
        }
        forbidden.extend(too_big);
    }
}

/// Archive reads in flight at once (the engine mounts the container's filesystem for each).
const PARALLEL_READS: usize = 4;

/// Parses one archive read from `root` (a path relative to `/work`, "" for `/work` itself).
///
/// What the snapshot `old` already holds as it was (a file with the same content and mode, a
/// symlink with the same target, a directory of the snapshot) is recorded but does not count
/// against `limits`: they bound the change, and a read of a directory carries its unchanged
/// files too.
fn parse_archive(
    data: &[u8],
    root: &str,
    limits: ReadLimits,
    old: &BTreeMap<&[u8], &TreeEntry>,
    seen: &mut BTreeMap<Vec<u8>, Seen>,
    dirs: &mut BTreeSet<Vec<u8>>,
    budget: &mut (u64, u64),
) -> Result<Option<Truncated>> {
    let full = if root.is_empty() {
        WORK.to_string()
    } else {
        format!("{WORK}/{root}")
    };
    let base_name = full
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let mut ar = tar::Archive::new(data);
    let bad = |e: std::io::Error| {
        Error::Internal(format!(
            "unreadable archive of {full} from the container: {e}"
        ))
    };
    let count = |budget: &mut (u64, u64), bytes: u64| -> Option<Truncated> {
        budget.0 += 1;
        if budget.0 > limits.entries {
            return Some(Truncated::Entries {
                limit: limits.entries,
            });
        }
        if budget.1 + bytes > limits.bytes {
            return Some(Truncated::Bytes {
                limit: limits.bytes,
            });
        }
        budget.1 += bytes;
        None
    };
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path_bytes().into_owned();
        if name.len() > MAX_PATH {
            return Ok(Some(Truncated::PathLength {
                limit: MAX_PATH as u64,
            }));
        }
        let name = name.strip_suffix(b"/").unwrap_or(&name).to_vec();
        // Every name starts with the root's own name; anything else is not ours to take.
        let rest = name
            .strip_prefix(base_name.as_slice())
            .filter(|rest| rest.is_empty() || rest.starts_with(b"/"));
        let Some(rest) = rest else {
            if let Some(t) = count(budget, 0) {
                return Ok(Some(t));
            }
            continue;
        };
        let mut rel = root.as_bytes().to_vec();
        if root.is_empty() {
            rel = rest.strip_prefix(b"/").unwrap_or(rest).to_vec();
        } else {
            rel.extend_from_slice(rest);
        }
        if rel.is_empty() {
            continue; // /work itself
        }
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644);
        let mut content = None;
        let node = match header.entry_type() {
            tar::EntryType::Directory => {
                if under(old, &rel).next().is_none() {
                    if let Some(t) = count(budget, 0) {
                        return Ok(Some(t));
                    }
                }
                dirs.insert(rel);
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = header.size().map_err(bad)?;
                // The whole archive is in memory already: no entry can hold more than it.
                if size > data.len() as u64 {
                    return Err(bad(std::io::Error::other(format!(
                        "an entry of {size} bytes in an archive of {}",
                        data.len()
                    ))));
                }
                let mut data = Vec::with_capacity(size as usize);
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(bad)?;
                let blob = blob_id(&data);
                content = Some(data);
                Node::File {
                    mode,
                    size,
                    blob: Some(blob),
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                Node::Symlink { target }
            }
            tar::EntryType::Link => Node::Special {
                what: "hard link".into(),
            },
            tar::EntryType::Fifo => Node::Special {
                what: "FIFO".into(),
            },
            tar::EntryType::Char => Node::Special {
                what: "character device".into(),
            },
            tar::EntryType::Block => Node::Special {
                what: "block device".into(),
            },
            other => Node::Special {
                what: format!("special file ({other:?})"),
            },
        };
        if unchanged(old.get(rel.as_slice()).copied(), &node) {
            seen.insert(
                rel,
                Seen {
                    node,
                    content: None,
                },
            );
            continue;
        }
        let bytes = match &node {
            Node::File { size, .. } => *size,
            _ => 0,
        };
        if let Some(t) = count(budget, bytes) {
            return Ok(Some(t));
        }
        seen.insert(rel, Seen { node, content });
    }
    Ok(None)
}

/// Whether `node` is what the snapshot held at its path: a file with the same content and
/// executable bit (and no setuid or setgid bit), or a symlink with the same target.
fn unchanged(before: Option<&TreeEntry>, node: &Node) -> bool {
    let Some(before) = before else {
        return false;
    };
    match (before.kind, node) {
        (EntryKind::File { executable }, Node::File { mode, blob, .. }) => {
            executable == (mode & 0o100 != 0)
                && blob.as_deref() == Some(before.oid.as_str())
                && mode & 0o6000 == 0
        }
        (EntryKind::Symlink, Node::Symlink { target }) => blob_id(target) == before.oid,
        _ => false,
    }
}

fn snapshot_node(e: &TreeEntry) -> Option<(u32, &str)> {
    match e.kind {
        EntryKind::File { executable: true } => Some((0o100755, "file")),
        EntryKind::File { executable: false } => Some((0o100644, "file")),
        EntryKind::Symlink => Some((0o120000, "symlink")),
        EntryKind::Gitlink => None,
    }
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
    let mut dir_roots: Vec<Vec<u8>> = Vec::new();
    let mut archives = futures_util::stream::iter(roots.iter().map(|root| {
        let path = if root.is_empty() {
            WORK.to_string()
        } else {
            format!("{WORK}/{root}")
        };
        let total = &total;
        async move { read_capped(Box::pin(engine.download(id, &path)), cap, total).await }
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
    /// The changed paths whose name or content `found` matches (e.g. a secret's value).
    pub fn paths_where(&self, found: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        self.set
            .changes
            .iter()
            .filter(|c| found(&c.path) || self.contents.get(&c.path).is_some_and(|d| found(d)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshot file counts by directory, as `files_under` would count them.
    fn counts<'a>(tree: &'a [(&'a str, usize)]) -> impl Fn(&[u8]) -> usize + 'a {
        move |p: &[u8]| {
            let p = std::str::from_utf8(p).unwrap();
            tree.iter()
                .filter(|(d, _)| p.is_empty() || *d == p || d.starts_with(&format!("{p}/")))
                .map(|(_, n)| n)
                .sum()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changed_paths_in_a_small_directory_are_read_in_one_request() {
        let tree = [("src/a", 20), ("src/b", 20), ("docs", 5000)];
        let none = BTreeSet::new();
        // One path: one read, whatever its directory.
        assert_eq!(
            merge_reads(&strings(&["src/a/x"]), &counts(&tree), &none),
            ["src/a/x"]
        );
        // Five files of one directory of 20: that directory.
        let five = strings(&["src/a/1", "src/a/2", "src/a/3", "src/a/4", "src/a/5"]);
        assert_eq!(merge_reads(&five, &counts(&tree), &none), ["src/a"]);
        // Files in two small sibling directories: their parent.
        let two = strings(&["src/a/1", "src/b/1"]);
        assert_eq!(merge_reads(&two, &counts(&tree), &none), ["src"]);
        // A directory too large to read for two files: each file alone.
        let big = strings(&["docs/1", "docs/2"]);
        assert_eq!(
            merge_reads(&big, &counts(&tree), &none),
            ["docs/1", "docs/2"]
        );
        // A forbidden directory is not read; the choice goes to what is left.
        let forbid = BTreeSet::from([b"src".to_vec()]);
        assert_eq!(
            merge_reads(&two, &counts(&tree), &forbid),
            ["src/a/1", "src/b/1"]
        );
        let forbid = BTreeSet::from([b"src/a".to_vec()]);
        assert_eq!(merge_reads(&five, &counts(&tree), &forbid), ["src"]);
    }

    #[test]
    fn merged_reads_cover_every_root_exactly_once() {
        // A small deterministic generator: varied trees and root sets.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..500 {
            let dirs: Vec<String> = (0..1 + next(6))
                .map(|i| format!("d{}/e{}", next(3), i))
                .collect();
            let tree: Vec<(&str, usize)> = dirs
                .iter()
                .map(|d| (d.as_str(), next(900) as usize))
                .collect();
            let mut roots: BTreeSet<String> = BTreeSet::new();
            for _ in 0..1 + next(12) {
                let d = &dirs[next(dirs.len() as u64) as usize];
                roots.insert(format!("{d}/f{}", next(50)));
            }
            let roots: Vec<String> = roots.into_iter().collect();
            let plan = merge_reads(&roots, &counts(&tree), &BTreeSet::new());
            for r in &roots {
                let covering = plan
                    .iter()
                    .filter(|p| *p == r || p.is_empty() || r.starts_with(&format!("{p}/")))
                    .count();
                assert_eq!(covering, 1, "{r} in {plan:?} for {roots:?}");
            }
            for p in &plan {
                let inside = roots
                    .iter()
                    .filter(|r| *r == p || p.is_empty() || r.starts_with(&format!("{p}/")))
                    .count();
                assert!(roots.contains(p) || inside >= 2, "{p} in {plan:?}");
                assert!(roots.contains(p) || counts(&tree)(p.as_bytes()) <= MERGE_MAX_FILES);
            }
            assert!(plan.len() <= roots.len());
        }
    }

    fn roots(list: &[(&str, u8)]) -> Vec<String> {
        download_roots(
            &list
                .iter()
                .map(|(p, k)| (p.to_string(), *k))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn roots_are_top_most_added_paths_and_modified_leaves() {
        let r = roots(&[
            ("src", 0),
            ("src/a.rs", 0),
            ("new", 1),
            ("new/x", 1),
            ("new/y/z", 1),
            ("old.txt", 2),
            ("README.md", 0),
        ]);
        assert_eq!(r, vec!["README.md", "new", "src/a.rs"]);
    }

    #[test]
    fn mangled_names_fall_back_to_their_parent() {
        let r = roots(&[("src", 0), ("src/bad\u{FFFD}name", 1), ("src/ok", 1)]);
        assert_eq!(r, vec!["src"]);
        let r = roots(&[("bad\u{FFFD}", 1)]);
        assert_eq!(r, vec![""]);
    }
}

/// Runs git `args` (a command that writes objects and prints one id per line) in the private
/// store with `input`, and checks that git wrote exactly the `expected` ids.
fn write_objects(
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
type Edit<'a> = (Vec<u8>, Option<(&'a str, String)>);

/// One entry of a tree object: its mode as the object writes it (`100644`, `40000`, …) and
/// its object id.
type TreeItem = (Vec<u8>, [u8; 20]);

/// Parses a tree object's content into name → (mode, id).
fn parse_tree(data: &[u8]) -> Result<BTreeMap<Vec<u8>, TreeItem>> {
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
fn tree_content(items: &BTreeMap<Vec<u8>, TreeItem>) -> Vec<u8> {
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

fn tree_id(content: &[u8]) -> [u8; 20] {
    let mut h = sha1::Sha1::new();
    h.update(format!("tree {}\0", content.len()).as_bytes());
    h.update(content);
    h.finalize().into()
}

/// The tree of `base` with `edits` applied (path → new mode and blob id, or `None` to
/// remove), written to `store`. Only the directories on the edited paths are read and
/// rewritten: the cost follows the change, not the tree (a temporary index costs the whole
/// tree twice). The ids computed here are checked against those git gives when writing.
fn edit_tree(repo: &Repo, store: &Path, base: &str, edits: &[Edit<'_>]) -> Result<String> {
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
        let mut input = String::new();
        for (_, id) in &level {
            input.push_str(id);
            input.push('\n');
        }
        let out = repo.run_with(
            repo.store_cmd(store)?,
            &["cat-file", "--batch"],
            Some(input.as_bytes()),
        )?;
        let mut rest = out.as_slice();
        let mut next = Vec::new();
        for (dir, _) in &level {
            let eol = rest
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| Error::Internal("git cat-file ended early".into()))?;
            let header = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size: usize = header
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| header.split(' ').nth(1) == Some("tree"))
                .ok_or_else(|| Error::Internal(format!("git cat-file: {header}")))?;
            let items = parse_tree(&rest[eol + 1..eol + 1 + size])?;
            rest = &rest[eol + 1 + size + 1..];
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
mod tree_tests {
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
