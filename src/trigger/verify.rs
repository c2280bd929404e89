//! `verify:` — named commands run in the job's worktree (in the agent's box) after the agent ends and before
//! anything is delivered. A failing step goes back to the agent for up to `verify_rounds` more runs; if it
//! still fails, nothing is delivered (or, with `verify_fail: draft`, the pull request is opened as a draft).
//!
//! Steps come only from trusted files: the service's trigger files, `nightshift.yml` (a default per
//! repository pattern), and a repository's own triggers, which are read from its default branch
//! ([`super::repo`]) — never from the pull request a job is about, so a pull request cannot change the
//! commands that judge it.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use super::pattern::{Pattern, PatternList};

/// The agent runs after the first when a step fails, unless the trigger or the service default says.
pub const DEFAULT_VERIFY_ROUNDS: u32 = 2;
/// The most `verify_rounds` a trigger may ask for.
pub const MAX_VERIFY_ROUNDS: u32 = 5;
/// The most steps one `verify:` list may have.
pub const MAX_VERIFY_STEPS: usize = 20;
/// A step's timeout when it names none.
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 600;
/// The longest timeout a step may have.
pub const MAX_STEP_TIMEOUT_SECS: u64 = 24 * 3600;
/// The longest step name: names are shown in pull request bodies, comments and check runs.
pub const MAX_STEP_NAME: usize = 64;

/// One checked step, as a job freezes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyStep {
    pub name: String,
    /// The program and its arguments; a `run:` line is `["sh", "-c", line]`.
    pub argv: Vec<String>,
    pub timeout_secs: u64,
}

/// `verify_fail:` — what happens to a pull request whose steps still fail after the last round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyFail {
    /// Deliver nothing: no branch is pushed, the job fails naming the step.
    #[default]
    Fail,
    /// Open the pull request as a draft labelled as failing verification (output pull_request only).
    Draft,
}

impl VerifyFail {
    pub fn name(self) -> &'static str {
        match self {
            VerifyFail::Fail => "fail",
            VerifyFail::Draft => "draft",
        }
    }
}

/// A step as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyStepFile {
    /// The step's name, shown with its result on pull requests, reviews and comments (letters, digits,
    /// spaces, `-`, `_`, `.`, `:`; at most 64 characters; unique in the list).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// A shell line, run with `sh -c` in the worktree. Exactly one of `run` and `argv`.
    #[schemars(with = "Option<String>")]
    pub run: Option<Spanned<String>>,
    /// The program and its arguments, run without a shell. Exactly one of `run` and `argv`.
    #[schemars(with = "Option<Vec<String>>")]
    pub argv: Option<Spanned<Vec<String>>>,
    /// How long the step may take, e.g. 90s, 10m (default 10m, at most 24h). A step past it fails.
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
}

/// `verify:` as written: the steps, in order.
pub type VerifyFile = Spanned<Vec<Spanned<VerifyStepFile>>>;

/// Documents `verify:` in the published schema (a list of steps, at most [`MAX_VERIFY_STEPS`]).
pub struct VerifySchema;

impl JsonSchema for VerifySchema {
    fn schema_name() -> Cow<'static, str> {
        "Verify".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let step = generator.subschema_for::<VerifyStepFile>();
        json_schema!({
            "type": "array",
            "items": step,
            "maxItems": MAX_VERIFY_STEPS
        })
    }
}

/// One problem: where, what, and a hint.
pub type Problem = (Location, String, Option<String>);

/// Checks a `verify:` list; every problem is returned, each with where it is written.
pub fn check_steps(list: VerifyFile) -> Result<Vec<VerifyStep>, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    if list.value.len() > MAX_VERIFY_STEPS {
        problems.push((
            list.referenced,
            format!(
                "verify lists {} steps, more than {MAX_VERIFY_STEPS}",
                list.value.len()
            ),
            Some("combine steps into one script, e.g. run: ./ci/check.sh".into()),
        ));
    }
    let mut steps = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for step in list.value {
        let at = step.referenced;
        let step = step.value;
        let name = step.name.value.clone();
        if let Some(why) = bad_name(&name) {
            problems.push((
                step.name.referenced,
                why,
                Some(
                    "name the step with letters, digits, spaces, `-`, `_`, `.` or `:`, e.g. tests"
                        .into(),
                ),
            ));
        } else if seen.contains(&name) {
            problems.push((
                step.name.referenced,
                format!("verify step `{name}` is listed twice"),
                Some("give each step its own name".into()),
            ));
        }
        seen.push(name.clone());
        let argv = match (step.run, step.argv) {
            (Some(_), Some(argv)) => {
                problems.push((
                    argv.referenced,
                    format!("verify step `{name}` has both `run` and `argv`"),
                    Some(
                        "keep one: `run` is a shell line, `argv` a program and its arguments"
                            .into(),
                    ),
                ));
                None
            }
            (None, None) => {
                problems.push((
                    at,
                    format!("verify step `{name}` has neither `run` nor `argv`"),
                    Some("add e.g. run: cargo test --locked, or argv: [cargo, test]".into()),
                ));
                None
            }
            (Some(run), None) => {
                if run.value.trim().is_empty() {
                    problems.push((
                        run.referenced,
                        format!("verify step `{name}` has an empty `run` line"),
                        Some("write the command, e.g. run: cargo test --locked".into()),
                    ));
                    None
                } else if run.value.contains('\0') {
                    problems.push((
                        run.referenced,
                        format!("verify step `{name}`: `run` contains a NUL character"),
                        None,
                    ));
                    None
                } else {
                    Some(vec!["sh".to_owned(), "-c".to_owned(), run.value])
                }
            }
            (None, Some(argv)) => {
                if argv.value.first().is_none_or(|p| p.trim().is_empty()) {
                    problems.push((
                        argv.referenced,
                        format!("verify step `{name}` has an empty `argv`"),
                        Some("name the program first, e.g. argv: [cargo, test]".into()),
                    ));
                    None
                } else if argv.value.iter().any(|a| a.contains('\0')) {
                    problems.push((
                        argv.referenced,
                        format!("verify step `{name}`: `argv` contains a NUL character"),
                        None,
                    ));
                    None
                } else {
                    Some(argv.value)
                }
            }
        };
        let timeout_secs = match step.timeout {
            None => Some(DEFAULT_STEP_TIMEOUT_SECS),
            Some(t) => match humantime::parse_duration(t.value.trim()) {
                Ok(d) if d.as_secs() == 0 => {
                    problems.push((
                        t.referenced,
                        format!("verify step `{name}` has a timeout under a second"),
                        Some("write e.g. 90s, 10m".into()),
                    ));
                    None
                }
                Ok(d) if d.as_secs() > MAX_STEP_TIMEOUT_SECS => {
                    problems.push((
                        t.referenced,
                        format!("verify step `{name}` has a timeout over 24h"),
                        Some("write at most 24h".into()),
                    ));
                    None
                }
                Ok(d) => Some(d.as_secs()),
                Err(_) => {
                    problems.push((
                        t.referenced,
                        format!("`{}` is not a duration", t.value),
                        Some("write e.g. 90s, 10m, 1h".into()),
                    ));
                    None
                }
            },
        };
        if let (Some(argv), Some(timeout_secs)) = (argv, timeout_secs) {
            steps.push(VerifyStep {
                name,
                argv,
                timeout_secs,
            });
        }
    }
    if problems.is_empty() {
        Ok(steps)
    } else {
        Err(problems)
    }
}

/// Why `name` cannot name a step, if it cannot.
fn bad_name(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("a verify step needs a name".into());
    }
    if name.chars().count() > MAX_STEP_NAME {
        return Some(format!(
            "verify step name `{}…` is longer than {MAX_STEP_NAME} characters",
            name.chars().take(20).collect::<String>()
        ));
    }
    if name != name.trim()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | ':'))
    {
        return Some(format!(
            "`{}` cannot name a verify step",
            name.escape_debug()
        ));
    }
    None
}

/// Checks `verify_rounds` (a trigger's) or `rounds` (a service default's): `key` is which.
pub fn check_rounds(rounds: &Spanned<u32>, key: &str) -> Result<u32, Problem> {
    if rounds.value > MAX_VERIFY_ROUNDS {
        return Err((
            rounds.referenced,
            format!("{key} is {}, more than {MAX_VERIFY_ROUNDS}", rounds.value),
            Some(format!(
                "write at most {MAX_VERIFY_ROUNDS}; 0 runs the agent once and never again"
            )),
        ));
    }
    Ok(rounds.value)
}

/// A service default (`verify:` in nightshift.yml) as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyDefaultFile {
    /// `owner/name` patterns (`!` excludes) of the repositories it is for; every repository when left out.
    pub repos: Option<Vec<Spanned<String>>>,
    /// The steps.
    pub steps: VerifyFile,
    /// The agent runs after the first when a step fails (default 2; 0 = no retry).
    pub rounds: Option<Spanned<u32>>,
}

/// A checked service default: the steps for triggers without `verify:` in the repositories it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyDefault {
    /// None for every repository; patterns are lowercase and matched against the lowercase name.
    pub repos: Option<PatternList>,
    pub steps: Vec<VerifyStep>,
    pub rounds: Option<u32>,
}

impl VerifyDefault {
    /// Whether the default is for `repo` (`owner/name`, any case).
    pub fn applies_to(&self, repo: &str) -> bool {
        self.repos
            .as_ref()
            .is_none_or(|r| r.matches(&repo.to_lowercase()))
    }
}

impl VerifyDefaultFile {
    /// Checks one entry; every problem is returned.
    pub fn check(self) -> Result<VerifyDefault, Vec<Problem>> {
        let mut problems = Vec::new();
        let repos = match self.repos {
            None => None,
            Some(list) => {
                let mut compiled = Vec::new();
                for r in &list {
                    if !r.value.contains('/') {
                        problems.push((
                            r.referenced,
                            format!("`{}` is not an owner/name pattern", r.value),
                            Some("write e.g. acme/api or acme/*".into()),
                        ));
                        continue;
                    }
                    match Pattern::parse(&r.value.to_lowercase()) {
                        Ok(p) => compiled.push(p),
                        Err(e) => problems.push((
                            r.referenced,
                            format!("bad pattern: {}", e.message),
                            e.hint,
                        )),
                    }
                }
                match list.first() {
                    None => None,
                    Some(first) => match PatternList::new(compiled) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            problems.push((first.referenced, e.message, e.hint));
                            None
                        }
                    },
                }
            }
        };
        let rounds = match self
            .rounds
            .as_ref()
            .map(|r| check_rounds(r, "rounds"))
            .transpose()
        {
            Ok(r) => r,
            Err(p) => {
                problems.push(p);
                None
            }
        };
        let steps = match check_steps(self.steps) {
            Ok(s) => s,
            Err(mut more) => {
                problems.append(&mut more);
                Vec::new()
            }
        };
        if problems.is_empty() {
            Ok(VerifyDefault {
                repos,
                steps,
                rounds,
            })
        } else {
            Err(problems)
        }
    }
}

/// The steps and rounds a job of a trigger in `repo` runs: the trigger's own `verify:` when it has one (an
/// empty list runs none, turning the service default off), else the first service default whose `repos`
/// match. `verify_rounds` on the trigger wins over the default's `rounds`; both left out is
/// [`DEFAULT_VERIFY_ROUNDS`].
pub fn resolve(
    trigger_steps: Option<&[VerifyStep]>,
    trigger_rounds: Option<u32>,
    defaults: &[VerifyDefault],
    repo: &str,
) -> (Vec<VerifyStep>, u32) {
    match trigger_steps {
        Some(steps) => (
            steps.to_vec(),
            trigger_rounds.unwrap_or(DEFAULT_VERIFY_ROUNDS),
        ),
        None => match defaults.iter().find(|d| d.applies_to(repo)) {
            Some(d) => (
                d.steps.clone(),
                trigger_rounds.or(d.rounds).unwrap_or(DEFAULT_VERIFY_ROUNDS),
            ),
            None => (Vec::new(), trigger_rounds.unwrap_or(DEFAULT_VERIFY_ROUNDS)),
        },
    }
}

impl fmt::Display for VerifyStep {
    /// `name: command (timeout)`, the command as a shell would read it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let command = match self.argv.as_slice() {
            [sh, c, line] if sh == "sh" && c == "-c" => line.clone(),
            argv => shell_words(argv),
        };
        write!(
            f,
            "{}: {} (timeout {})",
            self.name,
            command
                .chars()
                .map(|c| if c.is_control() {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                })
                .collect::<String>(),
            humantime::format_duration(std::time::Duration::from_secs(self.timeout_secs))
        )
    }
}

/// `argv` quoted for reading: words with anything but safe characters in single quotes.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<VerifyStep>, Vec<String>> {
        #[derive(Deserialize)]
        struct Doc {
            verify: VerifyFile,
        }
        let doc: Doc = serde_saphyr::from_str(text).unwrap();
        check_steps(doc.verify).map_err(|ps| {
            ps.into_iter()
                .map(|(at, m, _)| format!("{}:{}: {m}", at.line(), at.column()))
                .collect()
        })
    }

    #[test]
    fn run_is_a_shell_line_and_argv_is_kept() {
        let steps = parse(
            "verify:\n  - name: tests\n    run: cargo test --locked\n    timeout: 90s\n  - name: lint\n    argv: [cargo, clippy]\n",
        )
        .unwrap();
        assert_eq!(
            steps,
            [
                VerifyStep {
                    name: "tests".into(),
                    argv: vec!["sh".into(), "-c".into(), "cargo test --locked".into()],
                    timeout_secs: 90,
                },
                VerifyStep {
                    name: "lint".into(),
                    argv: vec!["cargo".into(), "clippy".into()],
                    timeout_secs: DEFAULT_STEP_TIMEOUT_SECS,
                },
            ]
        );
        assert_eq!(
            steps[0].to_string(),
            "tests: cargo test --locked (timeout 1m 30s)"
        );
        assert_eq!(steps[1].to_string(), "lint: cargo clippy (timeout 10m)");
    }

    #[test]
    fn every_bad_step_is_reported_where_it_is_written() {
        let found = parse(
            "verify:\n  - name: ''\n    run: x\n  - name: a\n    run: x\n    argv: [x]\n  - name: a\n  - name: b\n    argv: []\n  - name: c\n    run: x\n    timeout: soon\n  - name: d\n    run: x\n    timeout: 0s\n  - name: \"`rm`\"\n    run: '  '\n",
        )
        .unwrap_err();
        assert_eq!(
            found,
            [
                "2:11: a verify step needs a name",
                "6:11: verify step `a` has both `run` and `argv`",
                "7:11: verify step `a` is listed twice",
                "7:5: verify step `a` has neither `run` nor `argv`",
                "9:11: verify step `b` has an empty `argv`",
                "12:14: `soon` is not a duration",
                "15:14: verify step `d` has a timeout under a second",
                "16:11: ``rm`` cannot name a verify step",
                "17:10: verify step ``rm`` has an empty `run` line",
            ]
        );
    }

    #[test]
    fn at_most_twenty_steps_and_five_rounds() {
        let many: String = (0..21)
            .map(|i| format!("  - name: s{i}\n    run: 'true'\n"))
            .collect();
        let found = parse(&format!("verify:\n{many}")).unwrap_err();
        assert_eq!(found, ["2:3: verify lists 21 steps, more than 20"]);
        let at = Location::UNKNOWN;
        let rounds = |value| {
            check_rounds(
                &Spanned {
                    value,
                    referenced: at,
                    defined: at,
                },
                "verify_rounds",
            )
        };
        assert_eq!(rounds(5), Ok(5));
        assert_eq!(rounds(0), Ok(0));
        assert!(rounds(6).unwrap_err().1.contains("more than 5"));
    }

    #[test]
    fn a_stored_spec_without_verify_fields_parses_with_the_defaults() {
        // A job queued before `verify:` existed.
        let stored = serde_json::json!({
            "trigger": "fix", "agent": "a", "prompt": "x", "output": "pull_request", "event": "issues",
            "action": "opened", "repo": "acme/api", "installation": null,
            "clone_url": "https://github.com/acme/api.git", "default_branch": "main", "head_sha": null,
            "number": 1, "title": "t", "is_pull_request": false
        });
        let spec: crate::trigger::JobSpec = serde_json::from_value(stored).unwrap();
        assert!(spec.verify.is_empty());
        assert_eq!(spec.verify_rounds, DEFAULT_VERIFY_ROUNDS);
        assert_eq!(spec.verify_fail, VerifyFail::Fail);
    }

    fn step(name: &str) -> VerifyStep {
        VerifyStep {
            name: name.into(),
            argv: vec!["true".into()],
            timeout_secs: 1,
        }
    }

    fn default(repos: &[&str], name: &str, rounds: Option<u32>) -> VerifyDefault {
        let patterns = repos
            .iter()
            .map(|r| Pattern::parse(&r.to_lowercase()).unwrap())
            .collect();
        VerifyDefault {
            repos: Some(PatternList::new(patterns).unwrap()),
            steps: vec![step(name)],
            rounds,
        }
    }

    #[test]
    fn the_first_matching_service_default_applies_unless_the_trigger_says() {
        let defaults = [
            default(&["acme/*", "!acme/docs"], "acme", Some(1)),
            default(&["**"], "everyone", None),
        ];
        assert_eq!(
            resolve(None, None, &defaults, "Acme/API"),
            (vec![step("acme")], 1),
            "patterns match any case"
        );
        assert_eq!(
            resolve(None, None, &defaults, "acme/docs"),
            (vec![step("everyone")], DEFAULT_VERIFY_ROUNDS),
            "`!` excludes; the next entry applies"
        );
        assert_eq!(
            resolve(None, Some(4), &defaults, "acme/api"),
            (vec![step("acme")], 4),
            "the trigger's verify_rounds wins"
        );
        assert_eq!(
            resolve(Some(&[]), None, &defaults, "acme/api"),
            (Vec::new(), DEFAULT_VERIFY_ROUNDS),
            "`verify: []` turns the default off"
        );
        assert_eq!(
            resolve(Some(&[step("own")]), None, &defaults, "acme/api"),
            (vec![step("own")], DEFAULT_VERIFY_ROUNDS)
        );
        assert_eq!(
            resolve(None, None, &defaults[..1], "other/repo"),
            (Vec::new(), DEFAULT_VERIFY_ROUNDS)
        );
    }
}
