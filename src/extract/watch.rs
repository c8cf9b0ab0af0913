//! The agent container's change log: which paths under `/work` moved, as a hint for extraction.
//!
//! The engine's filesystem diff walks the whole container filesystem on some storage drivers
//! (fuse-overlayfs: about 30 s for a 100k-file tree), so extraction would cost as much as the
//! repository. Instead the agent's command runs under a small wrapper script: it starts
//! `inotifywait` (inotify-tools, in the base image) on `/work` and each directory of the
//! snapshot (a list the runner uploads, so nothing walks the tree; without it, a recursive
//! watch) and waits until every watch is set before it starts the agent; when the agent exits, it stops every other process of the
//! container's user, writes a mark in a second watched directory and waits until the watcher
//! has logged it. One inotify queue is ordered, so every change made before the stop is in the
//! log before the mark. Extraction then reads back only the paths the log names. A directory
//! the agent makes or moves in needs no watch of its own: its appearance is logged by its
//! parent's, and it is read back whole.
//!
//! The log comes from inside the box, so it is a hint and nothing more. A path it names is read
//! through the archive API and judged like any other; a path it leaves out is a change the
//! agent loses — what lands is what was read, scoped and verified, never more. When the log is
//! missing (no `inotifywait` in the image, a watch limit reached), unterminated (the watcher
//! died), overflowed, too large or malformed, extraction falls back on the engine's diff.
//!
//! `inotifywait` is used rather than a watcher of our own because the container runs the
//! image's programs only: a Debian package is what an air-gapped site can install and audit.
//!
//! May not: trust the log for anything but which paths to read; walk the snapshot's tree in the
//! container.

use std::collections::BTreeSet;

/// The log: NUL-terminated records `EVENTS PATH`. The wrapper keeps its files outside `/work`,
/// in the writable layer, so that the log outlives the container's stop (a tmpfs would not).
pub const LOG: &str = "/tmp/.boxdelegate-watch/log";
/// The list of directories to watch, uploaded by the runner (one path per line).
pub const DIRS: &str = ".boxdelegate-watch/dirs";
/// The mark written after the agent exited.
const END: &[u8] = b"CREATE /tmp/.boxdelegate-watch/sync/end";
/// Larger logs are not read (the engine's diff is used instead).
pub const LOG_CAP: u64 = 64 << 20;
/// More paths than this are read back as their common directories, so that the number of
/// archive requests stays bounded whatever the agent did.
pub const MAX_ROOTS: usize = 256;

/// `sh -c` script run as the agent container's command; the agent's own command follows as
/// its arguments. Its exit status is the agent's.
const SCRIPT: &str = r#"d=/tmp/.boxdelegate-watch
w=
watch() {
  inotifywait -m --no-newline --format '%e %w%f%0' \
    -e modify,attrib,close_write,move,create,delete \
    -o "$d/log" "$@" 2>"$d/err" </dev/null &
  w=$!
}
if command -v inotifywait >/dev/null 2>&1 && mkdir -p "$d/sync" 2>/dev/null; then
  if [ -f "$d/dirs" ]; then watch --fromfile "$d/dirs"; else watch -r "$d/sync" /work; fi
  until grep -q 'Watches established' "$d/err" 2>/dev/null; do
    kill -0 "$w" 2>/dev/null || { w=; break; }
    sleep 0.01
  done
fi
"$@"
rc=$?
if [ -n "$w" ] && kill -0 "$w" 2>/dev/null; then
  kill -STOP -1 2>/dev/null
  kill -CONT "$w" 2>/dev/null
  : > "$d/sync/end"
  n=0
  until grep -qa "CREATE $d/sync/end" "$d/log" 2>/dev/null || [ "$n" -ge 1000 ]; do
    sleep 0.01
    n=$((n + 1))
  done
fi
exit "$rc"
"#;

/// The container command that runs `cmd` under the watch.
pub fn wrap(cmd: &[String]) -> Vec<String> {
    let mut out = vec![
        "sh".to_string(),
        "-c".to_string(),
        SCRIPT.to_string(),
        "boxdelegate-watch".to_string(),
    ];
    out.extend(cmd.iter().cloned());
    out
}

/// The directory list for `--fromfile`: the sync directory, `/work` and every directory of the
/// snapshot (submodules' among them). `None` where a name cannot be a line of it (a newline; the recursive watch is used).
pub fn dirs_file(entries: &[crate::snapshot::TreeEntry]) -> Option<Vec<u8>> {
    let mut dirs: BTreeSet<&[u8]> = BTreeSet::new();
    for e in entries {
        // A submodule is shipped as an empty directory: a write into it must be seen too.
        if e.kind == crate::snapshot::EntryKind::Gitlink {
            dirs.insert(&e.path);
        }
        let mut p: &[u8] = &e.path;
        while let Some(i) = p.iter().rposition(|b| *b == b'/') {
            p = &p[..i];
            if !dirs.insert(p) {
                break;
            }
        }
    }
    let mut out = b"/tmp/.boxdelegate-watch/sync\n/work\n".to_vec();
    for d in dirs {
        if d.contains(&b'\n') {
            return None;
        }
        out.extend_from_slice(b"/work/");
        out.extend_from_slice(d);
        out.push(b'\n');
    }
    Some(out)
}

/// Why a log cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Missing,
    TooLarge,
    Unterminated,
    Overflowed,
    Malformed,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unusable::Missing => {
                "no change log (no inotifywait in the image, or its watches could not be set)"
            }
            Unusable::TooLarge => "the change log is larger than 64 MiB",
            Unusable::Unterminated => "the change log has no end mark (the watcher stopped early)",
            Unusable::Overflowed => "the watcher's event queue overflowed",
            Unusable::Malformed => "the change log holds a record no watcher writes",
        })
    }
}

/// The paths (relative to `/work`) a log names as moved: each is to be read back whole (a
/// directory with everything under it), or found gone.
pub fn parse(log: &[u8]) -> Result<BTreeSet<Vec<u8>>, Unusable> {
    let mut paths = BTreeSet::new();
    let mut ended = false;
    for record in log.split(|b| *b == 0) {
        if record == END {
            ended = true;
            break;
        }
        if record.is_empty() {
            continue;
        }
        let Some(space) = record.iter().position(|b| *b == b' ') else {
            return Err(Unusable::Malformed);
        };
        let (events, path) = (&record[..space], &record[space + 1..]);
        let events: Vec<&[u8]> = events.split(|b| *b == b',').collect();
        if events.iter().any(|e| *e == b"Q_OVERFLOW") {
            return Err(Unusable::Overflowed);
        }
        if events
            .iter()
            .any(|e| e.is_empty() || !e.iter().all(|b| b.is_ascii_uppercase() || *b == b'_'))
        {
            return Err(Unusable::Malformed);
        }
        let Some(rel) = path.strip_prefix(b"/work/") else {
            continue; // the sync directory, or /work itself
        };
        let rel = rel.strip_suffix(b"/").unwrap_or(rel);
        if rel.is_empty() {
            continue;
        }
        if rel
            .split(|b| *b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
        {
            return Err(Unusable::Malformed);
        }
        let has = |name: &[u8]| events.contains(&name);
        // A directory's own attribute or content events say nothing about its entries (those
        // come from the entries' own records); only its appearance or disappearance counts.
        if has(b"ISDIR")
            && !(has(b"CREATE") || has(b"DELETE") || has(b"MOVED_FROM") || has(b"MOVED_TO"))
        {
            continue;
        }
        paths.insert(rel.to_vec());
    }
    if !ended {
        return Err(Unusable::Unterminated);
    }
    Ok(paths)
}

fn ancestor(path: &[u8], depth: usize) -> &[u8] {
    if depth == 0 {
        return b"";
    }
    let mut seen = 0;
    for (i, b) in path.iter().enumerate() {
        if *b == b'/' {
            seen += 1;
            if seen == depth {
                return &path[..i];
            }
        }
    }
    path
}

/// The paths to read back for `paths`: none inside another (its archive holds them), each
/// valid UTF-8 (the archive API takes a string; a name that is not is read through its
/// nearest parent that is), and at most `max` of them (the deepest common directories that
/// keep the count at `max`; the last resort is `/work` itself, "").
pub fn roots(paths: &BTreeSet<Vec<u8>>, max: usize) -> Vec<String> {
    let mut set: BTreeSet<Vec<u8>> = paths
        .iter()
        .map(|p| {
            let mut p: &[u8] = p;
            while std::str::from_utf8(p).is_err() {
                p = p.rsplitn(2, |b| *b == b'/').nth(1).unwrap_or(b"");
            }
            p.to_vec()
        })
        .collect();
    // Drops every path with an ancestor in the set (through each of its ancestors: sorted
    // order alone does not put `a/b` right after `a` when `a-c` exists).
    let collapse = |set: &BTreeSet<Vec<u8>>| -> BTreeSet<Vec<u8>> {
        set.iter()
            .filter(|p| {
                let everything = set.contains(b"".as_slice());
                (p.is_empty() || !everything)
                    && !p
                        .iter()
                        .enumerate()
                        .any(|(i, b)| *b == b'/' && set.contains(&p[..i]))
            })
            .cloned()
            .collect()
    };
    set = collapse(&set);
    if set.len() > max {
        let deepest = set
            .iter()
            .map(|p| p.iter().filter(|b| **b == b'/').count() + 1)
            .max()
            .unwrap_or(0);
        for depth in (0..deepest).rev() {
            set = collapse(&set.iter().map(|p| ancestor(p, depth).to_vec()).collect());
            if set.len() <= max {
                break;
            }
        }
    }
    set.into_iter()
        .map(|p| String::from_utf8(p).expect("made valid above"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend_from_slice(r);
            out.push(0);
        }
        out
    }

    fn set(paths: &[&str]) -> BTreeSet<Vec<u8>> {
        paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_log_names_what_appeared_changed_or_went() {
        let data = log(&[
            b"MODIFY /work/src/a.rs",
            b"CLOSE_WRITE,CLOSE /work/src/a.rs",
            b"CREATE,ISDIR /work/new",
            b"CREATE /work/new/x",
            b"ATTRIB,ISDIR /work/src",
            b"ATTRIB,ISDIR /work/src/",
            b"DELETE /work/old.txt",
            b"MOVED_FROM,ISDIR /work/d",
            b"MOVED_TO,ISDIR /work/e",
            b"ATTRIB /work/run.sh",
            b"CREATE /work/line\nbreak",
            END,
        ]);
        assert_eq!(
            parse(&data).unwrap(),
            set(&[
                "src/a.rs",
                "new",
                "new/x",
                "old.txt",
                "d",
                "e",
                "run.sh",
                "line\nbreak"
            ])
        );
    }

    #[test]
    fn a_log_without_its_end_mark_or_with_an_overflow_is_not_used() {
        assert_eq!(parse(b""), Err(Unusable::Unterminated));
        assert_eq!(
            parse(&log(&[b"MODIFY /work/a"])),
            Err(Unusable::Unterminated)
        );
        assert_eq!(
            parse(&log(&[b"Q_OVERFLOW ", END])),
            Err(Unusable::Overflowed)
        );
        // Only the end mark's own record ends the log: a file of that name under /work does not.
        assert_eq!(
            parse(&log(&[b"CREATE /work/tmp/.boxdelegate-watch/sync/end"])),
            Err(Unusable::Unterminated)
        );
    }

    #[test]
    fn records_no_watcher_writes_make_the_log_unusable() {
        for bad in [
            b"MODIFY /work/../etc/passwd".as_slice(),
            b"MODIFY /work/a//b",
            b"MODIFY /work/./a",
            b"NOSPACE",
            b"modify /work/a",
            b",MODIFY /work/a",
        ] {
            assert_eq!(
                parse(&log(&[bad, END])),
                Err(Unusable::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Paths outside /work are not ours (the sync directory): skipped, not read.
        assert_eq!(
            parse(&log(&[b"CREATE /etc/passwd", b"CREATE /work", END])).unwrap(),
            set(&[])
        );
        // What follows the end mark is not read.
        assert_eq!(parse(&log(&[END, b"MODIFY /work/late"])).unwrap(), set(&[]));
    }

    #[test]
    fn the_directory_list_names_each_directory_of_the_snapshot_once() {
        use crate::snapshot::{EntryKind, TreeEntry};
        let entry = |p: &[u8]| TreeEntry {
            kind: EntryKind::File { executable: false },
            oid: String::new(),
            path: p.to_vec(),
        };
        let entries = [
            entry(b"README"),
            entry(b"src/a/x.rs"),
            entry(b"src/a/y.rs"),
            entry(b"src/b.rs"),
            entry(b"tests/t.rs"),
        ];
        assert_eq!(
            String::from_utf8(dirs_file(&entries).unwrap()).unwrap(),
            "/tmp/.boxdelegate-watch/sync\n/work\n/work/src\n/work/src/a\n/work/tests\n"
        );
        assert_eq!(dirs_file(&[entry(b"a\nb/c")]), None);
    }

    #[test]
    fn roots_drop_what_lies_under_another_root() {
        assert_eq!(
            roots(&set(&["a", "a-c", "a/b", "a/c/d", "ab", "b/c"]), 10),
            ["a", "a-c", "ab", "b/c"]
        );
    }

    #[test]
    fn a_name_that_is_not_utf8_is_read_through_its_parent() {
        let mut paths = set(&["src/ok.rs"]);
        paths.insert(b"src/bad\xff/x".to_vec());
        paths.insert(b"top\xfe".to_vec());
        assert_eq!(roots(&paths, 10), [""]);
        let mut paths = set(&["src/ok.rs"]);
        paths.insert(b"src/bad\xff/x".to_vec());
        assert_eq!(roots(&paths, 10), ["src"]);
    }

    #[test]
    fn too_many_roots_become_their_common_directories() {
        let many: BTreeSet<Vec<u8>> = (0..40)
            .map(|i| format!("d{}/e{}/f{i}", i % 4, i % 8).into_bytes())
            .collect();
        let r = roots(&many, 10);
        assert_eq!(r.len(), 8, "{r:?}");
        assert!(r.iter().all(|p| p.matches('/').count() == 1), "{r:?}");
        let r = roots(&many, 5);
        assert_eq!(r, ["d0", "d1", "d2", "d3"]);
        assert_eq!(roots(&many, 1), [""]);
    }
}
