//! What a person sees while work goes on: phases and live output, through one [`Reporter`]
//! trait: a terminal implementation (indicatif bars when stderr is a terminal, plain lines
//! otherwise), a silent one (`-q`) and JSON Lines events on stdout (`--json`).
//!
//! May not: decide anything about a unit: it owns presentation only.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub type LineSink = Box<dyn Fn(&str) + Send + Sync + 'static>;

pub trait Reporter: Send + Sync {
    /// A run-wide message (a phase of the whole command).
    fn phase(&self, message: &str);
    /// A sink for a container's live output lines.
    fn line_sink(&self) -> LineSink;
    /// The units the run works on, once, before any of them starts.
    fn units(&self, _ids: &[String]) {}
    /// Unit `unit` enters a phase (`agent (codex) running`, `verifying (test)`, …).
    fn unit(&self, unit: &str, phase: &str) {
        self.phase(&format!("{unit}: {phase}"));
    }
    /// A sink for unit `unit`'s live agent activity (last command, files, tokens).
    fn activity_sink(&self, _unit: &str) -> LineSink {
        Box::new(|_| {})
    }
    /// Unit `unit` is done with `status`.
    fn unit_done(&self, unit: &str, status: &str, message: &str) {
        self.phase(&format!("{unit}: {status}: {message}"));
    }
    /// The work is over: clear any live display.
    fn finish(&self) {}
}

/// Progress on stderr for a person: with a terminal, one line per unit (id, phase, live agent
/// activity, elapsed time) under an overall bar, and messages printed above them; without
/// one, plain lines.
pub struct Terminal {
    live: Option<Live>,
    verbose: bool,
}

struct Live {
    multi: MultiProgress,
    /// The spinner for run-wide phases until units start, then the overall bar.
    overall: ProgressBar,
    units: Mutex<HashMap<String, ProgressBar>>,
}

/// The live display of this process, so an interrupt can take it off the screen before it
/// says what it stopped (the display's owner is dropped mid-draw then, never finished).
static LIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Clears the live display, if any, and keeps it from drawing again.
pub fn clear_live() {
    if let Some(multi) = LIVE.lock().expect("poisoned").take() {
        let _ = multi.clear();
        multi.set_draw_target(ProgressDrawTarget::hidden());
    }
}

impl Terminal {
    pub fn new(verbose: bool) -> Terminal {
        let live = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            *LIVE.lock().expect("poisoned") = Some(multi.clone());
            let overall = multi.add(ProgressBar::new_spinner());
            overall.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            overall.enable_steady_tick(Duration::from_millis(120));
            Live {
                multi,
                overall,
                units: Mutex::default(),
            }
        });
        Terminal { live, verbose }
    }

    fn unit_bar(live: &Live, unit: &str) -> ProgressBar {
        let mut units = live.units.lock().expect("poisoned");
        units
            .entry(unit.to_string())
            .or_insert_with(|| {
                let bar = live.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {spinner} {prefix:<20.bold} [{elapsed:>4}] {wide_msg}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(unit.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .clone()
    }
}

/// `text` cut at a word boundary to fit a unit's line on a terminal of stderr's width (the
/// line's id, spinner and time take 33 columns), with `…` when cut: never mid-word.
fn fit_words(text: &str) -> String {
    let width = console::Term::stderr()
        .size_checked()
        .map(|(_, c)| c as usize)
        .unwrap_or(80);
    let max = width.saturating_sub(34).max(20);
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max - 1).collect();
    let cut = match cut.rfind(' ') {
        Some(i) if i > max / 2 => cut[..i].to_string(),
        _ => cut,
    };
    format!("{}…", cut.trim_end())
}

/// `line` cut to `max` characters.
fn shorten(line: &str, max: usize) -> String {
    let mut short: String = line.chars().take(max).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

impl Reporter for Terminal {
    fn phase(&self, message: &str) {
        match &self.live {
            Some(live) => {
                let message = super::visible(message);
                let _ = live.multi.println(format!("» {message}"));
                if live.units.lock().expect("poisoned").is_empty() {
                    live.overall.set_message(message.to_string());
                }
            }
            None => eprintln!("» {}", super::visible(message)),
        }
    }

    fn line_sink(&self) -> LineSink {
        let verbose = self.verbose;
        match &self.live {
            Some(live) => {
                let multi = live.multi.clone();
                let overall = live.overall.clone();
                let quiet_units = live.units.lock().expect("poisoned").is_empty();
                Box::new(move |line: &str| {
                    let line = &*super::visible(line);
                    if verbose {
                        let _ = multi.println(format!("  | {line}"));
                    }
                    if quiet_units {
                        overall.set_message(shorten(line, 100));
                    }
                })
            }
            None => Box::new(move |line: &str| {
                if verbose {
                    eprintln!("  | {}", super::visible(line));
                }
            }),
        }
    }

    fn units(&self, ids: &[String]) {
        if let Some(live) = &self.live {
            live.overall.set_length(ids.len() as u64);
            live.overall.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} unit(s) done [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            live.overall.set_message("");
            for id in ids {
                Self::unit_bar(live, id).set_message("waiting");
            }
        }
    }

    fn unit(&self, unit: &str, phase: &str) {
        match &self.live {
            Some(live) => Self::unit_bar(live, unit).set_message(fit_words(&super::visible(phase))),
            None => eprintln!("» {unit}: {}", super::visible(phase)),
        }
    }

    fn activity_sink(&self, unit: &str) -> LineSink {
        match &self.live {
            Some(live) => {
                let bar = Self::unit_bar(live, unit);
                Box::new(move |line: &str| {
                    bar.set_message(fit_words(&format!(
                        "agent: {}",
                        shorten(&super::visible(line), 200)
                    )))
                })
            }
            None if self.verbose => {
                let unit = unit.to_string();
                Box::new(move |line: &str| eprintln!("  {unit}: {}", super::visible(line)))
            }
            None => Box::new(|_| {}),
        }
    }

    fn unit_done(&self, unit: &str, status: &str, message: &str) {
        match &self.live {
            Some(live) => {
                let bar = Self::unit_bar(live, unit);
                bar.disable_steady_tick();
                bar.set_style(
                    ProgressStyle::with_template("  · {prefix:<20.bold} [{elapsed:>4}] {wide_msg}")
                        .expect("valid template"),
                );
                let text = fit_words(&format!("{status}: {}", super::visible(message)));
                let text = text.replacen(status, &super::status_styled(status, true), 1);
                bar.finish_with_message(text);
                live.overall.inc(1);
            }
            None => eprintln!("» {unit}: {status}: {}", super::visible(message)),
        }
    }

    fn finish(&self) {
        if let Some(live) = &self.live {
            live.overall.finish_and_clear();
            for bar in live.units.lock().expect("poisoned").values() {
                bar.finish_and_clear();
            }
            let _ = live.multi.clear();
        }
    }
}

/// Reports nothing (`-q`).
pub struct Silent;

impl Reporter for Silent {
    fn phase(&self, _: &str) {}
    fn line_sink(&self) -> LineSink {
        Box::new(|_| {})
    }
    fn unit(&self, _: &str, _: &str) {}
    fn unit_done(&self, _: &str, _: &str, _: &str) {}
}

/// Events as JSON Lines on stdout (`--json`), each `{"type": "event", "event": …}`; the
/// command's final object follows them as the last line (see docs/json.md).
pub struct JsonLines {
    out: Arc<Mutex<std::io::Stdout>>,
}

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines {
            out: Arc::new(Mutex::new(std::io::stdout())),
        }
    }
}

fn emit(out: &Mutex<std::io::Stdout>, mut event: serde_json::Value) {
    use std::io::Write;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    event["type"] = "event".into();
    event["time"] = ((time * 1000.0).round() / 1000.0).into();
    let mut out = out.lock().expect("poisoned");
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

impl Reporter for JsonLines {
    fn phase(&self, message: &str) {
        emit(
            &self.out,
            serde_json::json!({"event": "phase", "message": message}),
        );
    }
    fn line_sink(&self) -> LineSink {
        Box::new(|_| {})
    }
    fn units(&self, ids: &[String]) {
        emit(
            &self.out,
            serde_json::json!({"event": "units", "units": ids}),
        );
    }
    fn unit(&self, unit: &str, phase: &str) {
        emit(
            &self.out,
            serde_json::json!({"event": "unit-phase", "unit": unit, "message": phase}),
        );
    }
    fn activity_sink(&self, unit: &str) -> LineSink {
        let out = self.out.clone();
        let unit = unit.to_string();
        Box::new(move |line: &str| {
            emit(
                &out,
                serde_json::json!({"event": "agent-activity", "unit": unit, "message": line}),
            )
        })
    }
    fn unit_done(&self, unit: &str, status: &str, message: &str) {
        emit(
            &self.out,
            serde_json::json!({"event": "unit-done", "unit": unit, "status": status, "message": message}),
        );
    }
}
