//! Profiles: per-ecosystem knowledge of dependency manifests, how to install dependencies into an
//! image, the default checks and the toolchain image.
//!
//! The profiles in `profiles/*.toml` are embedded in the binary; a repository overrides one, or
//! adds its own, with `.boxdelegate/profiles/NAME.toml`.
//!
//! May not: run an install step or touch the engine (the image builder does); accept an unknown
//! key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{parse_toml, EnvMap};
use crate::error::{Error, Result};

/// The embedded profiles, in the order `init` tries to detect them.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("rust", include_str!("../../profiles/rust.toml")),
    ("node", include_str!("../../profiles/node.toml")),
    ("python", include_str!("../../profiles/python.toml")),
    ("go", include_str!("../../profiles/go.toml")),
    ("generic", include_str!("../../profiles/generic.toml")),
];

/// Where a repository keeps its own profiles.
pub const LOCAL_DIR: &str = ".boxdelegate/profiles";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip_deserializing)]
    pub name: String,
    /// Where the profile came from: `embedded` or the local file's path.
    #[serde(skip_deserializing)]
    pub source: String,
    pub description: String,
    /// The toolchain image the dependency image starts from.
    pub image: String,
    /// `images/<build>/Containerfile` builds `image`, if set.
    #[serde(default)]
    pub build: Option<String>,
    /// Globs matched against files at the repository root; presence selects the profile in `init`.
    #[serde(default)]
    pub detect: Vec<String>,
    /// Globs naming the dependency manifests among the snapshot's paths.
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Shell script run with `sh -eu -c` in `/deps`, which holds only the manifests.
    #[serde(default)]
    pub install: String,
    /// Paths in `/work` that unit images link to `/deps/<path>`.
    #[serde(default)]
    pub links: Vec<String>,
    /// `host:port` of the package registries the install step reaches. A change that edits
    /// the dependency manifests is installed with no other way out than the egress proxy,
    /// which allows these alone (none listed: no network at all).
    #[serde(default)]
    pub registries: Vec<String>,
    /// Environment baked into the dependency image.
    #[serde(default)]
    pub env: EnvMap,
    #[serde(default)]
    pub checks: Checks,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default)]
    pub test: Option<String>,
    #[serde(default)]
    pub lint: Option<String>,
    #[serde(default)]
    pub typecheck: Option<String>,
}

impl Profile {
    /// Loads profile `name`: the repository's own file if there is one, else the embedded one.
    pub fn load(root: &Path, name: &str) -> Result<Profile> {
        Profile::check_name(root, name)?;
        let local = root.join(LOCAL_DIR).join(format!("{name}.toml"));
        let text = match std::fs::read_to_string(&local) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading {}", local.display()), e)),
        };
        Profile::resolve(root, name, text)
    }

    /// The local directory's path of profile `name`, relative to the repository root.
    pub fn local_path(name: &str) -> PathBuf {
        PathBuf::from(LOCAL_DIR).join(format!("{name}.toml"))
    }

    fn check_name(root: &Path, name: &str) -> Result<()> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::config_hint(
                super::CONFIG_FILE,
                format!("project.profile: {name:?} is not a profile name"),
                format!("use one of {}", names(root).join(", ")),
            ));
        }
        Ok(())
    }

    /// Profile `name` from the text of its local file, or the embedded one when there is none.
    pub fn resolve(root: &Path, name: &str, local: Option<String>) -> Result<Profile> {
        Profile::check_name(root, name)?;
        let (text, source, file) = match local {
            Some(text) => {
                let rel = Profile::local_path(name);
                (text, rel.display().to_string(), rel)
            }
            None => {
                let text = EMBEDDED
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, t)| t.to_string())
                    .ok_or_else(|| {
                        Error::config_hint(
                            super::CONFIG_FILE,
                            format!("project.profile: unknown profile {name:?}"),
                            format!(
                                "use one of {}, or define it in {LOCAL_DIR}/{name}.toml",
                                names(root).join(", ")
                            ),
                        )
                    })?;
                (
                    text,
                    "embedded".to_string(),
                    PathBuf::from(format!("profiles/{name}.toml")),
                )
            }
        };
        let mut profile: Profile = parse_toml(&text, &file)?;
        profile.name = name.to_string();
        profile.source = source;
        profile.validate(&file)?;
        Ok(profile)
    }

    fn validate(&self, file: &Path) -> Result<()> {
        for glob in self.manifests.iter().chain(&self.detect) {
            globset::Glob::new(glob)
                .map_err(|e| Error::config(file, format!("glob {glob:?} does not compile: {e}")))?;
        }
        for r in &self.registries {
            super::allow::Allow::parse(r).map_err(|e| {
                Error::config(
                    file,
                    format!(
                        "registries: {e} (each entry is host:port, e.g. \"registry.example:443\")"
                    ),
                )
            })?;
        }
        for link in &self.links {
            if link.is_empty()
                || link.starts_with('/')
                || link.split('/').any(|c| c == ".." || c == ".git")
            {
                return Err(Error::config(
                    file,
                    format!("links: {link:?} must be a plain relative path"),
                ));
            }
        }
        Ok(())
    }

    /// The registries a change's dependency install may reach (validated in `load`).
    pub fn registries(&self) -> Vec<super::allow::Allow> {
        self.registries
            .iter()
            .filter_map(|r| super::allow::Allow::parse(r).ok())
            .collect()
    }

    /// A matcher for the manifest globs.
    pub fn manifest_matcher(&self) -> globset::GlobSet {
        let mut b = globset::GlobSetBuilder::new();
        for g in &self.manifests {
            // Validated in `load`.
            if let Ok(glob) = globset::GlobBuilder::new(g).literal_separator(true).build() {
                b.add(glob);
            }
        }
        b.build().unwrap_or_else(|_| globset::GlobSet::empty())
    }
}

/// Names of every available profile: embedded plus the repository's own.
pub fn names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = EMBEDDED.iter().map(|(n, _)| n.to_string()).collect();
    if let Ok(dir) = std::fs::read_dir(root.join(LOCAL_DIR)) {
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    if !names.iter().any(|n| n == stem) {
                        names.push(stem.to_string());
                    }
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_profile_parses() {
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in EMBEDDED {
            let p = Profile::load(dir.path(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, *name);
            assert!(!p.image.is_empty());
        }
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let err = Profile::load(dir.path(), "cobol").unwrap_err();
        let hint = err.hint().unwrap().to_string();
        assert!(
            err.to_string().contains("unknown profile \"cobol\""),
            "{err}"
        );
        assert!(hint.contains("rust") && hint.contains("python"), "{hint}");
    }

    #[test]
    fn local_profile_overrides_embedded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(LOCAL_DIR)).unwrap();
        std::fs::write(
            dir.path().join(LOCAL_DIR).join("python.toml"),
            "description = \"mine\"\nimage = \"my/python\"\n",
        )
        .unwrap();
        let p = Profile::load(dir.path(), "python").unwrap();
        assert_eq!(p.image, "my/python");
        assert_eq!(p.source, ".boxdelegate/profiles/python.toml");
    }

    #[test]
    fn registries_are_host_port_pairs_or_the_profile_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in EMBEDDED {
            let p = Profile::load(dir.path(), name).unwrap();
            assert_eq!(p.registries().len(), p.registries.len(), "{name}");
        }
        std::fs::create_dir_all(dir.path().join(LOCAL_DIR)).unwrap();
        for bad in ["registry.example", "http://registry.example:443", "a b:443"] {
            std::fs::write(
                dir.path().join(LOCAL_DIR).join("mine.toml"),
                format!("description = \"d\"\nimage = \"i\"\nregistries = [{bad:?}]\n"),
            )
            .unwrap();
            let err = Profile::load(dir.path(), "mine").unwrap_err().to_string();
            assert!(
                err.contains("registries:") && err.contains("host:port"),
                "{bad}: {err}"
            );
        }
    }
}
