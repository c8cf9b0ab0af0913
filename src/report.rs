//! What a person sees while work goes on: phases and live output, through one [`Reporter`]
//! trait with a terminal implementation (indicatif spinner when stderr is a terminal, plain
//! lines otherwise) and a silent one (`-q`, `--json`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The serialized (kebab-case) name of a unit enum, e.g. a status, for people.
pub fn label<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub type LineSink = Box<dyn Fn(&str) + Send + Sync + 'static>;

pub trait Reporter: Send + Sync {
    /// A new phase starts.
    fn phase(&self, message: &str);
    /// A sink for a container's live output lines.
    fn line_sink(&self) -> LineSink;
    /// The work is over: clear any live display.
    fn finish(&self) {}
}

/// Progress on stderr for a person.
pub struct Terminal {
    bar: Option<Arc<ProgressBar>>,
    verbose: bool,
}

impl Terminal {
    pub fn new(verbose: bool) -> Terminal {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Arc::new(bar)
        });
        Terminal { bar, verbose }
    }
}

impl Reporter for Terminal {
    fn phase(&self, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(format!("» {message}"));
                bar.set_message(message.to_string());
            }
            None => eprintln!("» {message}"),
        }
    }

    fn line_sink(&self) -> LineSink {
        let verbose = self.verbose;
        match &self.bar {
            Some(bar) => {
                let bar = bar.clone();
                Box::new(move |line: &str| {
                    if verbose {
                        bar.println(format!("  | {line}"));
                    }
                    let mut short: String = line.chars().take(100).collect();
                    if short.len() < line.len() {
                        short.push('…');
                    }
                    bar.set_message(short);
                })
            }
            None => Box::new(move |line: &str| {
                if verbose {
                    eprintln!("  | {line}");
                }
            }),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Reports nothing (`-q`, `--json`).
pub struct Silent;

impl Reporter for Silent {
    fn phase(&self, _: &str) {}
    fn line_sink(&self) -> LineSink {
        Box::new(|_| {})
    }
}
