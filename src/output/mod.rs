//! Output for people and programs: progress reporters (terminal, silent, JSON Lines), the final
//! JSON object of a command, and the names of enums as people read them.
//!
//! May not: act on a unit, the engine or the repository; import anything but the error type (ground
//! layer); print anything but JSON on stdout with `--json`.

mod progress;

pub use progress::{JsonLines, Reporter, Silent, Terminal};

use crate::error::{Error, Result};

/// The serialized (kebab-case) name of a unit enum, e.g. a status, for people.
pub fn label<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Prints a command's final JSON object as one line (the last line of `--json` output).
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| Error::Internal(e.to_string()))?;
    println!("{text}");
    Ok(())
}
