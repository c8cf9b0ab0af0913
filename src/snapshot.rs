//! Host repository → snapshot tree id → deterministic tar stream.
//!
//! A snapshot is identified by a git tree id. By default it is the tree of `HEAD` (reproducible);
//! with `include_dirty` it is the work tree's tracked changes plus untracked, non-ignored files,
//! computed through a temporary `GIT_INDEX_FILE` so the user's index is never touched.
//!
//! The tar is built from git objects, not from the work tree: never `.git`, never ignored files,
//! sorted paths, fixed mtime and owner, modes and symlinks preserved. Blob contents stream from
//! `git cat-file --batch` straight into the tar, so memory stays bounded whatever the file sizes.
//! Paths from a repository are bytes, not necessarily UTF-8, and are kept as bytes.
//!
//! May not: read the work tree (except `--include-dirty`, through a temporary index) or touch the
//! user's index.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;

use crate::error::{Error, Result};
use crate::git::Repo;

/// mtime of every tar entry: 1980-01-01, the earliest date zip-based tools (wheels, jars) accept.
pub const FIXED_MTIME: u64 = crate::engine::FIXED_MTIME;
/// Owner of every tar entry: the non-root `box` user of the base image.
pub const OWNER_UID: u64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// The commit the snapshot starts from (`HEAD`).
    pub commit: String,
    /// The snapshot's identity.
    pub tree: String,
    /// True when the tree differs from `HEAD`'s (only with `include_dirty`).
    pub dirty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File {
        executable: bool,
    },
    Symlink,
    /// A submodule: shipped as an empty directory.
    Gitlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub kind: EntryKind,
    pub oid: String,
    pub path: Vec<u8>,
}

impl TreeEntry {
    pub fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.path))
    }
}

impl Snapshot {
    /// Takes the snapshot of `repo`: `HEAD`'s tree, or with `include_dirty` the work tree's.
    pub fn take(repo: &Repo, include_dirty: bool) -> Result<Snapshot> {
        let commit = repo.resolve("HEAD^{commit}")?.ok_or_else(|| Error::Repo {
            path: repo.root.clone(),
            message: "the repository has no commits".into(),
            hint: Some(
                "commit something first (`git add` and `git commit`); boxdelegate snapshots HEAD"
                    .into(),
            ),
        })?;
        let head_tree = repo.text(&["rev-parse", &format!("{commit}^{{tree}}")])?;
        if !include_dirty {
            return Ok(Snapshot {
                commit,
                tree: head_tree,
                dirty: false,
            });
        }
        let tree = dirty_tree(repo, &head_tree)?;
        Ok(Snapshot {
            dirty: tree != head_tree,
            commit,
            tree,
        })
    }
}

/// Writes the work tree's state (tracked changes + untracked, non-ignored files) as a tree,
/// through a copy of the index so the user's own index stays byte-identical.
fn dirty_tree(repo: &Repo, head_tree: &str) -> Result<String> {
    let tmp = tempfile::Builder::new()
        .prefix("boxdelegate-index-")
        .tempfile()
        .map_err(|e| Error::io("creating a temporary index", e))?;
    let index = repo.git_dir.join("index");
    if index.exists() {
        // Starting from a copy keeps git's stat cache, so unchanged files are not re-hashed.
        std::fs::copy(&index, tmp.path())
            .map_err(|e| Error::io(format!("copying {}", index.display()), e))?;
    } else {
        // An empty file is not a valid index; let git create it.
        std::fs::remove_file(tmp.path()).ok();
    }
    let with_index = |args: &[&str], input: Option<&[u8]>| -> Result<Vec<u8>> {
        let mut cmd = repo.cmd()?;
        cmd.env("GIT_INDEX_FILE", tmp.path());
        repo.run_with(cmd, args, input)
    };
    with_index(&["add", "--all", "--", "."], None)?;
    let tree = String::from_utf8_lossy(&with_index(&["write-tree"], None)?)
        .trim()
        .to_string();
    refuse_filtered(repo, head_tree, &tree, |args, input| {
        with_index(args, Some(input))
    })?;
    Ok(tree)
}

/// Refuses a dirty snapshot holding a file whose attributes select a filter driver the
/// configuration defines. `git add` would run that driver; boxdelegate overrides it, so the
/// file would be stored unfiltered (a large file where git-lfs stores a pointer).
fn refuse_filtered(
    repo: &Repo,
    head_tree: &str,
    tree: &str,
    check_attr: impl Fn(&[&str], &[u8]) -> Result<Vec<u8>>,
) -> Result<()> {
    let filters: Vec<Vec<u8>> = crate::git::drivers(&repo.root)?
        .into_iter()
        .filter(|d| d.section == "filter")
        .map(|d| d.name)
        .collect();
    if filters.is_empty() || head_tree == tree {
        return Ok(());
    }
    let changed = repo.run(&[
        "diff-tree",
        "-r",
        "-z",
        "--name-only",
        "--no-renames",
        "--diff-filter=d",
        head_tree,
        tree,
    ])?;
    let out = check_attr(&["check-attr", "-z", "--stdin", "filter"], &changed)?;
    // Records of three fields: path, attribute, value.
    let fields: Vec<&[u8]> = out.split(|b| *b == 0).collect();
    for record in fields.chunks_exact(3) {
        let (path, value) = (record[0], record[2]);
        if filters.iter().any(|f| f.as_slice() == value) {
            return Err(Error::Repo {
                path: repo.root.clone(),
                message: format!(
                    "--include-dirty: {} differs from HEAD and its attributes select the filter driver {:?}, which boxdelegate does not run",
                    crate::change::display_path(path),
                    String::from_utf8_lossy(value)
                ),
                hint: Some(
                    "commit the file first (your own git runs the filter), or snapshot without --include-dirty".into(),
                ),
            });
        }
    }
    Ok(())
}

/// Lists every non-tree entry of `tree`, sorted by path bytes.
/// `tree` without the entries `hidden` matches (the agent's view when the project keeps hidden
/// acceptance tests), written through a temporary index; `tree` itself when none match.
pub fn without(
    repo: &Repo,
    tree: &str,
    entries: &[TreeEntry],
    hidden: &crate::config::unit::Globs,
) -> Result<String> {
    let mut remove = Vec::new();
    for e in entries.iter().filter(|e| hidden.is_match(e.path())) {
        remove.extend_from_slice(b"0 0000000000000000000000000000000000000000\t");
        remove.extend_from_slice(&e.path);
        remove.push(0);
    }
    if remove.is_empty() {
        return Ok(tree.to_string());
    }
    repo.edit_tree(tree, &[&remove])
}

pub fn list_tree(repo: &Repo, tree: &str) -> Result<Vec<TreeEntry>> {
    let out = repo.run(&["ls-tree", "-r", "-z", "--full-tree", tree])?;
    let mut entries = Vec::new();
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        entries.push(parse_ls_tree_record(record)?);
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn parse_ls_tree_record(record: &[u8]) -> Result<TreeEntry> {
    let bad = || {
        Error::Internal(format!(
            "unexpected git ls-tree output: {}",
            String::from_utf8_lossy(record)
        ))
    };
    let tab = record.iter().position(|b| *b == b'\t').ok_or_else(bad)?;
    let meta = std::str::from_utf8(&record[..tab]).map_err(|_| bad())?;
    let mut parts = meta.split(' ');
    let (mode, _kind, oid) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let kind = kind_from_mode(mode).ok_or_else(bad)?;
    Ok(TreeEntry {
        kind,
        oid: oid.to_string(),
        path: record[tab + 1..].to_vec(),
    })
}

fn kind_from_mode(mode: &str) -> Option<EntryKind> {
    match mode {
        "100644" => Some(EntryKind::File { executable: false }),
        "100755" => Some(EntryKind::File { executable: true }),
        "120000" => Some(EntryKind::Symlink),
        "160000" => Some(EntryKind::Gitlink),
        _ => None,
    }
}

/// What changed between two trees, as the incremental image build needs it.
#[derive(Debug, Default)]
pub struct TreeDiff {
    /// Paths (files, symlinks or whole directories) to remove before the upload.
    pub deleted: Vec<Vec<u8>>,
    /// Entries of the new tree to upload (added, modified, or whose type or mode changed).
    pub upserted: Vec<TreeEntry>,
}

impl TreeDiff {
    pub fn len(&self) -> usize {
        self.deleted.len() + self.upserted.len()
    }
}

/// Computes the difference from `old` to `new` with `git diff-tree` (trees included, so a
/// directory that disappears or turns into a file is deleted as a whole).
pub fn diff_trees(repo: &Repo, old: &str, new: &str) -> Result<TreeDiff> {
    let out = repo.run(&[
        "diff-tree",
        "-r",
        "-t",
        "-z",
        "--no-renames",
        "--no-ext-diff",
        "--no-textconv",
        old,
        new,
    ])?;
    let mut diff = TreeDiff::default();
    let mut fields = out.split(|b| *b == 0);
    while let Some(meta) = fields.next() {
        if meta.is_empty() {
            continue;
        }
        let path = fields
            .next()
            .ok_or_else(|| Error::Internal("truncated git diff-tree output".into()))?;
        // ":<old mode> <new mode> <old oid> <new oid> <status>"
        let meta = std::str::from_utf8(meta)
            .map_err(|_| Error::Internal("unexpected git diff-tree output".into()))?;
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        if parts.len() < 5 {
            return Err(Error::Internal(format!(
                "unexpected git diff-tree record: {meta}"
            )));
        }
        let (new_mode, new_oid, status) = (parts[1], parts[3], parts[4]);
        let new_is_tree = new_mode == "040000";
        match status {
            "D" => {
                // Deleting a directory removes its contents too; skip entries already covered.
                if !is_under_any(path, &diff.deleted) {
                    diff.deleted.push(path.to_vec());
                }
            }
            "A" | "M" | "T" => {
                // A type change (file <-> symlink) replaces the old entry.
                if status == "T" && !is_under_any(path, &diff.deleted) {
                    diff.deleted.push(path.to_vec());
                }
                if new_is_tree {
                    continue; // directories are created by the entries inside them
                }
                let kind = kind_from_mode(new_mode).ok_or_else(|| {
                    Error::Internal(format!("unexpected mode {new_mode} in git diff-tree"))
                })?;
                diff.upserted.push(TreeEntry {
                    kind,
                    oid: new_oid.to_string(),
                    path: path.to_vec(),
                });
            }
            other => {
                return Err(Error::Internal(format!(
                    "unexpected git diff-tree status {other}"
                )))
            }
        }
    }
    diff.upserted.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(diff)
}

fn is_under_any(path: &[u8], dirs: &[Vec<u8>]) -> bool {
    dirs.iter()
        .any(|d| path.len() > d.len() && path.starts_with(d) && path[d.len()] == b'/')
}

/// Counts written by [`write_tar`].
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TarStats {
    pub files: u64,
    pub bytes: u64,
}

/// Extra entries a tar may carry besides tree entries: symlinks boxdelegate itself adds (a
/// profile's `links`, e.g. `node_modules` → `/deps/node_modules`).
#[derive(Debug, Clone)]
pub struct ExtraLink {
    pub path: Vec<u8>,
    pub target: Vec<u8>,
}

/// Where the entries of a tar go, and what else it carries.
#[derive(Debug, Default, Clone, Copy)]
pub struct Layout<'a> {
    /// A directory every path is placed under, itself emitted first (`work` for an image
    /// layer, whose paths are relative to the image's root); none for an upload into `/work`.
    pub root: Option<&'a str>,
    /// Paths to mark deleted with image-layer whiteouts (`.wh.<name>`), written before the
    /// entries. None may be an entry's path or one of its parent directories.
    pub whiteouts: &'a [Vec<u8>],
}

/// Writes `entries` (sorted by path) as a deterministic tar stream to `out`, reading blob
/// contents from the repository's object store. Parent directories are emitted before their
/// contents.
pub fn write_tar<W: Write>(
    repo: &Repo,
    entries: &[TreeEntry],
    extra_links: &[ExtraLink],
    out: W,
) -> Result<TarStats> {
    write_tar_in(repo, entries, extra_links, Layout::default(), out)
}

/// [`write_tar`] with a [`Layout`].
pub fn write_tar_in<W: Write>(
    repo: &Repo,
    entries: &[TreeEntry],
    extra_links: &[ExtraLink],
    layout: Layout<'_>,
    out: W,
) -> Result<TarStats> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut stats = TarStats::default();
    let mut tar = Emitter {
        builder: &mut builder,
        root: layout.root.map(|r| r.as_bytes()).unwrap_or_default(),
        dirs: HashSet::new(),
    };
    let werr = |e: std::io::Error| Error::io("writing the snapshot tar stream", e);
    if !tar.root.is_empty() {
        tar.dir(b"").map_err(werr)?;
    }
    for path in layout.whiteouts {
        tar.whiteout(path).map_err(werr)?;
    }

    let mut blobs = CatFile::start(repo, entries)?;
    for entry in entries {
        tar.parents(&entry.path).map_err(werr)?;
        match entry.kind {
            EntryKind::Gitlink => {
                tar.dir(&entry.path).map_err(werr)?;
            }
            EntryKind::Symlink => {
                let target = blobs.next_small(&entry.oid)?;
                tar.link(&entry.path, &target).map_err(werr)?;
                stats.files += 1;
            }
            EntryKind::File { executable } => {
                let mode = if executable { 0o755 } else { 0o644 };
                let size = blobs.next_header(&entry.oid)?;
                let reader = (&mut blobs.stdout).take(size);
                tar.data(tar::EntryType::Regular, mode, &entry.path, size, reader)
                    .map_err(werr)?;
                blobs.finish_blob()?;
                stats.files += 1;
                stats.bytes += size;
            }
        }
    }
    for link in extra_links {
        tar.parents(&link.path).map_err(werr)?;
        tar.link(&link.path, &link.target).map_err(werr)?;
    }
    blobs.close()?;
    builder.into_inner().map_err(werr)?.flush().map_err(werr)?;
    Ok(stats)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(FIXED_MTIME);
    h.set_uid(OWNER_UID);
    h.set_gid(OWNER_UID);
    h
}

/// Writes entries under the layout's root, each directory once.
struct Emitter<'b, 'r, W: Write> {
    builder: &'b mut tar::Builder<W>,
    root: &'r [u8],
    dirs: HashSet<Vec<u8>>,
}

impl<W: Write> Emitter<'_, '_, W> {
    fn path(&self, path: &[u8]) -> Vec<u8> {
        let mut full = self.root.to_vec();
        if !full.is_empty() && !path.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(path);
        full
    }

    /// Emits the parent directories of `path` that were not emitted yet.
    fn parents(&mut self, path: &[u8]) -> std::io::Result<()> {
        for (i, b) in path.iter().enumerate() {
            if *b == b'/' {
                self.dir(&path[..i])?;
            }
        }
        Ok(())
    }

    fn dir(&mut self, dir: &[u8]) -> std::io::Result<()> {
        if self.dirs.insert(dir.to_vec()) {
            self.data(tar::EntryType::Directory, 0o755, dir, 0, std::io::empty())?;
        }
        Ok(())
    }

    /// Marks `path` deleted: an empty `.wh.<name>` beside it, after its parent directories.
    fn whiteout(&mut self, path: &[u8]) -> std::io::Result<()> {
        let name_at = path.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
        let mut whiteout = path[..name_at].to_vec();
        whiteout.extend_from_slice(b".wh.");
        whiteout.extend_from_slice(&path[name_at..]);
        self.parents(&whiteout)?;
        self.data(
            tar::EntryType::Regular,
            0o644,
            &whiteout,
            0,
            std::io::empty(),
        )
    }

    fn data(
        &mut self,
        kind: tar::EntryType,
        mode: u32,
        path: &[u8],
        size: u64,
        data: impl Read,
    ) -> std::io::Result<()> {
        let mut h = header(kind, mode, size);
        let path = self.path(path);
        self.builder
            .append_data(&mut h, Path::new(OsStr::from_bytes(&path)), data)
    }

    fn link(&mut self, path: &[u8], target: &[u8]) -> std::io::Result<()> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        let path = self.path(path);
        self.builder.append_link(
            &mut h,
            Path::new(OsStr::from_bytes(&path)),
            Path::new(OsStr::from_bytes(target)),
        )
    }
}

/// A `git cat-file --batch` process fed with the blob ids of `entries`, in order.
struct CatFile {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
    feeder: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl CatFile {
    fn start(repo: &Repo, entries: &[TreeEntry]) -> Result<CatFile> {
        let mut cmd = repo.cmd()?;
        cmd.args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io("starting git cat-file", e))?;
        let mut stdin = child.stdin.take().expect("piped");
        let ids: Vec<String> = entries
            .iter()
            .filter(|e| e.kind != EntryKind::Gitlink)
            .map(|e| e.oid.clone())
            .collect();
        // Feeding ids from another thread lets git run ahead without either side blocking.
        let feeder = std::thread::spawn(move || {
            let mut w = std::io::BufWriter::new(&mut stdin);
            for id in ids {
                w.write_all(id.as_bytes())?;
                w.write_all(b"\n")?;
            }
            w.flush()
        });
        let stdout = BufReader::with_capacity(256 * 1024, child.stdout.take().expect("piped"));
        Ok(CatFile {
            child,
            stdout,
            feeder: Some(feeder),
        })
    }

    /// Reads the next object's header and returns its size; the content follows on `stdout`.
    fn next_header(&mut self, oid: &str) -> Result<u64> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| Error::io("reading from git cat-file", e))?;
        let mut parts = line.trim_end().split(' ');
        let (got, kind, size) = (parts.next(), parts.next(), parts.next());
        if got != Some(oid) || kind != Some("blob") {
            return Err(Error::Internal(format!(
                "git cat-file answered {:?} for blob {oid}",
                line.trim_end()
            )));
        }
        size.and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Internal(format!("git cat-file: bad header {line:?}")))
    }

    /// Consumes the newline that follows each object's content.
    fn finish_blob(&mut self) -> Result<()> {
        let mut nl = [0u8; 1];
        self.stdout
            .read_exact(&mut nl)
            .map_err(|e| Error::io("reading from git cat-file", e))?;
        Ok(())
    }

    fn next_small(&mut self, oid: &str) -> Result<Vec<u8>> {
        let size = self.next_header(oid)?;
        let mut buf = vec![0u8; size as usize];
        self.stdout
            .read_exact(&mut buf)
            .map_err(|e| Error::io("reading from git cat-file", e))?;
        self.finish_blob()?;
        Ok(buf)
    }

    fn close(mut self) -> Result<()> {
        if let Some(f) = self.feeder.take() {
            f.join()
                .map_err(|_| Error::Internal("git cat-file feeder panicked".into()))?
                .map_err(|e| Error::io("feeding git cat-file", e))?;
        }
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io("waiting for git cat-file", e))?;
        if !status.success() {
            return Err(Error::Internal(format!(
                "git cat-file exited with {status}"
            )));
        }
        Ok(())
    }
}

impl Drop for CatFile {
    fn drop(&mut self) {
        if self.feeder.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ls_tree_records() {
        let e = parse_ls_tree_record(b"100755 blob 0123abcd\tbin/run me").unwrap();
        assert_eq!(e.kind, EntryKind::File { executable: true });
        assert_eq!(e.path, b"bin/run me");
        let e = parse_ls_tree_record(b"120000 blob 0123abcd\tlink").unwrap();
        assert_eq!(e.kind, EntryKind::Symlink);
        assert!(parse_ls_tree_record(b"100644 blob nooid").is_err());
        assert!(parse_ls_tree_record(b"040000 tree 0123\tdir").is_err());
    }

    #[test]
    fn under_any_needs_a_separator() {
        let dirs = vec![b"src".to_vec()];
        assert!(is_under_any(b"src/a.rs", &dirs));
        assert!(!is_under_any(b"src", &dirs));
        assert!(!is_under_any(b"srcx/a.rs", &dirs));
    }
}
