//! The three ways a change is listed — the container's upper layer read on the host, the agent
//! container's change log, the engine's diff — give the same change; the log is a hint only.

use crate::common::*;

fn project(salt: &str, agent: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.write("src/math.py", "def one():\n    return 1\n");
    repo.write("tests/spec.txt", "protected spec\n");
    repo.write("bin/tool.sh", "#!/bin/sh\necho tool\n");
    repo.agent(agent);
    repo
}

/// The attempt's `changes.json`.
fn changes(unit: &serde_json::Value) -> serde_json::Value {
    let dir = unit["attempt_dir"].as_str().expect("an attempt directory");
    let data = std::fs::read(std::path::Path::new(dir).join("changes.json")).unwrap();
    serde_json::from_slice(&data).unwrap()
}

fn listed(set: &serde_json::Value) -> Vec<(String, String)> {
    set["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_upper_layer_the_change_log_and_the_engine_diff_read_the_same_change() {
    require_base_image();
    // `upper` is listed from the upper layer (this engine is local); `watched` and `engine`
    // are forced to the change log, and `engine` stops the watcher first, so its change is
    // listed by the engine's diff.
    let repo = project(
        "watch-same",
        r#"[ "$BOXDELEGATE_UNIT_ID" = engine ] && pkill -x inotifywait
echo more >> src/math.py; chmod +x src/math.py
mkdir -p new/deep; echo a > new/deep/a.txt
rm tests/spec.txt
mv bin moved-bin
ln -s math.py src/link.py
printf x > "src/caf$(printf '\303\251').txt"
echo t > transient; rm transient
true"#,
    );
    // Nothing is in scope: both units are rejected, so both start from the same snapshot.
    for id in ["watched", "engine", "upper"] {
        repo.unit(id, "scope = [\"nothing/**\"]", "Change things.");
    }
    repo.commit("project");
    let refs = repo.refs();
    let mut sets = Vec::new();
    let mut patches = Vec::new();
    for (id, how) in [("watched", "log"), ("engine", "log"), ("upper", "auto")] {
        let (code, units, err) = repo.run_with(&["--unit", id], &[("BOXDELEGATE_EXTRACT", how)]);
        assert_eq!(code, 10, "{id}: {err}\n{units:?}");
        sets.push(changes(&units[0]));
        let patch = std::fs::read_to_string(units[0]["patch"].as_str().unwrap()).unwrap();
        patches.push(patch);
    }
    assert_eq!(sets[2]["listing"], "upper", "{}", sets[2]);
    assert_eq!(sets[0]["listing"], "log", "{}", sets[0]);
    assert!(sets[0].get("log_unusable").is_none(), "{}", sets[0]);
    assert_eq!(sets[1]["listing"], "diff", "{}", sets[1]);
    assert!(
        sets[1]["log_unusable"]
            .as_str()
            .unwrap()
            .contains("no end mark"),
        "{}",
        sets[1]
    );
    let expected: Vec<(String, String)> = [
        ("bin/tool.sh", "deleted"),
        ("moved-bin/tool.sh", "added"),
        ("new/deep/a.txt", "added"),
        ("src/café.txt", "added"),
        ("src/link.py", "added"),
        ("src/math.py", "modified"),
        ("tests/spec.txt", "deleted"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), k.to_string()))
    .collect();
    assert_eq!(listed(&sets[0]), expected);
    // Byte for byte the same change: paths, kinds, modes, blobs, symlink targets; the same
    // patch.
    assert_eq!(sets[0]["changes"], sets[1]["changes"]);
    assert_eq!(sets[0]["changes"], sets[2]["changes"]);
    assert_eq!(patches[0], patches[1]);
    assert_eq!(patches[0], patches[2]);
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn a_file_changed_alone_is_read_from_the_upper_layer_on_the_host_and_reads_the_same() {
    require_base_image();
    let repo = project(
        "watch-host-read",
        "printf 'def two():\\n    return 2\\n' >> src/math.py; chmod 755 src/math.py",
    );
    for id in ["hosted", "logged"] {
        repo.unit(id, "scope = [\"nothing/**\"]", "Change math.");
    }
    repo.commit("project");
    let mut sets = Vec::new();
    let mut patches = Vec::new();
    for (id, how) in [("hosted", "auto"), ("logged", "log")] {
        let (code, units, err) = repo.run_with(&["--unit", id], &[("BOXDELEGATE_EXTRACT", how)]);
        assert_eq!(code, 10, "{id}: {err}\n{units:?}");
        sets.push(changes(&units[0]));
        patches.push(std::fs::read_to_string(units[0]["patch"].as_str().unwrap()).unwrap());
    }
    assert_eq!(sets[0]["listing"], "upper", "{}", sets[0]);
    assert_eq!(sets[0]["reads"], 1, "{}", sets[0]);
    assert_eq!(sets[0]["host_reads"], 1, "read on the host: {}", sets[0]);
    assert_eq!(sets[1]["listing"], "log", "{}", sets[1]);
    assert_eq!(sets[1]["host_reads"], 0, "read by the engine: {}", sets[1]);
    assert_eq!(
        listed(&sets[0]),
        [("src/math.py".to_string(), "modified".to_string())]
    );
    assert_eq!(
        sets[0]["changes"][0]["node"]["mode"], 0o100755,
        "{}",
        sets[0]
    );
    assert_eq!(sets[0]["changes"], sets[1]["changes"]);
    assert_eq!(patches[0], patches[1]);
    assert!(patches[0].contains("+def two():"), "{}", patches[0]);
}

#[test]
fn a_forged_change_log_can_only_lose_the_agents_own_change() {
    require_base_image();
    let log = "/tmp/.boxdelegate-watch/log";
    let repo = project(
        "watch-forged",
        &format!(
            r#"pkill -x inotifywait
echo changed >> src/math.py
end='CREATE /tmp/.boxdelegate-watch/sync/end'
case "$BOXDELEGATE_UNIT_ID" in
  hides) printf "MODIFY /work/tests/spec.txt\0$end\0" > {log} ;;
  escapes) printf "MODIFY /work/../etc/passwd\0MODIFY /work/src/math.py\0$end\0" > {log} ;;
  links) rm -f {log}; ln -s /etc/passwd {log} ;;
esac
true"#
        ),
    );
    for id in ["hides", "escapes", "links"] {
        repo.unit(id, "scope = [\"nothing/**\"]", "Change math.");
    }
    repo.commit("project");
    let refs = repo.refs();

    // A well-formed log that leaves the change out: the change is not read, so nothing of it
    // can land; what it names is read and found unchanged.
    let log_only = [("BOXDELEGATE_EXTRACT", "log")];
    let (code, units, err) = repo.run_with(&["--unit", "hides"], &log_only);
    let set = changes(&units[0]);
    assert_eq!(set["listing"], "log", "{set}");
    assert_eq!(listed(&set), vec![], "{code} {err}");
    assert_ne!(units[0]["status"], "landed");

    // A record naming a path outside /work, or a log that is not a regular file: the log is not
    // used at all; the engine's diff finds the change (and only it).
    for (id, why) in [
        ("escapes", "no watcher writes"),
        ("links", "no watcher writes"),
    ] {
        let (code, units, err) = repo.run_with(&["--unit", id], &log_only);
        assert_eq!(code, 10, "{id}: {err}\n{units:?}");
        let set = changes(&units[0]);
        assert_eq!(set["listing"], "diff", "{id}: {set}");
        assert!(
            set["log_unusable"].as_str().unwrap().contains(why),
            "{id}: {set}"
        );
        assert_eq!(
            listed(&set),
            vec![("src/math.py".to_string(), "modified".to_string())],
            "{id}"
        );
        let patch = std::fs::read_to_string(units[0]["patch"].as_str().unwrap()).unwrap();
        assert!(!patch.contains("root:"), "nothing of /etc/passwd is read");
    }
    assert_eq!(repo.refs(), refs, "nothing landed");
}

#[test]
fn changes_in_one_directory_are_read_at_once_and_only_the_change_counts_against_the_limits() {
    require_base_image();
    let repo = TestRepo::with_project("watch-merged");
    for i in 0..12 {
        repo.write(&format!("lib/f{i}.txt"), &format!("{i}\n"));
    }
    repo.agent(
        r#"case "$BOXDELEGATE_UNIT_ID" in
  edit) echo more >> lib/f1.txt; echo more >> lib/f2.txt; rm lib/f3.txt; echo new > lib/new.txt ;;
  many) for i in 1 2 3 4 5 6; do echo "$i" > "lib/extra$i.txt"; done ;;
esac
true"#,
    );
    // Five files may change; the directory read back holds a dozen.
    let front = "scope = [\"lib/**\"]\n[limits]\nmax_files = 5";
    repo.unit("edit", front, "Edit lib.");
    repo.unit("many", front, "Add to lib.");
    repo.commit("project");

    let log_only = [("BOXDELEGATE_EXTRACT", "log")];
    let (code, units, err) = repo.run_with(&["--unit", "edit"], &log_only);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let set = changes(&units[0]);
    assert_eq!(set["listing"], "log", "{set}");
    assert_eq!(
        set["reads"], 1,
        "four changed paths of one directory, one read: {set}"
    );
    assert!(set["truncated"].is_null(), "{set}");
    let expected: Vec<(String, String)> = [
        ("lib/f1.txt", "modified"),
        ("lib/f2.txt", "modified"),
        ("lib/f3.txt", "deleted"),
        ("lib/new.txt", "added"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), k.to_string()))
    .collect();
    assert_eq!(listed(&set), expected);
    let branch = "boxdelegate/edit";
    assert_eq!(
        repo.git(&["show", &format!("{branch}:lib/f1.txt")]),
        "1\nmore"
    );
    assert_eq!(repo.git(&["show", &format!("{branch}:lib/new.txt")]), "new");
    let files = repo.git(&["ls-tree", "--name-only", &format!("{branch}:lib")]);
    assert_eq!(files.lines().count(), 12, "{files}");
    assert!(!files.contains("f3.txt"), "{files}");

    // Six new files are over the limit, read in one request or not.
    let (code, units, err) = repo.run_with(&["--unit", "many"], &log_only);
    assert_eq!(code, 10, "{err}\n{units:?}");
    let rules = rejection_rules(&units[0]);
    assert!(rules.iter().any(|r| r == "limit-files"), "{rules:?}");
}

#[test]
fn links_planted_in_the_upper_layer_never_make_the_host_read_outside_it() {
    require_base_image();
    // A canary file and directory on the host, watched for any open or read while the run
    // lists the change from the upper layer.
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary.txt");
    std::fs::write(&canary, "host secret\n").unwrap();
    let canary_dir = outside.path().join("dir");
    std::fs::create_dir(&canary_dir).unwrap();
    std::fs::write(canary_dir.join("inside.txt"), "host secret\n").unwrap();
    let mut ino = inotify::Inotify::init().unwrap();
    let mask = inotify::WatchMask::OPEN | inotify::WatchMask::ACCESS;
    ino.watches().add(&canary, mask).unwrap();
    ino.watches().add(&canary_dir, mask).unwrap();
    let repo = project(
        "upper-canary",
        &format!(
            "ln -s {c} src/file-link; ln -s {d} src/dir-link; ln -s {d} linkdir; mkdir -p src/deep; ln -s ../../../../../../../{c} src/deep/up; echo changed >> src/math.py",
            c = canary.display(),
            d = canary_dir.display()
        ),
    );
    repo.unit("plant", "scope = [\"src/**\", \"linkdir\"]", "Change math.");
    repo.commit("project");
    let (code, units, err) = repo.run(&["--unit", "plant"]);
    let u = &units[0];
    assert_eq!(changes(u)["listing"], "upper", "{u}");
    assert_eq!(code, 10, "{err}\n{u}");
    let rules = rejection_rules(u);
    assert!(
        !rules.is_empty() && rules.iter().all(|r| r == "symlink-escape"),
        "every planted link is rejected as an escape: {u}"
    );
    let mut buf = [0u8; 4096];
    let events: Vec<String> = match ino.read_events(&mut buf) {
        Ok(evs) => evs.map(|e| format!("{:?} {:?}", e.mask, e.name)).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => vec![],
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        events,
        Vec::<String>::new(),
        "the host never opened the canaries"
    );
    // The watch works: reading the canary here is seen (so the assertion above could fail);
    // the event is queued by the read itself, before it returns.
    let _ = std::fs::read(&canary).unwrap();
    let seen = ino
        .read_events(&mut buf)
        .map(|mut e| e.next().is_some())
        .unwrap_or(false);
    assert!(seen, "a read of the canary is seen by the watch");
}

#[test]
fn a_hostile_agent_leaves_the_same_change_for_every_mechanism() {
    require_base_image();
    let repo = project(
        "mechanisms-hostile",
        r#"[ "$BOXDELEGATE_UNIT_ID" = engine ] && pkill -x inotifywait
mv src/math.py src/renamed.py
rm -r tests
rm bin/tool.sh; mkdir bin/tool.sh; echo inside > bin/tool.sh/x
mkdir -p dir2file; rm -r dir2file; echo now-a-file > dir2file
ln -s /etc/passwd out-abs; ln -s ../../../../etc out-rel
echo a > hard1; ln hard1 hard2
mkfifo pipe
echo s > suid; chmod 4755 suid
printf n > "$(printf 'new\nline')"
printf b > "$(printf 'bad\377name')"
cp README.md /tmp/r; echo changed >> README.md; cp /tmp/r README.md
true"#,
    );
    for id in ["watched", "engine", "upper"] {
        repo.unit(id, "scope = [\"nothing/**\"]", "Change things.");
    }
    repo.commit("project");
    let mut sets = Vec::new();
    for (id, how) in [("watched", "log"), ("engine", "log"), ("upper", "auto")] {
        let (code, units, err) = repo.run_with(&["--unit", id], &[("BOXDELEGATE_EXTRACT", how)]);
        assert_eq!(code, 10, "{id}: {err}\n{units:?}");
        let set = changes(&units[0]);
        let rules = rejection_rules(&units[0]);
        sets.push((set, rules));
    }
    assert_eq!(sets[0].0["listing"], "log", "{}", sets[0].0);
    assert_eq!(sets[1].0["listing"], "diff", "{}", sets[1].0);
    assert_eq!(sets[2].0["listing"], "upper", "{}", sets[2].0);
    let paths: Vec<String> = listed(&sets[2].0).into_iter().map(|(p, _)| p).collect();
    for p in [
        "src/renamed.py",
        "bin/tool.sh/x",
        "dir2file",
        "hard2",
        "pipe",
        "suid",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} listed: {paths:?}");
    }
    assert!(
        !paths.iter().any(|p| p == "README.md"),
        "a file restored to its snapshot bytes is no change: {paths:?}"
    );
    for (set, rules) in &sets[..2] {
        assert_eq!(set["changes"], sets[2].0["changes"], "the same change set");
        assert_eq!(rules, &sets[2].1, "the same rejections");
    }
}
