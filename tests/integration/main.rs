//! Integration tests: the real binary against real git repositories and the real engine.

mod bad_inputs;
mod common;
mod images;
mod init;
mod run;
mod snapshot;
mod verify;
