//! Where a dependency manifest sends the install: lines and keys that redirect a package
//! source (another index, a URL, a git repository, a path outside the repository, a registry
//! or mirror configuration file). A change that adds one is rejected (rule `dependency-source`,
//! naming the line), since the dependency install of a change's manifests runs with a network
//! and would otherwise fetch, and build, what the agent names. Pure functions over file
//! contents.
//!
//! May not: read a file, call the engine or git; fetch anything.

use std::collections::BTreeSet;

/// Configuration files that point an installer at a registry, a mirror or credentials: a
/// change may not add or edit one.
const CONFIG_FILES: &[&str] = &[
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pnpmfile.cjs",
    "pip.conf",
    "pip.ini",
    ".pypirc",
    "uv.toml",
    "poetry.toml",
    ".condarc",
];

/// Whether a change to `path` is a change to an installer's configuration file.
pub fn is_config_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    CONFIG_FILES.contains(&name)
        || path == ".cargo/config"
        || path == ".cargo/config.toml"
        || path.ends_with("/.cargo/config")
        || path.ends_with("/.cargo/config.toml")
}

/// The source redirections in the manifest at `path` (empty for a file that is no manifest),
/// each said in one line.
pub fn redirects(path: &str, content: &str) -> BTreeSet<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let dir_depth = path.matches('/').count();
    if name.starts_with("requirements") && name.ends_with(".txt") {
        requirements(content)
    } else if name == "pyproject.toml" {
        pyproject(content)
    } else if name == "Cargo.toml" {
        cargo(content, dir_depth)
    } else if name == "package.json" {
        package_json(content, dir_depth)
    } else if name == "go.mod" {
        go_mod(content, dir_depth)
    } else {
        BTreeSet::new()
    }
}

/// A manifest this module cannot read says nothing of where it sends the install: that is a
/// refusal, never a pass (one the snapshot's own unreadable manifest shares is not the change's).
fn unreadable(what: &str) -> String {
    format!("{what} that cannot be read, so where it sends the install cannot be told")
}

fn requirements(content: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in content.lines() {
        let l = line.split(" #").next().unwrap_or(line).trim();
        let option = [
            "-i",
            "--index-url",
            "--extra-index-url",
            "-f",
            "--find-links",
            "--trusted-host",
        ]
        .iter()
        .any(|o| l == *o || l.starts_with(&format!("{o} ")) || l.starts_with(&format!("{o}=")));
        if option || l.contains("://") || l.contains(" @ ") || l.starts_with("git+") {
            out.insert(format!("requirements line `{l}`"));
        }
    }
    out
}

fn toml_value(content: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(content)
        .ok()
        .map(toml::Value::Table)
}

fn pyproject(content: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(v) = toml_value(content) else {
        out.insert(unreadable("pyproject.toml"));
        return out;
    };
    let tool = v.get("tool");
    for (key, what) in [
        (&["uv", "sources"][..], "[tool.uv.sources]"),
        (&["uv", "index"][..], "[[tool.uv.index]]"),
        (&["uv", "index-url"][..], "tool.uv.index-url"),
        (&["uv", "extra-index-url"][..], "tool.uv.extra-index-url"),
        (&["uv", "find-links"][..], "tool.uv.find-links"),
        (&["poetry", "source"][..], "[[tool.poetry.source]]"),
        (&["pdm", "source"][..], "[[tool.pdm.source]]"),
        (&["pip"][..], "[tool.pip]"),
    ] {
        let mut at = tool;
        for k in key {
            at = at.and_then(|t| t.get(k));
        }
        if at.is_some() {
            out.insert(format!("pyproject.toml {what}"));
        }
    }
    // A dependency named by URL or a local path: "pkg @ https://…", "pkg @ file:///…".
    let mut deps: Vec<&str> = Vec::new();
    fn strings<'a>(v: Option<&'a toml::Value>, deps: &mut Vec<&'a str>) {
        if let Some(a) = v.and_then(|v| v.as_array()) {
            deps.extend(a.iter().filter_map(|d| d.as_str()));
        }
    }
    let project = v.get("project");
    strings(project.and_then(|p| p.get("dependencies")), &mut deps);
    for table in [
        project.and_then(|p| p.get("optional-dependencies")),
        v.get("dependency-groups"),
    ]
    .into_iter()
    .flatten()
    .filter_map(|t| t.as_table())
    {
        for group in table.values() {
            strings(Some(group), &mut deps);
        }
    }
    for d in deps {
        if d.contains("://") || d.contains(" @ ") || d.contains("@file:") {
            out.insert(format!("pyproject.toml dependency `{d}`"));
        }
    }
    out
}

/// Whether a relative path written in a manifest `depth` directories deep leaves the
/// repository (or is absolute).
fn leaves_repo(path: &str, depth: usize) -> bool {
    if path.starts_with('/') {
        return true;
    }
    let mut d = depth as i64;
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                d -= 1;
                if d < 0 {
                    return true;
                }
            }
            _ => d += 1,
        }
    }
    false
}

fn cargo(content: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(v) = toml_value(content) else {
        out.insert(unreadable("Cargo.toml"));
        return out;
    };
    for table in ["source", "patch", "replace", "registries", "registry"] {
        if v.get(table).is_some() {
            out.insert(format!("Cargo.toml [{table}]"));
        }
    }
    let mut check = |section: &str, deps: &toml::Value| {
        let Some(deps) = deps.as_table() else { return };
        for (name, spec) in deps {
            let Some(spec) = spec.as_table() else {
                continue;
            };
            for key in ["git", "registry", "registry-index"] {
                if let Some(val) = spec.get(key) {
                    out.insert(format!("Cargo.toml [{section}] {name}: {key} = {val}"));
                }
            }
            if let Some(p) = spec.get("path").and_then(|p| p.as_str()) {
                if leaves_repo(p, depth) {
                    out.insert(format!(
                        "Cargo.toml [{section}] {name}: path = {p:?} outside the repository"
                    ));
                }
            }
        }
    };
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(d) = v.get(section) {
            check(section, d);
        }
        if let Some(d) = v.get("workspace").and_then(|w| w.get(section)) {
            check(&format!("workspace.{section}"), d);
        }
    }
    if let Some(targets) = v.get("target").and_then(|t| t.as_table()) {
        for (cfg, t) in targets {
            for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
                if let Some(d) = t.get(section) {
                    check(&format!("target.{cfg}.{section}"), d);
                }
            }
        }
    }
    out
}

fn package_json(content: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(v) = serde_json::from_str::<serde_json::Value>(content) else {
        out.insert(unreadable("package.json"));
        return out;
    };
    for section in [
        "dependencies",
        "devDependencies",
        "optionalDependencies",
        "peerDependencies",
        "overrides",
        "resolutions",
    ] {
        let Some(deps) = v.get(section).and_then(|d| d.as_object()) else {
            continue;
        };
        for (name, spec) in deps {
            let Some(spec) = spec.as_str() else { continue };
            let local = spec
                .strip_prefix("file:")
                .or_else(|| spec.strip_prefix("link:"));
            let redirect = spec.contains("://")
                || spec.starts_with("git")
                || spec.starts_with("github:")
                || spec.starts_with("gitlab:")
                || spec.starts_with("bitbucket:")
                || spec.starts_with("npm:")
                || local.is_some_and(|p| leaves_repo(p, depth))
                || (spec.contains('/')
                    && !spec.starts_with('.')
                    && !spec.starts_with('@')
                    && !spec.starts_with("file:")
                    && !spec.starts_with("link:")
                    && !spec.starts_with("workspace:"));
            if redirect {
                out.insert(format!("package.json {section} {name}: {spec:?}"));
            }
        }
    }
    out
}

fn go_mod(content: &str, depth: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_block = false;
    for line in content.lines() {
        let l = line.split("//").next().unwrap_or(line).trim();
        if l == "replace (" {
            in_block = true;
            continue;
        }
        if in_block && l == ")" {
            in_block = false;
            continue;
        }
        let spec = if in_block {
            Some(l)
        } else {
            l.strip_prefix("replace ")
        };
        let Some(spec) = spec.filter(|s| !s.is_empty()) else {
            continue;
        };
        let target = spec.split("=>").nth(1).unwrap_or("").trim();
        let local = target.starts_with("./") || target.starts_with("../");
        if !local || leaves_repo(target.split_whitespace().next().unwrap_or(""), depth) {
            out.insert(format!("go.mod replace `{spec}`"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(path: &str, content: &str) -> usize {
        redirects(path, content).len()
    }

    #[test]
    fn requirements_lines_that_redirect_the_index_or_name_a_url() {
        let r = redirects(
            "requirements.txt",
            "six==1.16.0\n--index-url http://attacker/simple/\n--extra-index-url=http://x\n-f ./wheels\n--trusted-host x\npkg @ https://x/p.whl\ngit+https://x/r.git\n-i http://y\n",
        );
        assert_eq!(r.len(), 7, "{r:?}");
        assert_eq!(
            one(
                "requirements-dev.txt",
                "pytest==8.3.3\n# a comment\n-r base.txt\n"
            ),
            0
        );
    }

    #[test]
    fn pyproject_sources_and_url_dependencies() {
        assert_eq!(
            one(
                "pyproject.toml",
                "[project]\nname = \"x\"\ndependencies = [\"six\"]\n"
            ),
            0
        );
        assert_eq!(
            one("pyproject.toml", "[project]\nname = \"x\"\ndependencies = [\"six @ https://x/six.whl\"]\n[[tool.uv.index]]\nurl = \"http://a\"\n[tool.uv.sources]\nsix = { git = \"https://x\" }\n"),
            3
        );
        assert_eq!(
            one(
                "pyproject.toml",
                "[[tool.poetry.source]]\nname = \"m\"\nurl = \"http://m\"\n"
            ),
            1
        );
    }

    #[test]
    fn cargo_sources_patches_git_and_paths_outside() {
        assert_eq!(one("Cargo.toml", "[package]\nname = \"a\"\n[dependencies]\nserde = \"1\"\nlocal = { path = \"crates/local\" }\n"), 0);
        let r = redirects(
            "Cargo.toml",
            "[dependencies]\nx = { git = \"https://x\" }\ny = { path = \"../../etc\" }\nz = { version = \"1\", registry = \"evil\" }\n[patch.crates-io]\nserde = { path = \"x\" }\n[source.crates-io]\nreplace-with = \"m\"\n",
        );
        assert_eq!(r.len(), 5, "{r:?}");
        // A member one directory deep may go up one.
        assert_eq!(
            one(
                "crates/a/Cargo.toml",
                "[dependencies]\nb = { path = \"../b\" }\n"
            ),
            0
        );
    }

    #[test]
    fn package_json_urls_git_and_paths_outside() {
        assert_eq!(one("package.json", "{\"dependencies\":{\"left-pad\":\"^1.3.0\",\"@s/x\":\"2\",\"w\":\"workspace:*\",\"l\":\"file:./packages/l\"}}"), 0);
        assert_eq!(
            one("package.json", "{\"dependencies\":{\"a\":\"git+https://x/a.git\",\"b\":\"https://x/b.tgz\",\"c\":\"user/repo\",\"d\":\"file:../../x\",\"e\":\"github:u/r\"}}"),
            5
        );
    }

    #[test]
    fn go_replace_directives_outside_the_repository() {
        assert_eq!(one("go.mod", "module m\nreplace example.com/a => ./a\n"), 0);
        assert_eq!(one("go.mod", "module m\nreplace example.com/a => evil.com/a v1.0.0\nreplace (\n  x => ../../outside\n)\n"), 2);
    }

    #[test]
    fn a_manifest_that_cannot_be_read_is_refused_not_passed() {
        for (path, content) in [
            ("Cargo.toml", "[dependencies\nx = { git = \"https://x\" }\n"),
            ("pyproject.toml", "[project\n"),
            (
                "package.json",
                "{\"dependencies\": {\"a\": \"git+https://x\"",
            ),
        ] {
            let r = redirects(path, content);
            assert!(
                r.iter().any(|l| l.contains("cannot be read")),
                "{path}: {r:?}"
            );
        }
    }

    #[test]
    fn installer_configuration_files() {
        for p in [
            ".npmrc",
            "sub/.npmrc",
            ".cargo/config.toml",
            "pip.conf",
            ".yarnrc.yml",
            "uv.toml",
        ] {
            assert!(is_config_file(p), "{p}");
        }
        for p in ["src/npmrc.rs", "Cargo.toml", "config.toml"] {
            assert!(!is_config_file(p), "{p}");
        }
    }
}
