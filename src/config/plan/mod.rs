//! A Markdown implementation plan → unit drafts: the sections that carry `Execution target:
//! external-delegate` (the mark delegating planners put on work meant for an outside agent)
//! parsed and rendered as unit files. Pure text in, text out; `commands::plan` (`boxdelegate
//! plan import`) checks and writes them.
//!
//! The plan is read line by line rather than with a Markdown parser: each section's lines
//! become the task verbatim, messages name line numbers, and only three constructs matter —
//! ATX headings, fenced code blocks (whose lines are never headings, fields or marks) and
//! checklist titles (`- [ ] **Unit 1: …**`, how some planners list units) — which a line scan
//! recognizes exactly.
//!
//! May not: write a file or check a unit (both are `commands::plan`'s); take a line inside a fenced
//! block for a heading, a field or a mark.

use std::sync::LazyLock;

use regex::Regex;

use crate::config::unit;

/// Field names a plan section uses for its metadata and parts; a heading with one of these
/// names is a part of the section above it, not a section of its own.
const FIELDS: &[&str] = &[
    "files",
    "file",
    "id",
    "unit id",
    "goal",
    "approach",
    "requirements",
    "dependencies",
    "patterns to follow",
    "test scenarios",
    "tests",
    "test expectation",
    "verification",
    "acceptance criteria",
    "execution note",
    "execution target",
    "technical design",
    "notes",
];

/// Labels in front of the paths of a `Files:` list (`- Modify: `src/a.rs``).
const LABELS: &[&str] = &[
    "create", "new", "add", "modify", "edit", "update", "change", "delete", "remove", "rename",
    "move", "test", "tests", "read",
];

/// The level given to checklist titles: deeper than any heading, so a heading ends them.
const CHECKLIST_LEVEL: u8 = 7;

static HEADING: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))??(?:[ \t]+#+)?[ \t]*$").unwrap());
static CHECKLIST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^ {0,3}[-*+][ \t]+\[[ xX]\][ \t]+\*\*(.+?)\*\*[ \t]*$").unwrap());
static FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:[-*+]\s+)?(?:\*\*|__|\*|_)?([A-Za-z][A-Za-z ]{0,30}?)\s*(?:\*\*|__|\*|_)?\s*:(?:\*\*|__|\*|_)?\s*(.*)$").unwrap()
});
static MARK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^a-z])execution target\s*:\s*external-delegate\s*[.;]?$").unwrap()
});
static NUMBERED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:(?:unit|step|task|part|phase|u)\s*\d+[a-z]?(?:\.\d+)*\s*(?:[:.)\-–—]\s*|\s)|\d+(?:\.\d+)*(?:[.)]|\s*[:\-–—])\s+)")
        .unwrap()
});
static REQUIREMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:[-*+]\s+)?(?:\*\*)?(R\d+)(?:\*\*)?[.:)](?:\*\*)?\s+(.+)$").unwrap()
});
static REQUIREMENT_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bR\d+\b").unwrap());
static LINE_SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?::\d+(?:-\d+)?|#L\d+(?:-L?\d+)?)$").unwrap());

/// What a repository path names, for turning directories into `dir/**`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Dir,
    Missing,
}

/// A unit read from a plan section, before it is written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Draft {
    pub id: String,
    pub title: String,
    /// The section's heading as the plan writes it.
    pub section: String,
    /// 1-based line of the heading.
    pub line: usize,
    pub scope: Vec<String>,
    pub context: Vec<String>,
    pub done: Vec<String>,
    pub tests: Vec<String>,
    /// The section's `Dependencies:` as the plan writes them (for the planner's ordering; not
    /// part of the unit).
    pub dependencies: Option<String>,
    #[serde(skip)]
    pub task: String,
}

/// What a plan holds: the units to write, and the sections beside them that are not marked.
#[derive(Debug)]
pub struct Parsed {
    pub units: Vec<Draft>,
    pub not_delegated: Vec<String>,
}

/// A problem with the plan, located by section and line.
#[derive(Debug, PartialEq)]
pub struct PlanError {
    pub message: String,
    pub hint: String,
}

pub fn plan_error(message: impl Into<String>, hint: impl Into<String>) -> PlanError {
    PlanError {
        message: message.into(),
        hint: hint.into(),
    }
}

#[derive(Debug, Clone)]
struct Section {
    /// Index of the heading (or checklist title) line.
    start: usize,
    /// Index one past the last line.
    end: usize,
    level: u8,
    title: String,
    /// A heading named like a field ("Files", "Test scenarios"): part of its parent.
    field: bool,
}

/// A field of a section: `**Files:** …` with the list below it, or a `#### Files` subsection.
#[derive(Debug)]
struct Field {
    name: String,
    /// Lines it takes, inclusive of its label.
    first: usize,
    last: usize,
    /// The text after the label, then the lines of its block.
    value: Vec<String>,
}

fn field_name(text: &str) -> String {
    text.trim()
        .trim_matches(|c| c == '*' || c == '_' || c == ':' || c == '`')
        .trim()
        .to_ascii_lowercase()
}

fn is_field_name(name: &str) -> bool {
    FIELDS.contains(&name)
}

/// The field a line starts, if its label is a known field name.
fn field_line(line: &str) -> Option<(String, String)> {
    let c = FIELD.captures(line)?;
    let name = field_name(&c[1]);
    is_field_name(&name).then(|| (name, c[2].trim().to_string()))
}

fn is_mark(line: &str) -> bool {
    MARK.is_match(&normalized(line))
}

/// A line without emphasis, code markers, list bullet or quote marker, lower case.
fn normalized(line: &str) -> String {
    let text: String = line
        .chars()
        .filter(|c| !matches!(c, '*' | '_' | '`'))
        .collect();
    let text = text.trim_start();
    let text = text
        .strip_prefix('>')
        .or_else(|| text.strip_prefix("- "))
        .or_else(|| text.strip_prefix("+ "))
        .unwrap_or(text);
    text.trim().to_ascii_lowercase()
}

/// Whether a marked line says nothing else (so it leaves the task).
fn mark_only(line: &str) -> bool {
    let n = normalized(line);
    let Some(m) = MARK.find(&n) else {
        return false;
    };
    let rest = n[..m.start()].trim();
    let rest = rest.strip_suffix(':').unwrap_or(rest).trim();
    rest.is_empty() || rest == "execution note"
}

fn is_list_item(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("- ")
        || t.starts_with("* ")
        || t.starts_with("+ ")
        || t.split_once(['.', ')']).is_some_and(|(n, rest)| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with(' ')
        })
}

fn strip_list_marker(line: &str) -> &str {
    let t = line.trim_start();
    let t = if let Some(r) = t
        .strip_prefix("- ")
        .or_else(|| t.strip_prefix("* "))
        .or_else(|| t.strip_prefix("+ "))
    {
        r
    } else if let Some((n, rest)) = t.split_once(['.', ')']) {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with(' ') {
            rest
        } else {
            t
        }
    } else {
        t
    };
    let t = t.trim_start();
    t.strip_prefix("[ ] ")
        .or_else(|| t.strip_prefix("[x] "))
        .or_else(|| t.strip_prefix("[X] "))
        .unwrap_or(t)
        .trim()
}

/// Which lines are inside fenced code blocks (or the plan's own YAML/TOML front matter).
fn code_lines(lines: &[&str]) -> Vec<bool> {
    let mut code = vec![false; lines.len()];
    let mut i = 0;
    if let Some(first @ ("---" | "+++")) = lines.first().map(|l| l.trim_end()) {
        if let Some(close) = lines.iter().skip(1).position(|l| l.trim_end() == first) {
            for c in code.iter_mut().take(close + 2) {
                *c = true;
            }
            i = close + 2;
        }
    }
    let mut fence: Option<(char, usize)> = None;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let indent = lines[i].len() - t.len();
        let run = |ch: char| t.chars().take_while(|c| *c == ch).count();
        match fence {
            None if indent <= 3 && (run('`') >= 3 || run('~') >= 3) => {
                let ch = if t.starts_with('`') { '`' } else { '~' };
                fence = Some((ch, run(ch)));
                code[i] = true;
            }
            None => {}
            Some((ch, n)) => {
                code[i] = true;
                if indent <= 3 && run(ch) >= n && t.trim_start_matches(ch).trim().is_empty() {
                    fence = None;
                }
            }
        }
        i += 1;
    }
    code
}

fn sections(lines: &[&str], code: &[bool]) -> Vec<Section> {
    let mut starts: Vec<(usize, u8, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if code[i] {
            continue;
        }
        if let Some(c) = HEADING.captures(line) {
            let title = c.get(2).map_or("", |m| m.as_str()).trim().to_string();
            starts.push((i, c[1].len() as u8, title));
        } else if let Some(c) = CHECKLIST.captures(line) {
            starts.push((i, CHECKLIST_LEVEL, c[1].trim().to_string()));
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, (start, level, title))| {
            let end = starts[k + 1..]
                .iter()
                .find(|(_, l, _)| l <= level)
                .map_or(lines.len(), |(i, _, _)| *i);
            Section {
                start: *start,
                end,
                level: *level,
                title: title.clone(),
                field: is_field_name(&field_name(title)),
            }
        })
        .collect()
}

/// The fields of `sec` itself: its field lines and field subsections, not those inside its
/// other subsections (another unit's `Files:` is not this one's).
fn fields(lines: &[&str], code: &[bool], all: &[Section], sec: &Section) -> Vec<Field> {
    let mut out = Vec::new();
    let mut k = sec.start + 1;
    while k < sec.end {
        if code[k] {
            k += 1;
            continue;
        }
        if let Some(sub) = all.iter().find(|s| s.start == k) {
            if sub.field {
                let end = all
                    .iter()
                    .filter(|s| s.start > k && s.level < CHECKLIST_LEVEL)
                    .map(|s| s.start)
                    .min()
                    .unwrap_or(sec.end)
                    .min(sec.end);
                out.push(Field {
                    name: field_name(&sub.title),
                    first: k,
                    last: end - 1,
                    value: lines[k + 1..end]
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !code[k + 1 + j])
                        .map(|(_, l)| l.to_string())
                        .collect(),
                });
                k = end;
            } else {
                k = sub.end;
            }
            continue;
        }
        if let Some((name, rest)) = field_line(lines[k]) {
            let mut value = vec![rest];
            let mut last = k;
            let mut j = k + 1;
            while j < sec.end {
                let line = lines[j];
                if code[j] || all.iter().any(|s| s.start == j) || field_line(line).is_some() {
                    break;
                }
                if line.trim().is_empty() {
                    j += 1;
                    continue;
                }
                if !(line.starts_with([' ', '\t']) || is_list_item(line)) {
                    break;
                }
                value.extend(lines[last + 1..=j].iter().map(|l| l.to_string()));
                last = j;
                j += 1;
            }
            out.push(Field {
                name,
                first: k,
                last,
                value,
            });
            k = last + 1;
            continue;
        }
        k += 1;
    }
    out
}

/// The paths a line of a `Files:` list names: the backticked spans it starts with (skipping
/// parenthesized remarks, commas, "and"), or else its first word; a label such as `Modify:` or
/// `Test:` is skipped. Spans after other words are remarks, not files.
fn path_tokens(line: &str) -> Vec<String> {
    let line = strip_list_marker(line);
    let rest = match FIELD.captures(line) {
        Some(c) if LABELS.contains(&field_name(&c[1]).as_str()) => {
            c.get(2).map_or("", |m| m.as_str())
        }
        _ => line,
    };
    if !rest.contains('`') {
        return rest
            .split_whitespace()
            .next()
            .map(|w| w.trim_end_matches([',', ';', ':']).to_string())
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    let mut s = rest;
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == ';');
        if let Some(r) = s.strip_prefix("and ") {
            s = r;
        } else if s.starts_with('(') {
            let mut depth = 0;
            let mut cut = s.len();
            for (i, c) in s.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            cut = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            s = &s[cut..];
        } else if let Some(r) = s.strip_prefix('`') {
            match r.find('`') {
                Some(close) => {
                    out.push(r[..close].to_string());
                    s = &r[close + 1..];
                }
                None => break,
            }
        } else {
            break;
        }
    }
    out
}

/// A scope glob from a path the plan names; `Ok(None)` for words that are not paths.
fn scope_glob(
    raw: &str,
    kind: &dyn Fn(&str) -> PathKind,
) -> std::result::Result<Option<String>, String> {
    let t = raw.trim().trim_matches(['"', '\'']);
    let t = t.strip_prefix("./").unwrap_or(t);
    let t = LINE_SUFFIX.replace(t, "").to_string();
    if t.is_empty() || t.contains(char::is_whitespace) || t.contains("://") {
        return Ok(None);
    }
    let pathish = t.contains(['/', '.', '*']);
    if !pathish && kind(&t) == PathKind::Missing {
        return Ok(None);
    }
    if t.starts_with(['/', '~', '\\']) || t.split('/').any(|c| c == "..") {
        return Err(format!(
            "{t:?} is not a path inside the repository (paths are relative to its root)"
        ));
    }
    if let Some(dir) = t.strip_suffix('/') {
        return Ok(Some(format!("{}/**", dir.trim_end_matches('/'))));
    }
    if !t.contains('*') && kind(&t) == PathKind::Dir {
        return Ok(Some(format!("{t}/**")));
    }
    Ok(Some(t))
}

/// The items of a list field: its inline text and each bullet (continuation lines joined).
fn items(value: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in value.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if i == 0 || is_list_item(line) {
            out.push(strip_list_marker(line).to_string());
        } else if let Some(last) = out.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        } else {
            out.push(line.trim().to_string());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// All backticked spans in `value`.
fn spans(value: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for line in value {
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            if !inside.trim().is_empty() {
                out.push(inside.trim().to_string());
            }
        }
    }
    out
}

/// The heading without emphasis and without numbering such as "Unit 3:", "U3.", "3.".
fn clean_title(raw: &str) -> String {
    let t = raw.replace("**", "").replace("__", "");
    let t = t.trim();
    let stripped = NUMBERED.replace(t, "");
    let stripped = stripped.trim();
    if stripped.is_empty() {
        t.to_string()
    } else {
        stripped.to_string()
    }
}

/// A unit id from a title: lower case, words joined by `-`, at most 48 characters.
fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let mut s = s.trim_end_matches('-').to_string();
    if s.len() > 48 {
        let cut = s[..48].rfind('-').unwrap_or(48);
        s.truncate(cut);
    }
    if s.is_empty() {
        "unit".into()
    } else {
        s
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// Reads the units out of a plan. `kind` says what a repository-relative path names.
pub fn parse(
    text: &str,
    kind: &dyn Fn(&str) -> PathKind,
) -> std::result::Result<Parsed, PlanError> {
    let lines: Vec<&str> = text.lines().collect();
    let code = code_lines(&lines);
    let all = sections(&lines, &code);
    let has_files = |s: &Section| {
        fields(&lines, &code, &all, s)
            .iter()
            .any(|f| f.name == "files" || f.name == "file")
    };

    // Each mark belongs to the innermost section around it that lists files (so a mark in a
    // "#### Notes" subsection counts for the unit above it), else to the innermost section
    // that is not itself a field.
    let mut chosen: Vec<usize> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if code[i] || !is_mark(line) {
            continue;
        }
        let mut around: Vec<usize> = (0..all.len())
            .filter(|&s| all[s].start < i && i < all[s].end)
            .collect();
        around.sort_by_key(|&s| std::cmp::Reverse(all[s].start));
        let owner = around
            .iter()
            .copied()
            .find(|&s| has_files(&all[s]))
            .or_else(|| around.iter().copied().find(|&s| !all[s].field))
            .ok_or_else(|| {
                plan_error(
                    format!(
                        "line {}: `Execution target: external-delegate` is outside any section",
                        i + 1
                    ),
                    "put the mark inside the section (under the heading) of the unit it marks",
                )
            })?;
        if !chosen.contains(&owner) {
            chosen.push(owner);
        }
    }
    chosen.sort_by_key(|&s| all[s].start);
    for w in chosen.windows(2) {
        let (a, b) = (&all[w[0]], &all[w[1]]);
        if b.start < a.end {
            return Err(plan_error(
                format!(
                    "section {:?} (line {}) and section {:?} (line {}) inside it are both marked external-delegate",
                    a.title,
                    a.start + 1,
                    b.title,
                    b.start + 1
                ),
                "mark only the sections that are one unit of work each",
            ));
        }
    }

    let trace = requirements(&lines, &code);
    let mut units: Vec<Draft> = Vec::new();
    for &s in &chosen {
        units.push(draft(&lines, &code, &all, &all[s], &trace, kind)?);
    }
    assign_ids(&mut units)?;

    // The unmarked sections beside the units (same parent, same level), for the summary.
    let parent = |s: &Section| {
        all.iter()
            .filter(|p| p.start < s.start && s.start < p.end && p.level < s.level)
            .map(|p| p.start)
            .max()
    };
    let not_delegated = all
        .iter()
        .filter(|s| !s.field && !chosen.iter().any(|&c| all[c].start == s.start))
        .filter(|s| {
            chosen
                .iter()
                .any(|&c| all[c].level == s.level && parent(&all[c]) == parent(s))
        })
        .map(|s| clean_title(&s.title))
        .collect();
    Ok(Parsed {
        units,
        not_delegated,
    })
}

/// The plan's requirements trace: `R2` → "R2. `POST /login` answers 200 …".
fn requirements(lines: &[&str], code: &[bool]) -> std::collections::HashMap<String, String> {
    let mut trace = std::collections::HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        if code[i] {
            continue;
        }
        if let Some(c) = REQUIREMENT.captures(line) {
            trace
                .entry(c[1].to_string())
                .or_insert_with(|| format!("{}. {}", &c[1], c[2].trim()));
        }
    }
    trace
}

fn draft(
    lines: &[&str],
    code: &[bool],
    all: &[Section],
    sec: &Section,
    trace: &std::collections::HashMap<String, String>,
    kind: &dyn Fn(&str) -> PathKind,
) -> std::result::Result<Draft, PlanError> {
    let at = format!("section {:?} (line {})", sec.title, sec.start + 1);
    let mut remove = vec![false; lines.len()];
    let mut scope = Vec::new();
    let mut context = Vec::new();
    let mut done = Vec::new();
    let mut tests = Vec::new();
    let mut required = Vec::new();
    let mut dependencies = None;
    let mut id = None;
    for f in fields(lines, code, all, sec) {
        let mut drop = true;
        match f.name.as_str() {
            "files" | "file" => {
                for line in &f.value {
                    for token in path_tokens(line) {
                        match scope_glob(&token, kind) {
                            Ok(Some(glob)) => scope.push(glob),
                            Ok(None) => {}
                            Err(e) => {
                                return Err(plan_error(
                                    format!("{at}: Files: {e}"),
                                    "write the files as repository-relative paths or globs, e.g. `src/auth/login.py` or `src/auth/**`",
                                ))
                            }
                        }
                    }
                }
            }
            "id" | "unit id" => {
                let value = f.value.join(" ");
                let value = value
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches(['`', '"', '\'', '*']);
                unit::validate_id(value).map_err(|m| {
                    plan_error(
                        format!("{at}: ID: {m}"),
                        "use letters, digits, '-', '_' and '.'",
                    )
                })?;
                id = Some(value.to_string());
            }
            "verification" | "acceptance criteria" => done.extend(items(&f.value)),
            // Requirement ids mean nothing to the agent: their text from the plan's trace
            // joins the definition of done; ids the trace lacks stay in the task as written.
            "requirements" => {
                let text = f.value.join(" ");
                let ids: Vec<&str> = REQUIREMENT_ID
                    .find_iter(&text)
                    .map(|m| m.as_str())
                    .collect();
                drop = !ids.is_empty() && ids.iter().all(|id| trace.contains_key(*id));
                if drop {
                    required.extend(ids.iter().map(|id| trace[*id].clone()));
                }
            }
            // The order of the units is the planner's business, not the agent's.
            "dependencies" => {
                let text = items(&f.value).join("; ");
                if !text.is_empty() && !text.eq_ignore_ascii_case("none") {
                    dependencies = Some(text);
                }
            }
            "tests" => {
                let names = spans(&f.value);
                drop = !names.is_empty();
                tests.extend(names);
            }
            "patterns to follow" => {
                drop = false;
                for line in &f.value {
                    for token in path_tokens(line) {
                        if let Ok(Some(p)) = scope_glob(&token, kind) {
                            if kind(&p) == PathKind::File {
                                context.push(p);
                            }
                        }
                    }
                }
            }
            _ => drop = false,
        }
        if drop {
            remove[f.first..=f.last].iter_mut().for_each(|r| *r = true);
        }
    }
    for i in sec.start + 1..sec.end {
        if !code[i] && mark_only(lines[i]) {
            remove[i] = true;
        }
    }
    required.append(&mut done);
    let mut done = required;
    dedup(&mut done);
    dedup(&mut scope);
    dedup(&mut context);
    context.retain(|c| !scope.contains(c));
    if scope.is_empty() {
        return Err(plan_error(
            format!("{at} is marked external-delegate but names no files"),
            "add a `**Files:**` list of the paths the unit may change (backticked, one per line), so boxdelegate can hold the agent to them",
        ));
    }
    let task = task_text(lines, code, all, sec, &remove);
    if task.is_empty() {
        return Err(plan_error(
            format!("{at} has no task: only metadata (files, marks) under its heading"),
            "describe the work under the heading: the goal, the approach, the test scenarios",
        ));
    }
    Ok(Draft {
        id: id.unwrap_or_default(),
        title: clean_title(&sec.title),
        section: sec.title.clone(),
        line: sec.start + 1,
        scope,
        context,
        done,
        tests,
        dependencies,
        task,
    })
}

/// The section's lines without the removed ones, field headings left empty, separators at the
/// end, runs of blank lines, and the indentation they all share.
fn task_text(
    lines: &[&str],
    code: &[bool],
    all: &[Section],
    sec: &Section,
    remove: &[bool],
) -> String {
    let kept: Vec<usize> = (sec.start + 1..sec.end).filter(|&i| !remove[i]).collect();
    // A field heading whose content all went (e.g. "#### Execution note") goes too.
    let mut keep: Vec<usize> = Vec::new();
    for (k, &i) in kept.iter().enumerate() {
        let field_heading = all.iter().find(|s| s.start == i).filter(|s| s.field);
        if let Some(h) = field_heading {
            let next = kept[k + 1..]
                .iter()
                .find(|&&j| !lines[j].trim().is_empty() || code[j]);
            let empty = match next {
                None => true,
                Some(&j) => all.iter().any(|s| s.start == j && s.level <= h.level),
            };
            if empty {
                continue;
            }
        }
        keep.push(i);
    }
    let mut out: Vec<&str> = keep.iter().map(|&i| lines[i]).collect();
    while out
        .last()
        .is_some_and(|l| l.trim().is_empty() || matches!(l.trim(), "---" | "***" | "___"))
    {
        out.pop();
    }
    while out.first().is_some_and(|l| l.trim().is_empty()) {
        out.remove(0);
    }
    let indent = out
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    let mut text = String::new();
    let mut blank = false;
    for l in out {
        if l.trim().is_empty() {
            if !blank {
                text.push('\n');
            }
            blank = true;
            continue;
        }
        blank = false;
        text.push_str(&l[indent.min(l.len())..]);
        text.push('\n');
    }
    text.trim_end().to_string()
}

/// Explicit ids must be unique; the others are slugs of the titles, made unique with `-2`, `-3`.
fn assign_ids(units: &mut [Draft]) -> std::result::Result<(), PlanError> {
    let mut taken: Vec<(String, String)> = Vec::new();
    for u in units.iter().filter(|u| !u.id.is_empty()) {
        if let Some((_, other)) = taken.iter().find(|(id, _)| *id == u.id) {
            return Err(plan_error(
                format!(
                    "two sections have the id {:?}: {other} and {:?} (line {})",
                    u.id, u.section, u.line
                ),
                "give each unit its own ID",
            ));
        }
        taken.push((u.id.clone(), format!("{:?} (line {})", u.section, u.line)));
    }
    for u in units.iter_mut().filter(|u| u.id.is_empty()) {
        let base = slug(&u.title);
        let mut id = base.clone();
        let mut n = 2;
        while taken.iter().any(|(t, _)| *t == id) {
            id = format!("{base}-{n}");
            n += 1;
        }
        taken.push((id.clone(), String::new()));
        u.id = id;
    }
    Ok(())
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list(key: &str, items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    let one_line = format!("{key} = [{}]\n", quoted.join(", "));
    if one_line.len() <= 100 {
        return one_line;
    }
    let mut out = format!("{key} = [\n");
    for q in quoted {
        out.push_str(&format!("    {q},\n"));
    }
    out.push_str("]\n");
    out
}

/// The unit file's text.
pub fn render(d: &Draft, plan_name: &str) -> String {
    let mut s = String::from("+++\n");
    s.push_str(&format!(
        "# Imported from {plan_name}, section {} (line {}).\n",
        toml_str(&d.section),
        d.line
    ));
    s.push_str(&format!("id = {}\n", toml_str(&d.id)));
    s.push_str(&format!("title = {}\n", toml_str(&d.title)));
    s.push_str(&toml_list("scope", &d.scope));
    for (key, list) in [
        ("context", &d.context),
        ("done", &d.done),
        ("tests", &d.tests),
    ] {
        if !list.is_empty() {
            s.push_str(&toml_list(key, list));
        }
    }
    s.push_str("+++\n");
    s.push_str(&d.task);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests;
