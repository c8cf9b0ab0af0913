//! boxdelegate: parse the command line, run the command, map errors to documented exit codes.
//!
//! May not: decide anything of a command's own (that is `commands`'); exit with a code the README
//! does not document.

mod agent;
mod change;
mod cli;
mod commands;
mod config;
mod engine;
mod error;
mod extract;
mod failpoint;
mod git;
mod images;
mod land;
mod output;
mod project;
mod proxy;
mod record;
mod run;
mod scope;
mod snapshot;
mod sources;
mod state;
mod timings;
mod verify;

use clap::Parser;

use crate::error::exit;

fn main() {
    // A closed pipe (`boxdelegate status | head -1`) ends the process quietly, as it does any
    // command-line tool, rather than as a panic of the first print that finds it closed.
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    // With --json, the last line on stdout is one result object, an error's too.
    let json = std::env::args_os().any(|a| a == "--json");
    init_tracing(&cli.global);
    output::set_color(cli.global.color);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            result = commands::run(cli) => match result {
                Ok(code) => {
                    if let Some(engine) = engine::current() {
                        engine.settle().await;
                    }
                    code
                }
                Err(err) => {
                    if let Some(engine) = engine::current() {
                        engine.cleanup().await;
                        engine.settle().await;
                    }
                    report_error(&err);
                    if json {
                        print_error_json(err.exit_code(), &err.to_string(), err.hint());
                    }
                    err.exit_code()
                }
            },
            _ = tokio::signal::ctrl_c() => {
                // The live display first off the screen, so what follows reads.
                output::clear_live();
                eprintln!("interrupted (Ctrl-C): removing the containers this command started");
                if let Some(engine) = engine::current() {
                    engine.cleanup().await;
                }
                let removed = "the containers this command started were removed";
                let stopped = run::interrupted().unwrap_or_default();
                eprintln!("interrupted: {removed}");
                for line in &stopped {
                    eprintln!("{line}");
                }
                if json {
                    let hint = match stopped.last() {
                        Some(l) => l.clone(),
                        None => "run the same command again: an interrupted run resumes".into(),
                    };
                    let error = match stopped.first() {
                        Some(l) => format!("interrupted (Ctrl-C); {removed}; {l}"),
                        None => format!("interrupted (Ctrl-C); {removed}"),
                    };
                    print_error_json(exit::INTERRUPTED, &error, Some(&hint));
                }
                exit::INTERRUPTED
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// The final object of a `--json` command that failed (docs/json.md).
fn print_error_json(exit_code: i32, error: &str, hint: Option<&str>) {
    let v = serde_json::json!({
        "type": "error",
        "exit_code": exit_code,
        "error": output::redact_secrets(error),
        "hint": hint,
    });
    println!("{v}");
}

fn report_error(err: &error::Error) {
    // An error may quote the box (an install's last lines, a path): made visible.
    eprintln!("error: {}", output::visible(&err.to_string()));
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !err.to_string().contains(&text) {
            eprintln!("  caused by: {}", output::visible(&text));
        }
        source = s.source();
    }
    if let Some(hint) = err.hint() {
        eprintln!("hint: {hint}");
    }
}

fn init_tracing(global: &cli::GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match global.verbose {
        0 | 1 => "warn",
        _ => "debug",
    };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // The engine client's and the HTTP stack's debug output dumps request bodies and inspect
    // answers (a container's environment, credentials among it): never below info, whatever
    // RUST_LOG asks. Every line is also redacted of the secrets this process was given.
    for quiet in [
        "bollard=info",
        "hyper=info",
        "hyper_util=info",
        "h2=info",
        "rustls=info",
    ] {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| output::DiagnosticWriter);
    match global.log_format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => builder.without_time().init(),
    }
}
