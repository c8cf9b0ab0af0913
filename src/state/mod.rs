//! The run state on disk, under `<git common dir>/boxdelegate/`: the directory itself, files and
//! directories private to the user (atomic writes), the run journals (`journal`), the
//! repository lock (`lock`) and each unit's last result.
//!
//! Below the phases and the orchestration: it stores what they produce (the `record` types)
//! and knows nothing of containers. It never writes inside the user's work tree.
//!
//! May not: know of containers; write inside the user's work tree; write a private file other than
//! atomically.

pub mod capped;
pub mod journal;
pub mod lock;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::unit;
use crate::error::{Error, Result};
use crate::git::Repo;
use crate::record::UnitResult;

/// This repository's id for the engine: random, made once and kept in the state directory,
/// so it names this clone wherever it is moved (never its path). Images the repository uses
/// carry a tag with it (`images::uses`).
/// The repository's id when it has one already (never writes).
pub fn existing_repo_id(repo: &Repo) -> Option<String> {
    let id = std::fs::read_to_string(dir(repo).join("repo-id")).ok()?;
    let id = id.trim().to_string();
    (id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

pub fn repo_id(repo: &Repo) -> Result<String> {
    let path = dir(repo).join("repo-id");
    if let Some(id) = existing_repo_id(repo) {
        return Ok(id);
    }
    create_private_dir(&dir(repo))?;
    let mut seed = Vec::new();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    seed.extend_from_slice(repo.common_dir.as_os_str().as_encoded_bytes());
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&seed))[..12].to_string();
    write_private(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// Where run state lives: inside the git directory, so the work tree is never touched.
pub fn dir(repo: &Repo) -> PathBuf {
    repo.common_dir.join("boxdelegate")
}

pub fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Writes `data` to `path` atomically (temp file, fsync, rename), readable by the user only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.write_all(data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e.error))?;
    Ok(())
}

/// Takes group and other permissions off everything under `dir` (git writes its objects
/// world-readable). Symlinks are not followed; boxdelegate writes none there.
pub fn make_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let path = e.path();
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            make_private(&path)?;
        }
        let mode = meta.permissions().mode() & 0o700;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("restricting {}", path.display()), e))?;
    }
    Ok(())
}

pub trait PrivateOpen {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateOpen for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600).custom_flags(libc::O_NOFOLLOW)
    }
}

/// The last recorded result of unit `id`.
pub fn last_result(repo: &Repo, id: &str) -> Result<UnitResult> {
    unit::validate_id(id).map_err(|m| Error::Usage {
        message: format!("unit {m}"),
        hint: "`boxdelegate unit ls` lists the units".into(),
    })?;
    let path = dir(repo).join("last").join(format!("{id}.json"));
    let data = std::fs::read(&path).map_err(|_| Error::Usage {
        message: format!("unit {id} has no recorded result"),
        hint: format!("run it first: boxdelegate run --unit {id}"),
    })?;
    serde_json::from_slice(&data)
        .map_err(|e| Error::Internal(format!("{} is unreadable: {e}", path.display())))
}
