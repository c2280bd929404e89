//! Loading trigger files: every problem in every file, each with its file, line, column and a hint.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::model::{EventFilter, EventKind, TriggerFile};
use super::pattern::{Pattern, PatternList};
use super::{Filter, Trigger, template};
use crate::yaml::{self, Diagnostic, did_you_mean};

/// What loading produced: the triggers that are valid and the problems found in the others.
pub struct Loaded {
    pub triggers: Vec<Trigger>,
    pub diagnostics: Vec<Diagnostic>,
}

/// The trigger files under `paths` (files, or folders whose `*.yml`/`*.yaml` are read), sorted by path.
pub fn trigger_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| Diagnostic::new(path, 1, 1, format!("cannot read the folder: {e}")))?;
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
                {
                    files.push(p);
                }
            }
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(
                Diagnostic::new(path, 1, 1, "no such file or folder").with_hint(
                    "create it, or point `triggers` in nightshift.yml at your trigger files",
                ),
            );
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and checks trigger files. `agents` are the profile names a trigger may use; `None` skips that
/// check (no service config at hand).
pub fn load(paths: &[PathBuf], agents: Option<&BTreeSet<String>>) -> Loaded {
    let files = match trigger_files(paths) {
        Ok(files) => files,
        Err(d) => {
            return Loaded {
                triggers: Vec::new(),
                diagnostics: vec![d],
            };
        }
    };
    let mut loaded = Loaded {
        triggers: Vec::new(),
        diagnostics: Vec::new(),
    };
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                loaded.diagnostics.push(Diagnostic::new(
                    &file,
                    1,
                    1,
                    format!("cannot read the file: {e}"),
                ));
                continue;
            }
        };
        match load_one(&file, &text, agents) {
            Ok(trigger) => {
                if let Some(other) = names.insert(trigger.name.clone(), file.clone()) {
                    loaded.diagnostics.push(
                        Diagnostic::new(
                            &file,
                            1,
                            1,
                            format!("trigger `{}` is defined twice", trigger.name),
                        )
                        .with_hint(format!(
                            "{} has the same name; rename one of the files",
                            other.display()
                        )),
                    );
                    continue;
                }
                loaded.triggers.push(trigger);
            }
            Err(mut diagnostics) => loaded.diagnostics.append(&mut diagnostics),
        }
    }
    loaded
}

/// Parses and checks one trigger file, returning every problem found in it.
pub fn load_one(
    path: &Path,
    text: &str,
    agents: Option<&BTreeSet<String>>,
) -> Result<Trigger, Vec<Diagnostic>> {
    let file: TriggerFile = yaml::from_str(path, text).map_err(|d| vec![d])?;
    let mut errors = Vec::new();

    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errors.push(
            Diagnostic::new(path, 1, 1, format!("`{name}` cannot name a trigger"))
                .with_hint("the file name names the trigger and its branches: use letters, digits, `-`, `_` and `.`"),
        );
    }

    let mut events = HashMap::new();
    if file.on.value.events.is_empty() {
        errors.push(Diagnostic::at(
            path,
            file.on.referenced,
            "`on` lists no event",
        ));
    }
    for (kind, filter) in file.on.value.events {
        if let Some(filter) = check_filter(path, kind, filter, &mut errors) {
            events.insert(kind, filter);
        }
    }

    if let Some(agents) = agents
        && !agents.contains(&file.agent.value)
    {
        let mut d = Diagnostic::at(
            path,
            file.agent.referenced,
            format!(
                "agent `{}` is not a profile in the service config",
                file.agent.value
            ),
        );
        d.hint = did_you_mean(&file.agent.value, agents.iter().map(String::as_str)).or_else(|| {
            Some(format!(
                "profiles defined: {}",
                if agents.is_empty() {
                    "none".to_owned()
                } else {
                    agents.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ))
        });
        errors.push(d);
    }

    if let Err((line, message)) = template::check(&template::environment(), &file.prompt.value) {
        let (l, c) = template_position(text, &file.prompt, line);
        errors.push(
            Diagnostic::new(path, l, c, format!("the prompt is not a valid template: {message}"))
                .with_hint("templates use minijinja (Jinja2) syntax: {{ event.issue.title }}, {% if ... %}...{% endif %}"),
        );
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Trigger {
        name,
        path: path.to_owned(),
        description: file.description,
        events,
        agent: file.agent.value,
        prompt: file.prompt.value,
        output: file.output.map(|o| o.value).unwrap_or_default(),
    })
}

fn check_filter(
    path: &Path,
    kind: EventKind,
    filter: EventFilter,
    errors: &mut Vec<Diagnostic>,
) -> Option<Filter> {
    let before = errors.len();
    let types = match filter.types {
        None => kind.default_types().iter().map(|s| s.to_string()).collect(),
        Some(types) => {
            for t in &types {
                if !kind.activity_types().contains(&t.value.as_str()) {
                    let mut d = Diagnostic::at(
                        path,
                        t.referenced,
                        format!("`{}` is not an activity type of `{}`", t.value, kind.name()),
                    );
                    d.hint = did_you_mean(&t.value, kind.activity_types().iter().copied())
                        .or_else(|| Some(format!("one of: {}", kind.activity_types().join(", "))));
                    errors.push(d);
                }
            }
            types.into_iter().map(|t| t.value).collect()
        }
    };
    let mut patterns = |list: Option<Vec<Spanned<String>>>, key: &str| -> Option<PatternList> {
        let list = list?;
        if kind != EventKind::PullRequest {
            if let Some(first) = list.first() {
                errors.push(
                    Diagnostic::at(
                        path,
                        first.referenced,
                        format!("`{key}` does not apply to `{}`", kind.name()),
                    )
                    .with_hint("branch filters apply to pull_request (its base branch)"),
                );
            }
            return None;
        }
        let mut compiled = Vec::new();
        for p in &list {
            match Pattern::parse(&p.value) {
                Ok(pattern) => compiled.push(pattern),
                Err(e) => {
                    let mut d =
                        Diagnostic::at(path, p.referenced, format!("bad pattern: {}", e.message));
                    d.hint = e.hint;
                    errors.push(d);
                }
            }
        }
        match PatternList::new(compiled) {
            Ok(list) => Some(list),
            Err(e) => {
                let at = list.first().map(|p| p.referenced);
                let mut d = match at {
                    Some(at) => Diagnostic::at(path, at, e.message),
                    None => Diagnostic::new(path, 1, 1, e.message),
                };
                d.hint = e.hint;
                errors.push(d);
                None
            }
        }
    };
    let branches = patterns(filter.branches, "branches");
    let branches_ignore = patterns(filter.branches_ignore, "branches-ignore");
    if branches.is_some() && branches_ignore.is_some() {
        errors.push(
            Diagnostic::new(
                path,
                1,
                1,
                format!(
                    "`{}` has both `branches` and `branches-ignore`",
                    kind.name()
                ),
            )
            .with_hint("use `branches` with `!pattern` entries to include and exclude"),
        );
    }
    (errors.len() == before).then_some(Filter {
        types,
        branches,
        branches_ignore,
    })
}

/// Where template line `line` of a YAML string value sits in the file: a block scalar (`|`, `>`) starts on
/// the line after its indicator, a flow scalar on its own line.
fn template_position(text: &str, value: &Spanned<String>, line: usize) -> (u64, u64) {
    let start = value.referenced;
    let is_block = start
        .span()
        .byte_offset()
        .and_then(|off| text.get(off as usize..))
        .is_some_and(|rest| rest.starts_with('|') || rest.starts_with('>'));
    if !is_block {
        return (start.line() + line as u64 - 1, start.column());
    }
    let yaml_line = start.line() + line as u64;
    let column = text
        .lines()
        .nth(yaml_line as usize - 1)
        .map(|l| (l.len() - l.trim_start().len()) as u64 + 1)
        .unwrap_or(1);
    (yaml_line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> BTreeSet<String> {
        ["default".to_owned(), "fixer".to_owned()].into()
    }

    fn errors(text: &str) -> Vec<String> {
        load_one(Path::new("triggers/t.yml"), text, Some(&agents()))
            .map(|_| Vec::new())
            .unwrap_or_else(|ds| ds.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_good_trigger_loads_with_github_default_types() {
        let t = load_one(
            Path::new("review.yml"),
            "on:\n  pull_request:\n    branches: [main]\n  issues:\nagent: default\nprompt: hi\n",
            Some(&agents()),
        )
        .unwrap();
        assert_eq!(t.name, "review");
        assert_eq!(
            t.events[&EventKind::PullRequest].types,
            ["opened", "synchronize", "reopened"]
        );
        assert_eq!(
            t.events[&EventKind::Issues].types.len(),
            EventKind::Issues.activity_types().len()
        );
        assert_eq!(t.output, super::super::OutputKind::Comment);
    }

    #[test]
    fn on_accepts_a_name_or_a_list() {
        let t = load_one(
            Path::new("a.yml"),
            "on: issues\nagent: default\nprompt: x\n",
            None,
        )
        .unwrap();
        assert!(t.events.contains_key(&EventKind::Issues));
        let t = load_one(
            Path::new("a.yml"),
            "on: [issues, pull_request]\nagent: x\nprompt: x\n",
            None,
        )
        .unwrap();
        assert_eq!(t.events.len(), 2);
    }

    #[test]
    fn every_semantic_problem_in_a_file_is_reported() {
        let found = errors(
            "on:\n  issues:\n    types: [opend]\n  pull_request:\n    branches: ['v[0-9']\nagent: defualt\nprompt: \"{{ event.issue.title \"\n",
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert_eq!(
            found[0],
            "triggers/t.yml:3:13: error: `opend` is not an activity type of `issues`\n  hint: did you mean `opened`?"
        );
        assert!(
            found[1].starts_with(
                "triggers/t.yml:5:16: error: bad pattern: `[` in `v[0-9` is never closed"
            ),
            "{}",
            found[1]
        );
        assert_eq!(
            found[2],
            "triggers/t.yml:6:8: error: agent `defualt` is not a profile in the service config\n  hint: did you mean `default`?"
        );
        assert!(
            found[3].starts_with("triggers/t.yml:7:9: error: the prompt is not a valid template"),
            "{}",
            found[3]
        );
    }

    #[test]
    fn template_errors_in_block_prompts_point_at_their_line() {
        let found = errors("on: issues\nagent: default\nprompt: |\n  fine\n  {% if %}\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("triggers/t.yml:5:3: error: the prompt is not a valid template"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn structural_mistakes_name_line_column_and_hint() {
        let found = errors("on:\n  issues:\n    typs: [opened]\nagent: default\nprompt: x\n");
        assert_eq!(
            found,
            [
                "triggers/t.yml:3:5: error: unknown field `typs`, expected one of types, branches, branches-ignore\n  hint: did you mean `types`?"
            ]
        );
        let found = errors("on:\n  issue:\nagent: default\nprompt: x\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("unknown event `issue` (did you mean `issues`?)"),
            "{}",
            found[0]
        );
        let found = errors("on: issues\nagent: default\nprompt: x\noutput: pr\n");
        assert!(
            found[0].starts_with("triggers/t.yml:4:9: error: unknown variant `pr`"),
            "{}",
            found[0]
        );
        let found = errors("on: issues\nprompt: x\n");
        assert!(found[0].contains("missing field `agent`"), "{}", found[0]);
    }

    #[test]
    fn branch_filters_belong_to_pull_requests() {
        let found = errors("on:\n  issues:\n    branches: [main]\nagent: default\nprompt: x\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].contains("`branches` does not apply to `issues`"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn loading_a_folder_collects_problems_from_every_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "on: issues\nagent: nope\nprompt: x\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yaml"), "on: [\n").unwrap();
        std::fs::write(
            dir.path().join("c.yml"),
            "on: issues\nagent: default\nprompt: x\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let loaded = load(&[dir.path().to_owned()], Some(&agents()));
        assert_eq!(loaded.triggers.len(), 1);
        assert_eq!(loaded.diagnostics.len(), 2);
        assert!(loaded.diagnostics[0].path.ends_with("a.yml"));
        assert!(loaded.diagnostics[1].path.ends_with("b.yaml"));
    }
}
