//! A project: the repository with its validated configuration, profile and effective limits,
//! resolved once from the command line's global options before anything touches the engine.
//!
//! May not: start a container or write anything: it reads files and validates.

use crate::cli::GlobalArgs;
use crate::config::profile::Profile;
use crate::config::{Config, Limits};
use crate::engine::Resources;
use crate::error::{Error, Result};
use crate::git::Repo;

/// Where the project's limits meet the engine seam: the engine takes plain values.
impl From<&Limits> for Resources {
    fn from(l: &Limits) -> Resources {
        Resources {
            memory: l.memory,
            cpus: l.cpus,
            pids: l.pids,
        }
    }
}

/// A repository with its validated configuration and profile.
pub struct Project {
    pub repo: Repo,
    pub config: Config,
    pub profile: Profile,
    pub limits: Limits,
}

pub fn open_repo(global: &GlobalArgs) -> Result<Repo> {
    let dir = match &global.repo {
        Some(d) => d.clone(),
        None => {
            std::env::current_dir().map_err(|e| Error::io("reading the current directory", e))?
        }
    };
    if !dir.is_dir() {
        return Err(Error::Repo {
            path: dir,
            message: "no such directory".into(),
            hint: Some("pass an existing repository directory to --repo".into()),
        });
    }
    Repo::discover(&dir)
}

impl Project {
    pub fn open(global: &GlobalArgs) -> Result<Project> {
        let repo = open_repo(global)?;
        let config = Config::load(&repo.root)?;
        let profile = Profile::load(&repo.root, &config.project.profile)?;
        let limits = config.limits.resolve();
        crate::engine::set_runtime(
            config.project.runtime.clone(),
            crate::config::CONFIG_FILE.into(),
        );
        let for_id = repo.clone();
        crate::engine::set_repository(Box::new(move || crate::state::existing_repo_id(&for_id)));
        Ok(Project {
            repo,
            config,
            profile,
            limits,
        })
    }

    pub fn base_image(&self) -> Option<&str> {
        self.config.project.base_image.as_deref()
    }
}
