//! The crate's imports follow the pipeline (docs/architecture.md, "Dependencies"): a stage imports earlier
//! stages and infrastructure, never a later stage nor the composition root, and infrastructure imports no
//! stage. This reads every `use crate::…` and `crate::` path under `src/` (outside tests) and fails on an
//! import that runs the other way and is not one of the documented exceptions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Pipeline order; a module not listed is infrastructure (rank 0).
const STAGES: &[(&str, u8)] = &[
    ("source", 1),
    ("trigger", 2),
    ("queue", 3),
    ("agent", 4),
    ("sink", 5),
    ("server", 9),
    // The App's setup in the browser is wired by the server, beside it: it hands the new webhook secret to
    // the webhook source.
    ("setup", 9),
    ("web", 9),
];

/// The documented exceptions: (file or folder under src/, imported module).
const ALLOWED: &[(&str, &str)] = &[
    // The service's `limits:` and `verify:` sections share the trigger files' vocabulary.
    ("config.rs", "trigger"),
    // The schedule source fires the triggers' own `schedule:` entries.
    ("source/schedule.rs", "trigger"),
    // The queue hands a claimed job to the agent and its result to the sink.
    ("queue/", "agent"),
    ("queue/", "sink"),
];

fn rank(module: &str) -> u8 {
    STAGES
        .iter()
        .find(|(m, _)| *m == module)
        .map_or(0, |(_, r)| *r)
}

fn against(from: &str, to: &str) -> bool {
    to == "server" || rank(to) > rank(from)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its tests (everything from the first `#[cfg(test)]`).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The first segment of every path the `use` tree after `use crate::` names: `{a::b, c}` gives a and c.
fn use_roots(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let inner = tree
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(&tree);
    let mut roots = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                roots.push(inner[start..i].to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    roots.push(inner[start..].to_owned());
    roots
        .into_iter()
        .filter_map(|p| p.split("::").next().map(str::to_owned))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Every module of the crate `code` names through `crate::`.
fn imported(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `nightshift_crate::` or the like
        }
        if after.starts_with('{') {
            let end = after.find(';').unwrap_or(after.len());
            found.extend(use_roots(&after[..end]));
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if after[name.len()..].starts_with("::") {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn imports_follow_the_pipeline() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "main.rs" || rel.ends_with("/tests.rs") {
            continue;
        }
        let from = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(path).unwrap();
        for to in imported(&code(&text)) {
            seen += 1;
            if to == from || !against(&from, &to) {
                continue;
            }
            if ALLOWED
                .iter()
                .any(|(file, module)| rel.starts_with(file) && *module == to)
            {
                continue;
            }
            wrong.push(format!("src/{rel} imports crate::{to}"));
        }
    }
    assert!(seen > 100, "only {seen} imports found: is the scan broken?");
    assert!(
        wrong.is_empty(),
        "imports against the pipeline (see docs/architecture.md, Dependencies):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scan_sees_grouped_and_inline_paths() {
    let code = code(
        "use crate::{agent::x, sink::{a, b}};\n// use crate::server::y;\nfn f() { crate::queue::z(); }\n\
         #[cfg(test)]\nmod tests { use crate::server::w; }\n",
    );
    assert_eq!(
        imported(&code).into_iter().collect::<Vec<_>>(),
        ["agent", "queue", "sink"]
    );
    assert!(against("trigger", "sink"));
    assert!(against("config", "trigger"));
    assert!(against("queue", "server"));
    assert!(!against("sink", "trigger"));
    assert!(!against("github", "repo"));
}
