use std::path::Path;

use super::*;
use crate::config::unit::Unit;

fn no_paths(_: &str) -> PathKind {
    PathKind::Missing
}

fn parse_ok(text: &str) -> Parsed {
    parse(text, &no_paths).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn marks_are_recognized_in_their_usual_spellings() {
    for line in [
        "Execution target: external-delegate",
        "**Execution target:** external-delegate",
        "**Execution note:** Execution target: external-delegate",
        "- *Execution target*: `external-delegate`",
        "  execution TARGET :  External-Delegate.  ",
        "> Execution target: external-delegate",
    ] {
        assert!(is_mark(line), "{line}");
        assert!(mark_only(line), "{line}");
    }
    for line in [
        "**Execution target: external-delegate** for Units 1-9 (pure code generation)",
        "Execution target: inline",
        "The execution target: external-delegate mark is described below and more",
    ] {
        assert!(!is_mark(line), "{line}");
    }
    assert!(!mark_only(
        "**Execution note:** test-first. Execution target: external-delegate"
    ));
}

#[test]
fn titles_lose_their_numbering_and_ids_are_slugs() {
    for (raw, clean) in [
        ("Unit 3: Add the parser", "Add the parser"),
        (
            "U1. CLI worker with captured result",
            "CLI worker with captured result",
        ),
        ("3. Wire the route", "Wire the route"),
        ("Step 2 - Add `--json`", "Add `--json`"),
        (
            "**Unit 1: Extend type definitions**",
            "Extend type definitions",
        ),
        ("Update the README", "Update the README"),
        ("3D preview", "3D preview"),
        ("Unit tests for dates", "Unit tests for dates"),
    ] {
        assert_eq!(clean_title(raw), clean, "{raw}");
    }
    assert_eq!(
        slug("Add `--json` to `status` (CLI)"),
        "add-json-to-status-cli"
    );
    assert_eq!(slug("!!!"), "unit");
    let long = slug(&"word ".repeat(30));
    assert!(long.len() <= 48 && !long.ends_with('-'), "{long}");
    assert!(unit::validate_id(&long).is_ok());
}

#[test]
fn file_lists_give_paths_and_skip_remarks() {
    let kind = |p: &str| match p {
        "src/auth" | "docs" => PathKind::Dir,
        "Makefile" => PathKind::File,
        _ => PathKind::Missing,
    };
    let globs = |line: &str| -> Vec<String> {
        path_tokens(line)
            .iter()
            .filter_map(|t| scope_glob(t, &kind).unwrap())
            .collect()
    };
    assert_eq!(
        globs("- Modify: `src/types/index.ts`"),
        ["src/types/index.ts"]
    );
    assert_eq!(
        globs(
            "`src/tandem/cli_worker.py` (new); `src/cli/local_cmd.py` (factor `_build`, `x.y` out)"
        ),
        ["src/tandem/cli_worker.py", "src/cli/local_cmd.py"]
    );
    assert_eq!(
        globs("- Modify: `src/a.ts` — add the `Project.detail` field"),
        ["src/a.ts"]
    );
    assert_eq!(
        globs("- `src/auth` and `docs/`"),
        ["src/auth/**", "docs/**"]
    );
    assert_eq!(globs("- Create: src/new.rs (new file)"), ["src/new.rs"]);
    assert_eq!(globs("- Makefile"), ["Makefile"]);
    assert_eq!(globs("- `./src/lib.rs:120-140`"), ["src/lib.rs"]);
    assert_eq!(
        globs("- Test: `tests/**/*_spec.rb`"),
        ["tests/**/*_spec.rb"]
    );
    assert!(globs("- none, this is prose").is_empty());
    assert!(scope_glob("../etc/passwd", &kind).is_err());
    assert!(scope_glob("/etc/passwd", &kind).is_err());
}

const CHECKLIST_PLAN: &str = "\
---
title: \"feat: login\"
---

# feat: Login

## Implementation Units

- [ ] **Unit 1: Password hashing**

**Goal:** Hash passwords with argon2.

**Files:**
- Create: `src/auth/hash.py`
- Test: `tests/test_hash.py`

**Execution note:** Execution target: external-delegate

**Test scenarios:**
- Happy path: a hashed password verifies.

**Verification:**
- `pytest tests/test_hash.py` passes
- no plain password is stored

---

- [ ] **Unit 2: Login endpoint**

**Goal:** Wire it.

**Files:**
- Modify: `src/app.py`

---

## Risks

Execution is risky.
";

#[test]
fn checklist_units_are_sections_and_fields_become_front_matter() {
    let p = parse_ok(CHECKLIST_PLAN);
    assert_eq!(p.units.len(), 1, "{:?}", p.units);
    let u = &p.units[0];
    assert_eq!(u.id, "password-hashing");
    assert_eq!(u.title, "Password hashing");
    assert_eq!(u.line, 9);
    assert_eq!(u.scope, ["src/auth/hash.py", "tests/test_hash.py"]);
    assert_eq!(
        u.done,
        [
            "`pytest tests/test_hash.py` passes",
            "no plain password is stored"
        ]
    );
    assert!(u.tests.is_empty());
    assert_eq!(
        u.task,
        "**Goal:** Hash passwords with argon2.\n\n**Test scenarios:**\n- Happy path: a hashed password verifies."
    );
    assert_eq!(p.not_delegated, ["Login endpoint"]);
}

#[test]
fn heading_units_with_subsections_ids_tests_and_code_blocks() {
    let plan = "\
# Plan

### 1. Parser
ID: `wu-parse`

Parse the input.
Tests: `parse::empty_input_is_an_error`, `parse::quoted`

```md
## Not a heading
Execution target: external-delegate
```

#### Files
- `src/parse.rs`

#### Notes on edge cases
Empty input is an error.

**Execution target:** external-delegate

### 2. Parser
Execution target: external-delegate
Files: `src/parse2.rs`

Second parser.

### 3. Parser
*Execution target*: external-delegate

Files: `src/parse3.rs`

Third.
";
    let p = parse_ok(plan);
    let ids: Vec<&str> = p.units.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["wu-parse", "parser", "parser-2"]);
    let u = &p.units[0];
    assert_eq!(u.scope, ["src/parse.rs"]);
    assert_eq!(u.tests, ["parse::empty_input_is_an_error", "parse::quoted"]);
    assert!(
        u.task.contains("## Not a heading\nExecution target"),
        "code stays: {}",
        u.task
    );
    assert!(
        u.task.contains("#### Notes on edge cases\nEmpty input"),
        "{}",
        u.task
    );
    assert!(!u.task.contains("#### Files"), "{}", u.task);
    assert!(!u.task.contains("ID:"), "{}", u.task);
    assert!(!u.task.contains("**Execution target:**"), "{}", u.task);
    assert_eq!(p.units[1].task, "Second parser.");
    assert_eq!(p.units[2].scope, ["src/parse3.rs"]);
}

#[test]
fn a_marked_section_without_files_is_an_error_naming_it() {
    let err = parse(
        "## Unit 4: Docs\nExecution target: external-delegate\n\nWrite docs.\n",
        &no_paths,
    )
    .unwrap_err();
    assert!(
        err.message.contains("section \"Unit 4: Docs\" (line 1)")
            && err.message.contains("names no files"),
        "{err:?}"
    );
    let err = parse(
        "## A\nID: same\nFiles: `a.rs`\nExecution target: external-delegate\nx\n## B\nID: same\nFiles: `b.rs`\nExecution target: external-delegate\ny\n",
        &no_paths,
    )
    .unwrap_err();
    assert!(
        err.message.contains("two sections have the id \"same\""),
        "{err:?}"
    );
    let err = parse(
        "Execution target: external-delegate\n# A\nFiles: `a.rs`\n",
        &no_paths,
    )
    .unwrap_err();
    assert!(err.message.contains("outside any section"), "{err:?}");
    let err = parse("## A\nFiles: `a.rs`\n", &no_paths);
    assert!(err.unwrap().units.is_empty());
}

#[test]
fn a_unit_without_its_own_files_does_not_borrow_a_sibling_s() {
    let plan = "## Units\n### A\nFiles: `a.rs`\nDo a.\n### B\nExecution target: external-delegate\nDo b.\n";
    let err = parse(plan, &no_paths).unwrap_err();
    assert!(err.message.contains("section \"B\""), "{err:?}");
}

#[test]
fn the_sample_plan_gives_two_units_with_requirements_as_done() {
    let kind = |p: &str| match p {
        "src/auth" => PathKind::Dir,
        "src/health.py" | "src/app.py" => PathKind::File,
        _ => PathKind::Missing,
    };
    let p = parse(include_str!("../../../tests/fixtures/plan.md"), &kind).unwrap();
    let ids: Vec<&str> = p.units.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["password-hashing-helpers", "login-endpoint"]);
    let login = &p.units[1];
    assert_eq!(
        login.scope,
        ["src/app.py", "src/auth/**", "tests/test_login.py"]
    );
    assert_eq!(login.context, ["src/health.py"]);
    assert_eq!(
        login.done,
        [
            "R2. `POST /login` answers 200 with a session for a valid password, 401 otherwise.",
            "`pytest tests/test_login.py` passes."
        ]
    );
    assert_eq!(login.dependencies.as_deref(), Some("Unit 1"));
    assert_eq!(p.units[0].dependencies, None);
    assert!(
        login.task.starts_with(
            "**Goal:** `POST /login` checks the password and opens a session.\n\n**Approach:**"
        ),
        "{}",
        login.task
    );
    assert_eq!(p.not_delegated, ["Operator documentation"]);
}

#[test]
fn rendered_units_parse_with_the_project_parser() {
    let p = parse_ok(CHECKLIST_PLAN);
    let mut u = p.units[0].clone();
    u.title = "Quotes \" and \\ backslashes".into();
    u.tests = vec!["t::a".into()];
    let text = render(&u, "docs/plans/login.md");
    let parsed = Unit::parse(&text, Path::new("units/password-hashing.md")).unwrap();
    assert_eq!(parsed.meta.title, u.title);
    assert_eq!(parsed.meta.scope, u.scope);
    assert_eq!(parsed.meta.done, u.done);
    assert_eq!(parsed.meta.tests, ["t::a"]);
    assert_eq!(parsed.body, u.task);
    assert!(
        text.contains(
            "# Imported from docs/plans/login.md, section \"Unit 1: Password hashing\" (line 9)."
        ),
        "{text}"
    );
}
