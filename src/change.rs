//! The change set: what an agent's container changed under `/work`, as extraction found it —
//! each path's kind (added, modified, deleted), what it holds now (file, symlink, special), why
//! reading stopped early, and how the list of moved paths was learnt. Extraction produces it;
//! scope, verify and land consume it; the journal stores it as `changes.json`.
//!
//! Also the rules for naming a path that came from a box (display, validity, `.git`
//! components), which every consumer applies the same way.
//!
//! May not: touch the engine, git or the file system: plain data and pure functions.

use sha1::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn verb(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// What a path holds after the change (for a deletion: what it held before).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Node {
    File {
        mode: u32,
        size: u64,
        /// The git blob id of the content.
        blob: Option<String>,
    },
    Symlink {
        #[serde(with = "bytes_lossy")]
        target: Vec<u8>,
    },
    /// FIFO, device, socket or hard link: never landed.
    Special { what: String },
}

impl Node {
    pub fn size(&self) -> u64 {
        match self {
            Node::File { size, .. } => *size,
            Node::Symlink { target } => target.len() as u64,
            Node::Special { .. } => 0,
        }
    }

    pub(crate) fn git_mode(&self) -> Option<&'static str> {
        match self {
            Node::File { mode, .. } if mode & 0o100 != 0 => Some("100755"),
            Node::File { .. } => Some("100644"),
            Node::Symlink { .. } => Some("120000"),
            Node::Special { .. } => None,
        }
    }
}

mod bytes_lossy {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::display_path(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        Ok(s.into_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    #[serde(with = "bytes_lossy")]
    pub path: Vec<u8>,
    pub kind: ChangeKind,
    pub node: Node,
    /// The snapshot's mode of this path, if it existed there.
    pub old_mode: Option<u32>,
}

/// Why extraction stopped reading: the change was larger than the limits allow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "exceeded")]
pub enum Truncated {
    Entries { limit: u64 },
    Bytes { limit: u64 },
    PathLength { limit: u64 },
}

impl Truncated {
    pub fn rule(&self) -> &'static str {
        match self {
            Truncated::Entries { .. } => "limit-files",
            Truncated::Bytes { .. } => "limit-bytes",
            Truncated::PathLength { .. } => "path-name",
        }
    }

    pub fn hint(&self, _: &crate::config::Limits) -> String {
        match self {
            Truncated::Entries { .. } => "split the unit, or raise [limits] max_files".into(),
            Truncated::Bytes { .. } => {
                "raise [limits] max_bytes if this much output is expected".into()
            }
            Truncated::PathLength { .. } => "use shorter paths".into(),
        }
    }
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Truncated::Entries { limit } => write!(
                f,
                "the agent wrote more than {limit} files; extraction stopped"
            ),
            Truncated::Bytes { limit } => write!(
                f,
                "the agent wrote more than {limit} bytes; extraction stopped"
            ),
            Truncated::PathLength { limit } => {
                write!(f, "a path is longer than {limit} bytes; extraction stopped")
            }
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ChangeSet {
    pub changes: Vec<Change>,
    pub truncated: Option<Truncated>,
    /// Untracked paths dropped because the snapshot's ignore rules ignore them.
    pub ignored: usize,
    /// Where the list of moved paths came from.
    #[serde(default)]
    pub listing: Listing,
    /// Why the change log was not used, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_unusable: Option<String>,
    /// Reads made for the change (a directory holding several changed paths is read in one),
    /// through the engine's archive API or on the host.
    #[serde(default)]
    pub reads: u64,
    /// Of those, the files read from the upper layer on the host (see `upper`).
    #[serde(default)]
    pub host_reads: u64,
}

/// Where extraction learnt which paths moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// The engine's filesystem diff (`GET /containers/{id}/changes`).
    #[default]
    #[serde(rename = "diff", alias = "engine")]
    Engine,
    /// The watcher's change log in the container (see `watch`).
    #[serde(rename = "log", alias = "watch")]
    Watch,
    /// The container's upper layer, listed on the host (a local engine; see `upper`).
    Upper,
}

/// The git blob id of `data`.
pub fn blob_id(data: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// Shows a path from the box safely: printable UTF-8 as is, anything else escaped.
pub fn display_path(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => s.to_string(),
        _ => path
            .iter()
            .flat_map(|b| std::ascii::escape_default(*b))
            .map(char::from)
            .collect(),
    }
}

/// Why a path name is unacceptable, if it is.
pub fn bad_name(path: &[u8]) -> Option<&'static str> {
    if path.is_empty() || path.len() > 4096 {
        return Some("empty or longer than 4096 bytes");
    }
    let Ok(s) = std::str::from_utf8(path) else {
        return Some("is not valid UTF-8");
    };
    if s.chars().any(|c| c.is_control()) {
        return Some("contains a control character (newline, tab, escape…)");
    }
    if s.starts_with('/') || s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Some("has an empty, `.` or `..` component");
    }
    None
}

/// Whether a component of `path` names a `.git` directory (as Windows and macOS file systems
/// may also read it).
pub fn is_git_path(path: &[u8]) -> bool {
    path.split(|b| *b == b'/').any(|c| {
        let c = String::from_utf8_lossy(c);
        let c = c.trim_end_matches([' ', '.']);
        c.eq_ignore_ascii_case(".git")
    })
}
