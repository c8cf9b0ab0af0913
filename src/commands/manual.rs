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

/// A page: clap's sections (name, synopsis, description, options, subcommands), then what a
/// man page owes its reader beyond the flags: exit status, environment, files and examples on
/// the top page; a pointer to them on a subcommand's.
fn render(cmd: clap::Command, out: &mut Vec<u8>) -> Result<()> {
    let top = cmd.get_name() == NAME && cmd.get_display_name().is_none_or(|n| n == NAME);
    // The sections clap_mangen's own `render` writes, under the same conditions.
    let options = cmd.get_arguments().any(|a| !a.is_hide_set());
    let subcommands = cmd.has_subcommands();
    let extra = cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some();
    let version = cmd.get_version().is_some() || cmd.get_long_version().is_some();
    let man = clap_mangen::Man::new(cmd);
    let io = |e| Error::io("rendering the man page", e);
    man.render_title(out).map_err(io)?;
    man.render_name_section(out).map_err(io)?;
    man.render_synopsis_section(out).map_err(io)?;
    man.render_description_section(out).map_err(io)?;
    if options {
        man.render_options_section(out).map_err(io)?;
    }
    if subcommands {
        man.render_subcommands_section(out).map_err(io)?;
    }
    if extra {
        man.render_extra_section(out).map_err(io)?;
    }
    if top {
        out.extend_from_slice(top_sections().as_bytes());
    } else {
        out.extend_from_slice(
            b".SH \"EXIT STATUS\"\nAs listed in \\fBboxdelegate\\fR(1), which also has the environment, the files and examples.\n.SH \"SEE ALSO\"\n\\fBboxdelegate\\fR(1)\n",
        );
    }
    if version {
        man.render_version_section(out).map_err(io)?;
    }
    Ok(())
}

/// Text for roff: backslashes and a leading dot or quote made literal.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('`', "");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// EXIT STATUS (the README's table, which a test holds to the codes), ENVIRONMENT, FILES and
/// EXAMPLES of the top page.
fn top_sections() -> String {
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    let readme = include_str!("../../README.md");
    let table = readme.split("## Exit codes").nth(1).unwrap_or_default();
    for row in table
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let mut cells = row.trim_matches('|').splitn(2, '|');
        let (code, meaning) = (
            cells.next().unwrap_or("").trim(),
            cells.next().unwrap_or("").trim(),
        );
        s.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff(code),
            roff(meaning.trim_end_matches('|').trim())
        ));
    }
    s.push_str(".SH ENVIRONMENT\n");
    for (name, what) in ENVIRONMENT {
        s.push_str(&format!(".TP\n\\fB{name}\\fR\n{}\n", roff(what)));
    }
    s.push_str(".SH FILES\n");
    for (name, what) in FILES {
        s.push_str(&format!(".TP\n\\fI{}\\fR\n{}\n", roff(name), roff(what)));
    }
    s.push_str(".SH EXAMPLES\n");
    for (what, command) in EXAMPLES {
        s.push_str(&format!(
            ".TP\n{}\n.nf\n{}\n.fi\n",
            roff(what),
            roff(command)
        ));
    }
    s
}

const ENVIRONMENT: &[(&str, &str)] = &[
    ("DOCKER_HOST", "The engine to use (unix:// or tcp://); default the local Docker socket, else Podman's."),
    ("DOCKER_TLS_VERIFY, DOCKER_CERT_PATH", "TLS to a tcp:// engine: verify it, with ca.pem, cert.pem and key.pem from that directory."),
    ("NO_COLOR", "Set and not empty: no colours (as --color never)."),
    ("RUST_LOG", "Filters the diagnostic logs on stderr (-vv shows debug); secrets are redacted whatever it asks."),
    ("BOXDELEGATE_BASE_IMAGE", "The base image instead of boxdelegate/base:bookworm."),
    ("BOXDELEGATE_IMAGE_BUILD", "commit: make unit images by committing a container instead of loading a layer."),
    ("BOXDELEGATE_EXTRACT", "log: list an agent's change from a change log kept in its container, never its upper layer."),
    ("BOXDELEGATE_CA_BUNDLE, SSL_CERT_FILE", "A CA bundle dependency installs trust (a site's TLS-inspecting proxy)."),
    ("the variables named by [agent] env", "Read at start and passed to the agent container only (never to verification); behind the model gateway, the key to the gateway only."),
];

const FILES: &[(&str, &str)] = &[
    ("boxdelegate.toml", "The project's configuration (every key: docs/configuration.md)."),
    ("units/ID.md", "A unit: TOML front matter between +++ lines, then the task."),
    (".boxdelegate/profiles/NAME.toml", "A profile of the repository's own, or one overriding a shipped profile."),
    (".git/boxdelegate/", "State: runs (journal, prompts, patches, logs), last results, verification records, the repository's id; never part of the work tree."),
];

const EXAMPLES: &[(&str, &str)] = &[
    ("Set a repository up and delegate a unit:", "boxdelegate init\nboxdelegate unit new wu-auth --scope 'src/auth/**'\nboxdelegate run --unit wu-auth"),
    ("Every unit, four at a time, for a program to read:", "boxdelegate run --all --jobs 4 --json"),
    ("Continue a run that was interrupted:", "boxdelegate resume"),
    ("Re-check a landed commit as CI would:", "boxdelegate verify --commit boxdelegate/wu-auth"),
    ("Remove finished runs but the newest five:", "boxdelegate clean --keep 5"),
];

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
    fn every_flag_and_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, NAME, &mut missing);
        assert!(missing.is_empty(), "undescribed in --help: {missing:?}");
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
        assert!(run.contains(".SH \"EXIT STATUS\""), "{run}");
        let top = std::fs::read_to_string(dir.path().join("boxdelegate.1")).unwrap();
        for section in [
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            ".SH FILES",
            ".SH EXAMPLES",
        ] {
            assert!(top.contains(section), "{section}: {top}");
        }
        // Every exit code, from the README's table.
        for code in exit::ALL {
            assert!(
                top.contains(&format!(".TP\n\\fB{code}\\fR\n")),
                "exit {code}: {top}"
            );
        }
        assert!(top.contains("\\fBDOCKER_HOST\\fR"), "{top}");
    }
}
