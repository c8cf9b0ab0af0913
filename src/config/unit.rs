//! Unit files: `units/<id>.md`, TOML front matter between `+++` lines, then the task in Markdown.
//!
//! Parsing is strict (unknown keys are errors naming the file and line) and every glob is
//! compiled here, so a unit that reaches the engine is known to be well-formed.
//!
//! May not: accept an unknown key or a glob that does not compile; let a unit reach the engine
//! unparsed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{parse_toml, AgentConfig, LimitsConfig};
use crate::error::{Error, Result};

/// Oversized-unit thresholds for `unit check`: small, focused units are cheaper and succeed
/// more often.
pub const MAX_SCOPE_FILES: usize = 6;
pub const MAX_PROMPT_BYTES: usize = 6 * 1024;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnitMeta {
    pub id: String,
    pub title: String,
    /// Globs of the paths the unit may change.
    pub scope: Vec<String>,
    /// Globs of paths that must not change, even inside `scope`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Paths the agent may not modify (e.g. the tests that define done).
    #[serde(default)]
    pub protected: Vec<String>,
    /// Globs of paths that may gain an executable bit.
    #[serde(default)]
    pub executable: Vec<String>,
    /// Files shown to the agent.
    #[serde(default)]
    pub context: Vec<String>,
    /// Definition of done.
    #[serde(default)]
    pub done: Vec<String>,
    /// Expected test names or commands.
    #[serde(default)]
    pub tests: Vec<String>,
    /// Hidden acceptance tests of this unit (globs, added to `[verify] hidden`): in the
    /// repository, never in an agent's snapshot, added only in the verify container.
    #[serde(default)]
    pub hidden: Vec<String>,
    /// Overrides of `[agent]` for this unit.
    #[serde(default)]
    pub agent: Option<AgentOverride>,
    /// Wall-clock limit of the agent for this unit.
    #[serde(default, with = "super::duration_opt")]
    pub timeout: Option<Duration>,
    /// Overrides of `[limits]` for this unit.
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
}

/// The `[agent]` keys a unit may override; unset keys keep the project's value.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentOverride {
    #[serde(default)]
    pub kind: Option<super::AgentKind>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default, with = "super::duration_opt")]
    pub timeout: Option<Duration>,
}

impl AgentOverride {
    pub fn apply(&self, base: &AgentConfig) -> AgentConfig {
        AgentConfig {
            kind: self.kind.unwrap_or(base.kind),
            command: self.command.clone().or_else(|| base.command.clone()),
            image: self.image.clone().or_else(|| base.image.clone()),
            model: self.model.clone().or_else(|| base.model.clone()),
            env: self.env.clone().unwrap_or_else(|| base.env.clone()),
            timeout: self.timeout.or(base.timeout),
            ..base.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Unit {
    pub meta: UnitMeta,
    /// The task, in Markdown: the prompt's body.
    pub body: String,
    /// Repository-relative path of the unit file.
    pub file: PathBuf,
}

/// A compiled set of globs, matched against repository-relative paths; `*` stays within one
/// path component and `**` crosses them.
#[derive(Debug, Clone)]
pub struct Globs {
    pub patterns: Vec<String>,
    set: globset::GlobSet,
}

impl Globs {
    pub fn new(patterns: &[String]) -> std::result::Result<Globs, (String, String)> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| (p.clone(), e.kind().to_string()))?;
            b.add(glob);
        }
        let set = b
            .build()
            .map_err(|e| (patterns.join(", "), e.to_string()))?;
        Ok(Globs {
            patterns: patterns.to_vec(),
            set,
        })
    }

    pub fn is_match(&self, path: &Path) -> bool {
        self.set.is_match(path)
    }

    /// The patterns that match none of `paths`.
    pub fn unmatched<'p>(&self, paths: impl IntoIterator<Item = &'p Path>) -> Vec<&str> {
        let mut hit = vec![false; self.patterns.len()];
        for p in paths {
            for i in self.set.matches(p) {
                hit[i] = true;
            }
        }
        self.patterns
            .iter()
            .zip(hit)
            .filter(|(_, h)| !h)
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// A unit's globs, compiled.
#[derive(Debug, Clone)]
pub struct UnitGlobs {
    pub scope: Globs,
    pub deny: Globs,
    pub protected: Globs,
    pub executable: Globs,
    /// The unit's hidden acceptance tests (its own `hidden` only; the project's are added by
    /// the run).
    pub hidden: Globs,
}

impl Unit {
    pub fn globs(&self) -> Result<UnitGlobs> {
        let compile = |key: &str, patterns: &[String]| {
            Globs::new(patterns).map_err(|(glob, err)| {
                Error::config_hint(
                    &self.file,
                    format!("{key}: glob {glob:?} does not compile: {err}"),
                    "fix the glob (`*` matches within a directory, `**` across directories)",
                )
            })
        };
        Ok(UnitGlobs {
            scope: compile("scope", &self.meta.scope)?,
            deny: compile("deny", &self.meta.deny)?,
            protected: compile("protected", &self.meta.protected)?,
            executable: compile("executable", &self.meta.executable)?,
            hidden: compile("hidden", &self.meta.hidden)?,
        })
    }
}

/// Checks that `id` is a usable unit id: it names a file and a branch.
pub fn validate_id(id: &str) -> std::result::Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with(['.', '-'])
        && !id.contains("..")
        && !id.ends_with(".lock");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a unit id (use letters, digits, '-', '_' and '.', at most 64, not starting with '.' or '-')"
        ))
    }
}

/// Splits `+++` front matter from the body; returns (front matter, body, line of the first
/// front-matter line).
fn split_front_matter(text: &str) -> Option<(&str, &str)> {
    let rest = text
        .strip_prefix("+++\n")
        .or_else(|| text.strip_prefix("+++\r\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "+++" {
            return Some((&rest[..offset], &rest[offset + line.len()..]));
        }
        offset += line.len();
    }
    None
}

impl Unit {
    /// Parses a unit file; `rel` is its repository-relative path, used in messages.
    pub fn parse(text: &str, rel: &Path) -> Result<Unit> {
        let (front, body) = split_front_matter(text).ok_or_else(|| {
            Error::config_hint(
                rel,
                "no front matter: a unit file starts with a line `+++`, TOML keys, and another `+++`",
                "see `boxdelegate unit new ID --scope GLOB` for a template",
            )
        })?;
        // Line numbers in errors count from the file's first line: pad for the opening `+++`.
        let padded = format!("\n{front}");
        let meta: UnitMeta = parse_toml(&padded, rel)?;
        let unit = Unit {
            meta,
            body: body.trim().to_string(),
            file: rel.to_path_buf(),
        };
        unit.validate()?;
        Ok(unit)
    }

    fn validate(&self) -> Result<()> {
        let file = &self.file;
        validate_id(&self.meta.id).map_err(|m| Error::config(file, format!("id: {m}")))?;
        if let Some(image) = self.meta.agent.as_ref().and_then(|a| a.image.as_ref()) {
            return Err(Error::config_hint(
                file,
                format!("agent.image: {image:?} is not supported: the agent always runs in the unit image"),
                "remove the key; tools the agent needs go in the profile's image",
            ));
        }
        if let Some(stem) = file.file_stem().and_then(|s| s.to_str()) {
            if stem != self.meta.id {
                return Err(Error::config_hint(
                    file,
                    format!(
                        "id {:?} does not match the file name {stem:?}",
                        self.meta.id
                    ),
                    format!(
                        "rename the file to {}.md or set id = {stem:?}",
                        self.meta.id
                    ),
                ));
            }
        }
        if self.meta.title.trim().is_empty() {
            return Err(Error::config(file, "title: is empty"));
        }
        if self.meta.scope.is_empty() {
            return Err(Error::config_hint(
                file,
                "scope: is empty, so the unit could change nothing",
                "list the globs of the files the unit may change, e.g. scope = [\"src/auth/**\"]",
            ));
        }
        if self.body.is_empty() {
            return Err(Error::config(
                file,
                "the task (the Markdown after the front matter) is empty",
            ));
        }
        self.globs()?;
        Ok(())
    }

    /// The task as the agent receives it.
    pub fn prompt(&self) -> String {
        format!("# {}\n\n{}\n", self.meta.title, self.body)
    }
}

/// Loads unit `id` from `units_dir`.
pub fn load(root: &Path, units_dir: &str, id: &str) -> Result<Unit> {
    validate_id(id).map_err(|m| Error::Usage {
        message: format!("unit {m}"),
        hint: "`boxdelegate unit ls` lists the units".into(),
    })?;
    let rel = Path::new(units_dir).join(format!("{id}.md"));
    let text = match std::fs::read_to_string(root.join(&rel)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let known = list_ids(root, units_dir);
            return Err(Error::config_hint(
                &rel,
                format!("unknown unit {id:?}: no such file"),
                if known.is_empty() {
                    format!("create it with `boxdelegate unit new {id} --scope GLOB`")
                } else {
                    format!("known units: {}", known.join(", "))
                },
            ));
        }
        Err(e) => return Err(Error::io(format!("reading {}", rel.display()), e)),
    };
    Unit::parse(&text, &rel)
}

/// Ids of the unit files in `units_dir`, sorted.
pub fn list_ids(root: &Path, units_dir: &str) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join(units_dir))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension().is_some_and(|x| x == "md"))
                        .then(|| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The text of a new unit file.
pub fn scaffold(id: &str, scope: &[String]) -> String {
    let scope = scope
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"+++
id = "{id}"
title = "Say in one line what this unit changes"
# Globs of the files this unit may change (`*` within a directory, `**` across).
scope = [{scope}]
# deny = []          # globs that must not change even inside scope
# protected = []     # files the agent may not modify (e.g. the tests that define done)
# hidden = []        # acceptance tests the agent never sees; added only in the verify container
# executable = []    # globs of files that may gain an executable bit
# context = []       # files shown to the agent
# done = []          # definition of done, one item per line
# tests = []         # tests that must pass afterwards
# timeout = "20m"
+++
Describe the change as you would to a colleague: the behaviour, where it goes, and how to know
it is done.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "+++\nid = \"wu-auth\"\ntitle = \"Add login\"\nscope = [\"src/auth/**\"]\n+++\nDo it.\n";

    #[test]
    fn parses_front_matter_and_body() {
        let u = Unit::parse(GOOD, Path::new("units/wu-auth.md")).unwrap();
        assert_eq!(u.meta.id, "wu-auth");
        assert_eq!(u.body, "Do it.");
        assert_eq!(u.prompt(), "# Add login\n\nDo it.\n");
        let g = u.globs().unwrap();
        assert!(g.scope.is_match(Path::new("src/auth/a/b.rs")));
        assert!(!g.scope.is_match(Path::new("src/db.rs")));
    }

    #[test]
    fn unknown_key_reports_the_file_line() {
        let text =
            "+++\nid = \"wu-auth\"\ntitle = \"t\"\nscope = [\"a\"]\nscoep = [\"b\"]\n+++\nx\n";
        let err = Unit::parse(text, Path::new("units/wu-auth.md"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("units/wu-auth.md:5:1"), "{err}");
        assert!(err.contains("scoep"), "{err}");
    }

    #[test]
    fn bad_globs_and_ids_are_rejected() {
        let text = "+++\nid = \"wu-auth\"\ntitle = \"t\"\nscope = [\"src/[\"]\n+++\nx\n";
        let err = Unit::parse(text, Path::new("units/wu-auth.md"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("scope: glob \"src/[\" does not compile"),
            "{err}"
        );
        assert!(validate_id("../etc").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id("wu-1.2_x").is_ok());
    }

    #[test]
    fn missing_front_matter_and_mismatched_id() {
        assert!(Unit::parse("just text", Path::new("units/x.md"))
            .unwrap_err()
            .to_string()
            .contains("no front matter"));
        let err = Unit::parse(GOOD, Path::new("units/other.md"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match the file name"), "{err}");
    }

    #[test]
    fn scaffold_parses() {
        let text = scaffold("wu-x", &["src/x/**".to_string()]);
        let u = Unit::parse(&text, Path::new("units/wu-x.md")).unwrap();
        assert_eq!(u.meta.scope, vec!["src/x/**"]);
    }
}
