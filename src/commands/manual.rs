//! Shell completions and man pages, generated from the clap definitions in `cli`, so they
//! always describe the binary that prints them.
//!
//! May not: describe anything `cli` does not define; touch the repository or the engine.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{exit, Error, Result};

const NAME: &str = "boxdelegate";

/// `boxdelegate completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, NAME, &mut out);
    write_stdout(&out, "the completion script")?;
    Ok(exit::OK)
}

/// `boxdelegate man [--dir DIR]`: the top-level page on stdout, or every page written to DIR.
pub fn man(dir: Option<&Path>) -> Result<i32> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut out = Vec::new();
            render(cmd, &mut out)?;
            write_stdout(&out, "the man page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let mut written = Vec::new();
            write_pages(cmd, dir, &mut written)?;
            for path in written {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(exit::OK)
}

fn render(cmd: clap::Command, out: &mut Vec<u8>) -> Result<()> {
    clap_mangen::Man::new(cmd)
        .render(out)
        .map_err(|e| Error::io("rendering the man page", e))
}

/// Writes `<name>.1` for `cmd` and, recursively, a page for each visible subcommand, named
/// by clap's display name (`boxdelegate-run`, `boxdelegate-plan-import`).
fn write_pages(
    mut cmd: clap::Command,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> Result<()> {
    // Building sets the subcommands' display names and adds the generated help entries.
    cmd.build();
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let mut page = Vec::new();
    render(cmd.clone(), &mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub.clone(), dir, written)?;
    }
    Ok(())
}

fn write_stdout(data: &[u8], what: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(data).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::io(format!("writing {what}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_names_the_command_and_its_subcommands() {
        let mut out = Vec::new();
        render(Cli::command(), &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.contains(".TH boxdelegate 1"), "{page}");
        for sub in ["run", "verify", "logs", "plan", "completions"] {
            assert!(page.contains(sub), "{sub} in {page}");
        }
    }

    /// Shell words of a documented command line: up to a redirection, pipe, `;` or comment;
    /// quotes group words (enough for the docs' own examples).
    fn words(line: &str) -> Vec<String> {
        let cut = [" >", " |", ";", " #"]
            .iter()
            .filter_map(|m| line.find(m))
            .min()
            .unwrap_or(line.len());
        let mut out = Vec::new();
        let mut word = String::new();
        let mut quote = None;
        for c in line[..cut].chars() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if !word.is_empty() {
                        out.push(std::mem::take(&mut word));
                    }
                }
                _ => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    #[test]
    fn the_documented_command_lines_parse() {
        use clap::Parser;
        let mut checked = 0;
        for (doc, text) in [
            ("README.md", include_str!("../../README.md")),
            ("docs/usage.md", include_str!("../../docs/usage.md")),
            ("docs/codex.md", include_str!("../../docs/codex.md")),
            (
                "docs/integrations.md",
                include_str!("../../docs/integrations.md"),
            ),
        ] {
            // Fences nest here (a skill's ```sh inside a ````markdown example); only lines
            // of shell blocks are commands.
            let mut fences: Vec<(usize, String)> = Vec::new();
            for line in text.lines() {
                let t = line.trim();
                let run = t.chars().take_while(|c| *c == '`').count();
                if run >= 3 {
                    let info = t[run..].trim().to_string();
                    match fences.last() {
                        Some((n, _)) if *n == run && info.is_empty() => {
                            fences.pop();
                        }
                        _ => fences.push((run, info)),
                    }
                    continue;
                }
                let shell = fences
                    .last()
                    .is_some_and(|(_, info)| matches!(info.as_str(), "sh" | "bash" | ""));
                if !shell || !t.starts_with("boxdelegate ") {
                    continue;
                }
                let words = words(t);
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{doc}: `{t}` does not parse: {e}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} command lines found");
    }

    #[test]
    fn every_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        write_pages(Cli::command(), dir.path(), &mut written).unwrap();
        for page in [
            "boxdelegate.1",
            "boxdelegate-run.1",
            "boxdelegate-plan-import.1",
        ] {
            assert!(dir.path().join(page).is_file(), "{page}: {written:?}");
        }
        let run = std::fs::read_to_string(dir.path().join("boxdelegate-run.1")).unwrap();
        assert!(run.contains(".TH boxdelegate-run 1"), "{run}");
    }
}
