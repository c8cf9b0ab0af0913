//! Integration tests: the real binary against real git repositories and the real engine.

mod attack;
mod bad_inputs;
mod bench_cli;
mod cli_surface;
mod codex;
mod common;
mod deps_change;
mod engines;
mod fail_closed;
mod hostile_repo;
mod images;
mod init;
mod model_server;
mod progress;
mod readme;
mod real_projects;
mod repo_shapes;
mod resume;
mod run;
mod snapshot;
mod terminal;
mod trust_boundary;
mod verify;
mod watch;
