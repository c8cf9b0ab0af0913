//! The change listed from the container's upper layer on the host: the paths under `/work`
//! that the agent created, changed or deleted, read as names and types from the engine's own
//! storage (`GraphDriver.Data.UpperDir` for overlay2 and fuse-overlayfs), which costs O(change)
//! rather than a walk of the whole container filesystem and needs no watcher in the container.
//!
//! The upper directory is written by the agent, so nothing in it is followed: every directory
//! is opened relative to its parent's descriptor with `openat2` and `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, entries are only
//! `fstatat`-ed with `AT_SYMLINK_NOFOLLOW`. The listing is a hint, like the change log's: every
//! path is read back and judged under the usual limits. A path the upper layer holds as a plain
//! regular file is read back here ([`read_file`]: its bytes are the container's view of it, as
//! data, under the same limits), saving the engine the mount its archive API makes per read;
//! anything else (a directory, whose merged view the lower layers share, a link, a special
//! file, a file whose data or metadata overlay keeps elsewhere) is read through the archive
//! API. `rustix` is used because it wraps `openat2` and its resolve flags, directory streams on
//! a descriptor, `fstatat` and `flistxattr` as safe calls (cap-std's sandboxing would do as
//! well, but brings its own filesystem abstraction we do not need).
//!
//! May not: open anything but a regular file (or a directory, beneath the last), follow a link,
//! or touch anything outside the container's upper layer (only its `work/` is listed and read;
//! the disk usage walk stats the rest).

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// More entries than this in the upper `/work` and the listing gives up (the engine's diff
/// takes over): a change that large is over the limits anyway.
pub const MAX_ENTRIES: usize = 200_000;

/// Which listing `BOXDELEGATE_EXTRACT` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// The upper layer where the engine is local, else the change log, else the engine's diff.
    Auto,
    /// Never the upper layer: the change log (with its watcher), else the engine's diff.
    Log,
}

/// `BOXDELEGATE_EXTRACT`: `auto` (default) or `log`; anything else is refused before any
/// command acts.
pub fn mechanism() -> crate::error::Result<Mechanism> {
    match std::env::var("BOXDELEGATE_EXTRACT").ok().as_deref() {
        None | Some("") | Some("auto") => Ok(Mechanism::Auto),
        Some("log") => Ok(Mechanism::Log),
        Some(other) => Err(crate::error::Error::config_hint(
            "BOXDELEGATE_EXTRACT",
            format!("unknown way to list a change {other:?}"),
            "set it to `auto` (the upper layer where the engine is local, else the change log; the default) or `log` (always the change log), or unset it",
        )),
    }
}

/// Whether the upper layer may be used.
pub fn wanted() -> crate::error::Result<bool> {
    Ok(mechanism()? == Mechanism::Auto)
}

/// Why the upper layer could not be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlisted {
    /// No `work/` in the upper layer: the agent wrote nothing under `/work`.
    Empty,
    /// Opening or reading failed (the reason), or there were too many entries.
    Failed(String),
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

fn open_dir(at: impl AsFd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve(),
    )
}

/// The paths (relative to `/work`) the upper layer at `upper` holds changes for: files,
/// symlinks and special files written; whiteouts (a 0/0 character device, or a `.wh.NAME`
/// file) as the path they delete; an opaque directory (`.wh..wh..opq`, `.wh..opq`) as itself,
/// so that it is read back whole. Directories that are only there as parents of a change are
/// not listed themselves.
pub fn list(upper: &Path) -> Result<Vec<Vec<u8>>, Unlisted> {
    let fail = |what: &str, e: rustix::io::Errno| Unlisted::Failed(format!("{what}: {e}"));
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("opening {}", upper.display()), e))?;
    let work = match open_dir(&root, b"work") {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(Unlisted::Empty),
        Err(e) => return Err(fail("opening the upper work/", e)),
    };
    let mut out = Vec::new();
    let mut seen = 0usize;
    walk(work, Vec::new(), &mut out, &mut seen)?;
    Ok(out)
}

fn walk(
    dir: OwnedFd,
    prefix: Vec<u8>,
    out: &mut Vec<Vec<u8>>,
    seen: &mut usize,
) -> Result<(), Unlisted> {
    let fail = |e: rustix::io::Errno| {
        Unlisted::Failed(format!("reading {}: {e}", String::from_utf8_lossy(&prefix)))
    };
    let join = |name: &[u8]| {
        let mut p = prefix.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    };
    let mut names = Vec::new();
    let stream = rustix::fs::Dir::read_from(&dir).map_err(fail)?;
    for entry in stream {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(Unlisted::Failed(format!(
                "more than {MAX_ENTRIES} entries in the upper layer"
            )));
        }
        names.push(name.to_vec());
    }
    names.sort();
    let mut subdirs = Vec::new();
    for name in names {
        if name == b".wh..wh..opq" || name == b".wh..opq" {
            // Opaque: the snapshot's content below is hidden; read the directory whole.
            if !prefix.is_empty() && out.last() != Some(&prefix) {
                out.push(prefix.clone());
            }
            continue;
        }
        if let Some(deleted) = name.strip_prefix(b".wh.") {
            out.push(join(deleted));
            continue;
        }
        let st =
            rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => subdirs.push(name),
            FileType::CharacterDevice if st.st_rdev == 0 => out.push(join(&name)),
            _ => out.push(join(&name)),
        }
    }
    for name in subdirs {
        let path = join(&name);
        let fd = open_dir(&dir, &name).map_err(|e| {
            Unlisted::Failed(format!("opening {}: {e}", String::from_utf8_lossy(&path)))
        })?;
        walk(fd, path, out, seen)?;
    }
    Ok(())
}

/// What a container's whole writable layer takes on the host's disk: the blocks of every
/// entry plus an inode's worth (256 bytes) each, so that many empty files or directories, which
/// an engine reports as almost nothing, count as the disk they use. Walked the same way as
/// [`list`] (beneath, no link followed, no mount crossed). An entry the agent removes while it
/// is walked is skipped; past `max_entries` the walk stops and what it counted is a lower
/// bound (more than a million entries is over any sane limit anyway). `None` only when the
/// layer cannot be opened at all (the caller then has only the engine's figure).
pub fn disk_usage(upper: &Path, max_entries: usize) -> Option<u64> {
    /// Bytes an inode takes (ext4's default inode size).
    const INODE: u64 = 256;
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let Ok(stream) = rustix::fs::Dir::read_from(&dir) else {
            continue; // removed while walked
        };
        for entry in stream.flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            seen += 1;
            if seen > max_entries {
                return Some(total);
            }
            let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue; // removed while walked
            };
            total += (st.st_blocks as u64) * 512 + INODE;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                if let Ok(fd) = open_dir(&dir, name) {
                    stack.push(fd);
                }
            }
        }
    }
    Some(total)
}

/// A path read from the upper layer on the host.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRead {
    /// A regular file the upper layer holds whole: its mode (type and permission bits) and
    /// bytes.
    File { mode: u32, data: Vec<u8> },
    /// A regular file larger than the bytes allowed.
    TooLarge,
    /// Not one to read here: the engine's archive API reads it.
    Engine,
}

/// Where overlay (and fuse-overlayfs, and containers/storage) keep their extended attributes.
/// `origin` only records which lower file a copied-up one came from (its data is copied whole);
/// any other (`metacopy`, `redirect`, `override_stat`, ...) may mean the file's data or
/// metadata is kept elsewhere: the upper file is then not the container's view of it.
const OVERLAY_XATTRS: [&[u8]; 4] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.containers.",
];

/// Reads `rel` (relative to `/work`) from the upper layer at `upper` when it is a regular file
/// held there whole, at most `max` bytes. Every directory on the way is opened beneath the
/// last, refusing links and mount crossings; the file is `fstatat`-ed without following before
/// it is opened (nothing but a regular file is ever opened) and checked again once open. A
/// file overlay keeps only the metadata of (metacopy: allocated nothing for its size, or an
/// overlay attribute) is left to the engine, as is anything that fails here.
pub fn read_file(upper: &Path, rel: &[u8], max: u64) -> HostRead {
    read_regular(upper, rel, max).unwrap_or(HostRead::Engine)
}

fn read_regular(upper: &Path, rel: &[u8], max: u64) -> rustix::io::Result<HostRead> {
    use std::io::Read;
    let (dir, name) = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    if name.is_empty() || name == b"." || name == b".." || name.starts_with(b".wh.") {
        return Ok(HostRead::Engine);
    }
    let root = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut parent = open_dir(&root, b"work")?;
    if !dir.is_empty() {
        parent = open_dir(&parent, dir)?;
    }
    let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(HostRead::Engine);
    }
    if st.st_size > 0 && st.st_blocks == 0 {
        return Ok(HostRead::Engine); // metacopy (or a hole): the data is not here
    }
    if st.st_size as u64 > max {
        return Ok(HostRead::TooLarge);
    }
    let fd = rustix::fs::openat2(
        &parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve(),
    )?;
    let now = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(now.st_mode) != FileType::RegularFile
        || (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino)
    {
        return Ok(HostRead::Engine);
    }
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::flistxattr(&fd, &mut names[..])?;
    if names[..n].split(|&b| b == 0).any(|x| {
        OVERLAY_XATTRS
            .iter()
            .any(|p| x.strip_prefix(*p).is_some_and(|rest| rest != b"origin"))
    }) {
        return Ok(HostRead::Engine);
    }
    let mut data = Vec::with_capacity(now.st_size as usize);
    std::fs::File::from(fd)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
    if data.len() as u64 > max {
        return Ok(HostRead::TooLarge);
    }
    // The type bits stay, as in the engine's archive headers.
    Ok(HostRead::File {
        mode: now.st_mode,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("work/src/deep")).unwrap();
        std::fs::create_dir_all(t.path().join("work/new")).unwrap();
        std::fs::create_dir_all(t.path().join("home/box")).unwrap();
        std::fs::write(t.path().join("home/box/.bash_history"), "outside work").unwrap();
        std::fs::write(t.path().join("work/src/deep/a.py"), "x").unwrap();
        std::fs::write(t.path().join("work/src/.wh.gone.py"), "").unwrap();
        std::fs::write(t.path().join("work/new/.wh..wh..opq"), "").unwrap();
        std::fs::write(t.path().join("work/new/b"), "y").unwrap();
        t
    }

    #[test]
    fn lists_writes_whiteouts_and_opaque_directories_under_work_only() {
        let t = tree();
        let got = list(t.path()).unwrap();
        let got: Vec<String> = got
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(got, ["new", "new/b", "src/gone.py", "src/deep/a.py"]);
    }

    #[test]
    fn a_symlink_is_listed_never_followed_even_as_a_directory_or_the_work_root() {
        let t = tree();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("secret-dir")).unwrap();
        std::fs::write(outside.path().join("secret-dir/canary"), "do not list").unwrap();
        symlink(
            outside.path().join("secret-dir"),
            t.path().join("work/src/link"),
        )
        .unwrap();
        symlink("../../..", t.path().join("work/src/up")).unwrap();
        let got = list(t.path()).unwrap();
        assert!(got.contains(&b"src/link".to_vec()) && got.contains(&b"src/up".to_vec()));
        assert!(
            !got.iter().any(|p| p.ends_with(b"canary")),
            "nothing behind a link is listed: {got:?}"
        );
        // A `work` that is itself a symlink is refused, not followed.
        let u = tempfile::tempdir().unwrap();
        symlink(outside.path(), u.path().join("work")).unwrap();
        assert!(matches!(list(u.path()), Err(Unlisted::Failed(_))));
    }

    #[test]
    fn only_a_regular_file_held_whole_is_read_on_the_host() {
        let t = tree();
        let w = t.path().join("work");
        let read = |rel: &str, max: u64| read_file(t.path(), rel.as_bytes(), max);
        std::fs::set_permissions(
            w.join("src/deep/a.py"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(
            read("src/deep/a.py", 10),
            HostRead::File {
                mode: 0o100755,
                data: b"x".to_vec()
            }
        );
        std::fs::write(w.join("big"), "0123456789").unwrap();
        assert_eq!(read("big", 9), HostRead::TooLarge);
        assert!(matches!(read("big", 10), HostRead::File { .. }));
        // Gone, a whiteout's name, a directory, /work itself: the engine reads those.
        for rel in ["src/gone.py", "src/.wh.gone.py", "src", "new", ""] {
            assert_eq!(read(rel, 10), HostRead::Engine, "{rel}");
        }
        // A FIFO is never opened (opening it would block), a symlink never followed, and no
        // link on the way is taken.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            w.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("canary"), "secret").unwrap();
        symlink(outside.path().join("canary"), w.join("link")).unwrap();
        symlink(outside.path(), w.join("dirlink")).unwrap();
        for rel in [
            "fifo",
            "link",
            "dirlink/canary",
            "../home/box/.bash_history",
        ] {
            assert_eq!(read(rel, 100), HostRead::Engine, "{rel}");
        }
        // An origin record is only that (fuse-overlayfs writes one on every copy-up); stat
        // kept aside means the upper file's mode is not the container's.
        std::fs::write(w.join("copied"), "c").unwrap();
        rustix::fs::setxattr(
            w.join("copied"),
            "user.fuseoverlayfs.origin",
            b"o",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert!(matches!(read("copied", 10), HostRead::File { .. }));
        rustix::fs::setxattr(
            w.join("copied"),
            "user.fuseoverlayfs.override_stat",
            b"0:0:0755",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(read("copied", 10), HostRead::Engine);
        // A file whose size has no blocks behind it (overlay's metacopy: the data is below).
        let sparse = std::fs::File::create(w.join("sparse")).unwrap();
        sparse.set_len(4096).unwrap();
        assert_eq!(read("sparse", 1 << 20), HostRead::Engine);
    }

    #[test]
    fn no_work_directory_is_an_empty_change() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("tmp")).unwrap();
        assert_eq!(list(t.path()), Err(Unlisted::Empty));
    }
}

#[cfg(test)]
mod usage_tests {
    #[test]
    fn empty_directories_count_as_the_disk_they_use() {
        let dir = tempfile::tempdir().unwrap();
        let empty = super::disk_usage(dir.path(), 1000).unwrap();
        assert_eq!(empty, 0);
        for i in 0..100 {
            std::fs::create_dir(dir.path().join(format!("d{i}"))).unwrap();
        }
        let used = super::disk_usage(dir.path(), 1000).unwrap();
        assert!(used >= 100 * 4096, "{used}");
        // Past the entry bound: a lower bound, never nothing.
        let bounded = super::disk_usage(dir.path(), 50).unwrap();
        assert!(
            bounded >= 50 * 4096 && bounded < used,
            "{bounded} of {used}"
        );
        assert_eq!(super::disk_usage(&dir.path().join("gone"), 50), None);
    }
}
