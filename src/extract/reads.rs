//! Which paths moved and reading them back: the listing (the watcher's change log, else the
//! engine's diff), the reads planned (several changed paths under one small directory read
//! in one request), and each archive parsed in memory under limits on what differs from the
//! snapshot (entries, bytes) and on path length.
//!
//! May not: follow a symlink, open a path on the host or trust a name: bytes from the container are
//! data only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use super::watch;
use crate::change::{blob_id, Listing, Node, Truncated};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::snapshot::{EntryKind, TreeEntry};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) const WORK: &str = "/work";
pub(super) const MAX_PATH: usize = 4096;

/// Limits applied while reading archives from the container.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) node: Node,
    pub(super) content: Option<Vec<u8>>,
}

pub(super) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

pub(super) fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

/// Chooses which paths to read back: the top-most added paths, modified leaves, and — where the
/// engine could not name a path faithfully (non-UTF-8 names come back mangled) — its parent.
pub(super) fn download_roots(changes: &[(String, u8)]) -> Vec<String> {
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
pub(super) async fn read_capped(
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

/// Reads `root` from the upper layer at `upper` as the one-entry archive the engine would
/// send for it, so that [`parse_archive`] judges both alike; `None` past `cap` bytes (counted
/// in `total` with the engine's reads), `Some(Err(()))` when the engine must read it.
pub(super) async fn read_upper(
    upper: &std::path::Path,
    root: &str,
    cap: u64,
    total: &AtomicU64,
) -> Result<std::result::Result<Option<Vec<u8>>, ()>> {
    use super::upper::HostRead;
    if root.is_empty() {
        return Ok(Err(()));
    }
    let left = cap.saturating_sub(total.load(Ordering::Relaxed));
    let (upper, rel) = (upper.to_path_buf(), root.as_bytes().to_vec());
    let read = tokio::task::spawn_blocking(move || super::upper::read_file(&upper, &rel, left))
        .await
        .map_err(|e| Error::Internal(format!("reading the upper layer: {e}")))?;
    let (mode, data) = match read {
        HostRead::File { mode, data } => (mode, data),
        HostRead::TooLarge => return Ok(Ok(None)),
        HostRead::Engine => return Ok(Err(())),
    };
    let name = root.rsplit('/').next().unwrap_or(root);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    let mut ar = tar::Builder::new(Vec::with_capacity(data.len() + 2048));
    let built = ar
        .append_data(&mut header, name, data.as_slice())
        .and_then(|()| ar.into_inner());
    let Ok(archive) = built else {
        return Ok(Err(())); // a name tar will not write: the engine's archive has it
    };
    let len = archive.len() as u64;
    if total.fetch_add(len, Ordering::Relaxed) + len > cap {
        return Ok(Ok(None));
    }
    Ok(Ok(Some(archive)))
}

pub(super) fn is_not_found(e: &Error) -> bool {
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
pub(super) async fn read_log(
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
pub(super) struct Reads {
    pub(super) roots: Vec<String>,
    /// Paths known to be gone (the engine's deletions).
    pub(super) deleted: Vec<String>,
    /// Whether a root that is not there any more is a deletion (the log names paths that went;
    /// the engine lists those as deletions and may name a path it mangled).
    pub(super) missing_is_deleted: bool,
    /// The upper layer the listing came from: regular files are read back from it.
    pub(super) upper: Option<std::path::PathBuf>,
}

/// The paths the upper layer (when the engine is local, see `upper`), else the change log,
/// else the engine's diff names.
pub(super) async fn listing(engine: &Engine, id: &str) -> Result<(Reads, Listing, Option<String>)> {
    let mut upper_why = None;
    if super::upper::wanted()? {
        if let Some(dir) = engine.local_upper_dir(id).await? {
            match super::upper::list(&dir) {
                Ok(paths) => {
                    let paths: BTreeSet<Vec<u8>> = paths.into_iter().collect();
                    return Ok((
                        Reads {
                            roots: watch::roots(&paths, watch::MAX_ROOTS),
                            deleted: Vec::new(),
                            missing_is_deleted: true,
                            upper: Some(dir),
                        },
                        Listing::Upper,
                        None,
                    ));
                }
                Err(super::upper::Unlisted::Empty) => {
                    return Ok((
                        Reads {
                            roots: vec![],
                            deleted: vec![],
                            missing_is_deleted: true,
                            upper: None,
                        },
                        Listing::Upper,
                        None,
                    ))
                }
                Err(super::upper::Unlisted::Failed(why)) => {
                    tracing::warn!(container = %crate::engine::short(id), "the upper layer could not be listed ({why}); using the change log");
                    upper_why = Some(why);
                }
            }
        }
    }
    let why = match read_log(engine, id).await? {
        Ok(paths) => {
            return Ok((
                Reads {
                    roots: watch::roots(&paths, watch::MAX_ROOTS),
                    deleted: Vec::new(),
                    missing_is_deleted: true,
                    upper: None,
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
            upper: None,
        },
        Listing::Engine,
        Some(match upper_why {
            Some(u) => format!("the upper layer could not be listed ({u}); {why}"),
            None => why.to_string(),
        }),
    ))
}

/// The paths of `map` strictly under directory `dir` ("" for everything), in order.
pub(super) fn keys_under<V>(map: &BTreeMap<&[u8], V>, dir: &[u8]) -> Vec<Vec<u8>> {
    under(map, dir).map(|(k, _)| k.to_vec()).collect()
}

/// What one archive request costs, in snapshot files read along with it: the engine starts a
/// helper process and mounts the container's filesystem for every request (about 100 ms on
/// fuse-overlayfs), while one more small file in an archive costs well under a millisecond.
pub(super) const REQUEST_COST: usize = 256;
/// A directory is read in one request in place of the paths under it only while it holds at
/// most this many snapshot files…
pub(super) const MERGE_MAX_FILES: usize = 1024;
/// …and this many snapshot bytes (reading them must stay cheaper than the requests saved).
pub(super) const MERGE_MAX_BYTES: u64 = 4 << 20;

/// Chooses the reads for `roots`: a directory holding several roots is read in one request
/// when that costs less than reading each (see [`REQUEST_COST`]), as `files_under` (snapshot
/// files strictly under a path, counting may stop past [`MERGE_MAX_FILES`]) tells. Directories
/// in `forbidden` are never chosen. Every root is covered by exactly one read, and a read is a
/// root or an ancestor directory of roots (pure).
pub(super) fn merge_reads(
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
pub(super) fn under<'m, 'a, V>(
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
pub(super) fn plan_reads(
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
pub(super) const PARALLEL_READS: usize = 4;

/// Parses one archive read from `root` (a path relative to `/work`, "" for `/work` itself).
///
/// What the snapshot `old` already holds as it was (a file with the same content and mode, a
/// symlink with the same target, a directory of the snapshot) is recorded but does not count
/// against `limits`: they bound the change, and a read of a directory carries its unchanged
/// files too.
pub(super) fn parse_archive(
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
pub(super) fn unchanged(before: Option<&TreeEntry>, node: &Node) -> bool {
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

pub(super) fn snapshot_node(e: &TreeEntry) -> Option<(u32, &str)> {
    match e.kind {
        EntryKind::File { executable: true } => Some((0o100755, "file")),
        EntryKind::File { executable: false } => Some((0o100644, "file")),
        EntryKind::Symlink => Some((0o120000, "symlink")),
        EntryKind::Gitlink => None,
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
