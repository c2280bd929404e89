//! The output policy: the agent proposes, nightshift checks, then posts. [`check`] runs right before
//! anything is posted and refuses a proposal that breaks the trigger's `limits:` (laid over the service's,
//! then the defaults): bodies too long, too many inline comments, labels nobody allowed, a commit that
//! touches paths it may not (workflows by default), too many files or lines, or text that looks like a
//! credential. The [`Violation`] says which rule, in words the progress comment can show; it never repeats
//! a secret it found.
//!
//! Everything a proposal carries is hostile (the agent wrote it, maybe steered by an issue's text), and may
//! be large: every check is linear in its size. Patterns compile to `regex-automata` automata, which never
//! backtrack.

use std::borrow::Cow;
use std::fmt;

use crate::repo::git::{CommitChanges, MODE_SUBMODULE};
use crate::sink::secrets;
use crate::trigger::pattern::{Pattern, PatternList};
use crate::trigger::{JobSpec, Limits, Secrets};

/// The default cap on a body posted, in bytes: what GitHub's 65,536 characters can take in UTF-8, so by default
/// only GitHub's own limit applies (nightshift cuts an agent's message to fit it, with a note); a trigger or the
/// service may set a lower one, which refuses the output instead.
pub const DEFAULT_MAX_BODY: u64 = 262_144;
pub const DEFAULT_MAX_INLINE_COMMENTS: u32 = 50;
/// Generous: only a runaway commit (a build folder, vendored dependencies) reaches them, never a fix.
pub const DEFAULT_MAX_FILES: u64 = 1_000;
pub const DEFAULT_MAX_LINES: u64 = 100_000;
/// Workflows run with the repository's secrets and token; composite actions under `.github/actions` are
/// code those workflows run (`uses: ./.github/actions/x`), so writing one is writing a workflow.
pub const DEFAULT_PATHS: [&str; 3] = ["**", "!.github/workflows/**", "!.github/actions/**"];

/// What an output would post, as the check sees it.
#[derive(Clone, Debug, Default)]
pub struct Proposal<'a> {
    /// Each text to be posted, with what it is in a user's words: ("the comment body", text),
    /// ("the review summary", ...), ("the inline comment on src/a.rs:12", ...).
    pub bodies: Vec<(&'a str, &'a str)>,
    /// How many inline comments the review would carry.
    pub inline_comments: usize,
    /// Labels the output would add (the issue output's own and any the agent proposes).
    pub labels: Vec<&'a str>,
    /// The commit a pull request would propose, measured with [`crate::repo::git::measure_commit`].
    pub changes: Option<&'a CommitChanges>,
}

/// A rule a proposal broke. `Display` is the sentence the job fails with and the progress comment shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The `limits:` field broken (`limits.paths`, `limits.secrets`, ...).
    pub rule: &'static str,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Violation {}

fn violation(rule: &'static str, message: String) -> Violation {
    Violation { rule, message }
}

/// The limits in force for a job: its trigger's, over the service's; and the labels its trigger's own
/// `output:` names are always allowed (when neither says `labels:`, only those).
pub fn in_force(job: &JobSpec, service: &Limits) -> Limits {
    let mut limits = job.limits.over(service);
    let mut labels = limits.labels.take().unwrap_or_default();
    for own in &job.labels {
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(own)) {
            labels.push(own.clone());
        }
    }
    limits.labels = Some(labels);
    limits
}

/// Checks a proposal against `limits` (already laid over the service's: see [`in_force`]); fields still
/// unset take their defaults, and `labels: None` allows no label.
pub fn check(limits: &Limits, proposal: &Proposal<'_>) -> Result<(), Violation> {
    let allowed: &[String] = limits.labels.as_deref().unwrap_or_default();
    for label in &proposal.labels {
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(label)) {
            let which = if allowed.is_empty() {
                "allows no label".to_owned()
            } else {
                format!("allows only {}", allowed.join(", "))
            };
            return Err(violation(
                "limits.labels",
                format!(
                    "the output adds the label `{}`, and limits.labels {which}",
                    printable(label)
                ),
            ));
        }
    }

    let max_comments = limits
        .max_inline_comments
        .unwrap_or(DEFAULT_MAX_INLINE_COMMENTS);
    if proposal.inline_comments > max_comments as usize {
        return Err(violation(
            "limits.max_inline_comments",
            format!(
                "the review has {} inline comments, more than limits.max_inline_comments allows ({max_comments})",
                proposal.inline_comments
            ),
        ));
    }

    let max_body = limits.max_body.unwrap_or(DEFAULT_MAX_BODY);
    for (what, text) in &proposal.bodies {
        if text.len() as u64 > max_body {
            return Err(violation(
                "limits.max_body",
                format!(
                    "{what} is {} bytes, more than limits.max_body allows ({max_body})",
                    text.len()
                ),
            ));
        }
    }

    if let Some(changes) = proposal.changes {
        check_changes(limits, changes)?;
    }

    if limits.secrets.unwrap_or_default() == Secrets::Refuse {
        for (what, text) in &proposal.bodies {
            // As it would be posted: the secrets nightshift knows are redacted then, so they are no leak.
            // (A commit is pushed as it is: its lines are checked unredacted.)
            if let Some(found) = secrets::find(&crate::redact::redact(text)) {
                return Err(violation(
                    "limits.secrets",
                    format!(
                        "{what} contains a secret on line {} (gitleaks rule {}), which limits.secrets refuses",
                        found.line, found.rule_id
                    ),
                ));
            }
        }
        if let Some(changes) = proposal.changes {
            for file in &changes.files {
                // A value nightshift knows is secret (a token, an `env:` pass-through), whatever its shape:
                // gitleaks' rules find only the shapes they know, and a commit is pushed as it is. In a
                // path too, and in a binary file's bytes, also as UTF-16 (its NULs dropped).
                let held = |text: &str| matches!(crate::redact::redact(text), Cow::Owned(_));
                if held(&file.path) {
                    return Err(violation(
                        "limits.secrets",
                        "the pull request adds a path that holds a secret nightshift was given, which \
                         limits.secrets refuses"
                            .to_owned(),
                    ));
                }
                if let Some((line, _)) = file.added_lines.iter().find(|(_, text)| {
                    held(text)
                        || (file.binary && text.contains('\0') && held(&text.replace('\0', "")))
                }) {
                    return Err(violation(
                        "limits.secrets",
                        format!(
                            "the pull request adds a secret nightshift was given at {}:{line}, which \
                             limits.secrets refuses",
                            printable(&file.path)
                        ),
                    ));
                }
                // gitleaks' rules read text: a binary file is looked at by its path only (its bytes would
                // match rules of random-looking strings).
                let text: &[(u64, String)] = if file.binary { &[] } else { &file.added_lines };
                if let Some(found) = secrets::find_in_file(&file.path, text) {
                    let place = if found.line == 0 {
                        printable(&file.path)
                    } else {
                        format!("{}:{}", printable(&file.path), found.line)
                    };
                    return Err(violation(
                        "limits.secrets",
                        format!(
                            "the pull request adds a secret at {place} (gitleaks rule {}), which limits.secrets refuses",
                            found.rule_id
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_changes(limits: &Limits, changes: &CommitChanges) -> Result<(), Violation> {
    let max_files = limits.max_files.unwrap_or(DEFAULT_MAX_FILES);
    if changes.files.len() as u64 > max_files {
        return Err(violation(
            "limits.max_files",
            format!(
                "the pull request changes {} files, more than limits.max_files allows ({max_files})",
                changes.files.len()
            ),
        ));
    }
    let max_lines = limits.max_lines.unwrap_or(DEFAULT_MAX_LINES);
    let lines = changes.lines();
    if lines > max_lines {
        return Err(violation(
            "limits.max_lines",
            format!(
                "the pull request changes {lines} lines, more than limits.max_lines allows ({max_lines})"
            ),
        ));
    }
    if changes.too_large {
        return Err(violation(
            "limits.max_lines",
            format!(
                "the pull request is larger than nightshift reads to check a change ({} MiB of patch, {} \
                 added lines at most), so it is not proposed",
                crate::repo::git::MAX_PATCH >> 20,
                crate::repo::git::MAX_CHECKED_LINES
            ),
        ));
    }
    let paths = PathRules::new(limits.paths.as_deref())?;
    for file in &changes.files {
        // A symlink or a submodule can stand for a folder: `.github/workflows` itself as a link is refused
        // where `.github/workflows/**` is.
        let folder_like = file.is_symlink() || file.new_mode == MODE_SUBMODULE;
        if !paths.allows(&file.path) || (folder_like && !paths.allows(&format!("{}/x", file.path)))
        {
            return Err(violation(
                "limits.paths",
                format!(
                    "the pull request touches {}, which limits.paths does not allow",
                    printable(&file.path)
                ),
            ));
        }
        if let Some(target) = file.link_target() {
            let reason = match resolve_link(&file.path, target) {
                None => Some("outside the repository".to_owned()),
                // As a file, and as a folder (a link to `.github/workflows` itself).
                Some(resolved)
                    if !paths.allows(&resolved) || !paths.allows(&format!("{resolved}/x")) =>
                {
                    Some(format!(
                        "to {}, which limits.paths does not allow",
                        printable(&resolved)
                    ))
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                return Err(violation(
                    "limits.paths",
                    format!(
                        "the pull request adds a symlink {} that points {reason}",
                        printable(&file.path)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The path patterns, matched twice: as written, and with path and patterns lowercased. A path passes only
/// if both allow it, so `.GitHub/Workflows/x.yml` (one folder with `.github/workflows` on a
/// case-insensitive checkout, macOS or Windows) is refused where `.github/workflows/**` is.
struct PathRules {
    exact: PatternList,
    folded: PatternList,
}

impl PathRules {
    fn new(sources: Option<&[String]>) -> Result<PathRules, Violation> {
        let defaults: Vec<String> = DEFAULT_PATHS.iter().map(|s| (*s).to_owned()).collect();
        let sources = sources.unwrap_or(&defaults);
        let compile = |fold: bool| -> Result<PatternList, Violation> {
            let mut patterns = Vec::new();
            for source in sources {
                let source = if fold {
                    source.to_lowercase()
                } else {
                    source.clone()
                };
                let pattern = Pattern::parse(&source).or_else(|e| {
                    // Lowercasing can break a pattern (a range of capitals); keep it as written.
                    if fold {
                        Pattern::parse(&source.to_ascii_lowercase())
                    } else {
                        Err(e)
                    }
                });
                patterns.push(pattern.map_err(|e| {
                    violation("limits.paths", format!("limits.paths: {}", e.message))
                })?);
            }
            if patterns.is_empty() {
                // `paths: []`: nothing may be touched.
                return Ok(PatternList::new(Vec::new()).expect("an empty list is valid"));
            }
            PatternList::new(patterns)
                .map_err(|e| violation("limits.paths", format!("limits.paths: {}", e.message)))
        };
        Ok(PathRules {
            exact: compile(false)?,
            folded: compile(true)?,
        })
    }

    fn allows(&self, path: &str) -> bool {
        self.exact.matches(path) && self.folded.matches(&path.to_lowercase())
    }
}

/// Where a symlink at `link` pointing to `target` leads, as a repository path; None when it leaves the
/// repository (an absolute target, or more `..` than folders).
fn resolve_link(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') || target.is_empty() {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// A name or path as it can be shown: control characters escaped, at most 200 characters.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// The limits in force, in one line, for `nightshift prompt`.
pub fn summary(limits: &Limits) -> String {
    let labels = match limits.labels.as_deref() {
        None | Some([]) => "none".to_owned(),
        Some(labels) => labels.join(", "),
    };
    let paths = limits
        .paths
        .as_ref()
        .map(|p| p.join(", "))
        .unwrap_or_else(|| DEFAULT_PATHS.join(", "));
    format!(
        "limits: bodies ≤ {} bytes, ≤ {} inline comments, labels: {labels}, paths: {}, ≤ {} files, ≤ {} lines, secrets: {}",
        limits.max_body.unwrap_or(DEFAULT_MAX_BODY),
        limits
            .max_inline_comments
            .unwrap_or(DEFAULT_MAX_INLINE_COMMENTS),
        if paths.is_empty() { "none" } else { &paths },
        limits.max_files.unwrap_or(DEFAULT_MAX_FILES),
        limits.max_lines.unwrap_or(DEFAULT_MAX_LINES),
        match limits.secrets.unwrap_or_default() {
            Secrets::Refuse => "refused",
            Secrets::Allow => "allowed",
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::git::{ChangedPath, MODE_SUBMODULE, MODE_SYMLINK};

    fn file(path: &str, added: u64, removed: u64) -> ChangedPath {
        ChangedPath {
            path: path.into(),
            added,
            removed,
            old_mode: 0o100644,
            new_mode: 0o100644,
            ..ChangedPath::default()
        }
    }

    fn commit(files: Vec<ChangedPath>) -> CommitChanges {
        CommitChanges {
            files,
            too_large: false,
        }
    }

    fn with_changes(changes: &CommitChanges) -> Proposal<'_> {
        Proposal {
            changes: Some(changes),
            ..Proposal::default()
        }
    }

    fn refused(limits: &Limits, proposal: &Proposal<'_>) -> Violation {
        check(limits, proposal).expect_err("the proposal should be refused")
    }

    // A token of the documented shape, built at run time so no scanner flags this file.
    fn github_token() -> String {
        format!("ghp_{}", "a1B2c3D4e5".repeat(4).get(..36).unwrap())
    }

    #[test]
    fn a_workflow_change_is_refused_by_default_and_named() {
        let changes = commit(vec![
            file("src/lib.rs", 3, 1),
            file(".github/workflows/ci.yml", 2, 0),
        ]);
        let v = refused(&Limits::default(), &with_changes(&changes));
        assert_eq!(v.rule, "limits.paths");
        assert_eq!(
            v.to_string(),
            "the pull request touches .github/workflows/ci.yml, which limits.paths does not allow"
        );
        let actions = commit(vec![file(".github/actions/setup/action.yml", 1, 0)]);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&actions)).rule,
            "limits.paths"
        );
        let fine = commit(vec![
            file("src/lib.rs", 3, 1),
            file(".github/CODEOWNERS", 1, 0),
        ]);
        assert_eq!(check(&Limits::default(), &with_changes(&fine)), Ok(()));
    }

    #[test]
    fn a_trigger_may_allow_workflows_and_narrow_paths() {
        let changes = commit(vec![file(".github/workflows/ci.yml", 2, 0)]);
        let allow = Limits {
            paths: Some(vec!["**".into()]),
            ..Limits::default()
        };
        assert_eq!(check(&allow, &with_changes(&changes)), Ok(()));
        let docs = Limits {
            paths: Some(vec!["docs/**".into(), "!docs/secret/**".into()]),
            ..Limits::default()
        };
        let ok = commit(vec![file("docs/a.md", 1, 0)]);
        assert_eq!(check(&docs, &with_changes(&ok)), Ok(()));
        for bad in ["src/main.rs", "docs/secret/x.md", "README.md"] {
            let c = commit(vec![file(bad, 1, 0)]);
            assert!(refused(&docs, &with_changes(&c)).to_string().contains(bad));
        }
        let nothing = Limits {
            paths: Some(Vec::new()),
            ..Limits::default()
        };
        assert_eq!(refused(&nothing, &with_changes(&ok)).rule, "limits.paths");
    }

    #[test]
    fn case_tricks_do_not_reach_denied_folders_and_allowed_ones_still_work() {
        for sneaky in [
            ".GitHub/Workflows/ci.yml",
            ".GITHUB/workflows/x.yaml",
            ".github/Workflows/x.yml",
            // KELVIN SIGN folds to `k` on case-insensitive file systems.
            ".github/wor\u{212A}flows/x.yml",
        ] {
            let c = commit(vec![file(sneaky, 1, 0)]);
            assert_eq!(
                refused(&Limits::default(), &with_changes(&c)).rule,
                "limits.paths",
                "{sneaky}"
            );
        }
        let docs = Limits {
            paths: Some(vec!["Docs/**".into()]),
            ..Limits::default()
        };
        let c = commit(vec![file("Docs/Guide.md", 1, 0)]);
        assert_eq!(check(&docs, &with_changes(&c)), Ok(()));
    }

    #[test]
    fn symlinks_may_not_lead_out_of_the_repository_or_into_denied_paths() {
        let link = |path: &str, target: &str| ChangedPath {
            path: path.into(),
            added: 1,
            new_mode: MODE_SYMLINK,
            added_lines: vec![(1, target.into())],
            ..ChangedPath::default()
        };
        for (path, target) in [
            ("docs/passwd", "/etc/passwd"),
            ("docs/up", "../../outside"),
            ("ci", ".github/workflows/ci.yml"),
            ("docs/ci", "../.GitHub/workflows"),
        ] {
            let c = commit(vec![link(path, target)]);
            let v = refused(&Limits::default(), &with_changes(&c));
            assert_eq!(v.rule, "limits.paths");
            assert!(v.to_string().contains("symlink"), "{v}");
        }
        let c = commit(vec![link("docs/readme", "../README.md")]);
        assert_eq!(check(&Limits::default(), &with_changes(&c)), Ok(()));

        // The denied folder itself, made a link or a submodule.
        let c = commit(vec![link(".github/workflows", "../ci")]);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&c)).to_string(),
            "the pull request touches .github/workflows, which limits.paths does not allow"
        );
        let mut sub = file(".github/actions", 1, 0);
        sub.new_mode = MODE_SUBMODULE;
        let c = commit(vec![sub]);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&c)).rule,
            "limits.paths"
        );
    }

    #[test]
    fn file_and_line_caps() {
        let limits = Limits {
            max_files: Some(2),
            max_lines: Some(10),
            ..Limits::default()
        };
        let three = commit(vec![file("a", 1, 0), file("b", 1, 0), file("c", 1, 0)]);
        assert_eq!(
            refused(&limits, &with_changes(&three)).to_string(),
            "the pull request changes 3 files, more than limits.max_files allows (2)"
        );
        let long = commit(vec![file("a", 6, 5)]);
        assert_eq!(
            refused(&limits, &with_changes(&long)).to_string(),
            "the pull request changes 11 lines, more than limits.max_lines allows (10)"
        );
        let fits = commit(vec![file("a", 5, 5), file("b", 0, 0)]);
        assert_eq!(check(&limits, &with_changes(&fits)), Ok(()));
        let many: Vec<_> = (0..=DEFAULT_MAX_FILES)
            .map(|i| file(&format!("f{i}"), 1, 0))
            .collect();
        let many = commit(many);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&many)).rule,
            "limits.max_files"
        );
    }

    #[test]
    fn bodies_inline_comments_and_labels() {
        let long = "x".repeat(DEFAULT_MAX_BODY as usize + 1);
        let p = Proposal {
            bodies: vec![("the comment body", &long)],
            ..Proposal::default()
        };
        assert_eq!(
            refused(&Limits::default(), &p).to_string(),
            format!(
                "the comment body is {} bytes, more than limits.max_body allows (262144)",
                long.len()
            )
        );
        let small = Limits {
            max_body: Some(10),
            max_inline_comments: Some(2),
            labels: Some(vec!["bug".into(), "Triage".into()]),
            ..Limits::default()
        };
        let p = Proposal {
            bodies: vec![
                ("the review summary", "short"),
                ("the issue body", "exactly 10"),
            ],
            inline_comments: 2,
            labels: vec!["bug", "triage"],
            changes: None,
        };
        assert_eq!(check(&small, &p), Ok(()));
        let p3 = Proposal {
            inline_comments: 3,
            ..p.clone()
        };
        assert_eq!(refused(&small, &p3).rule, "limits.max_inline_comments");
        let evil = Proposal {
            labels: vec!["bug", "security: ignore"],
            ..p.clone()
        };
        assert_eq!(
            refused(&small, &evil).to_string(),
            "the output adds the label `security: ignore`, and limits.labels allows only bug, Triage"
        );
        let none = Proposal {
            labels: vec!["bug"],
            ..Proposal::default()
        };
        assert_eq!(
            refused(&Limits::default(), &none).to_string(),
            "the output adds the label `bug`, and limits.labels allows no label"
        );
    }

    #[test]
    fn a_jobs_own_labels_are_allowed_and_the_trigger_overrides_the_service_field_by_field() {
        let service = Limits {
            max_body: Some(1000),
            labels: Some(vec!["triage".into()]),
            max_files: Some(5),
            ..Limits::default()
        };
        let trigger = Limits {
            max_body: Some(2000),
            ..Limits::default()
        };
        let merged = trigger.over(&service);
        assert_eq!(merged.max_body, Some(2000));
        assert_eq!(merged.max_files, Some(5));
        assert_eq!(merged.labels, Some(vec!["triage".to_owned()]));
        assert_eq!(merged.max_lines, None);

        let job: JobSpec = serde_json::from_value(serde_json::json!({
            "trigger": "t", "agent": "a", "prompt": "p", "output": "issue", "labels": ["nightly"],
            "event": "schedule", "action": null, "repo": "o/r", "installation": null,
            "clone_url": "https://github.com/o/r.git", "default_branch": "main", "head_sha": null,
            "number": null, "title": null, "is_pull_request": false,
            "limits": { "max_body": 2000 }
        }))
        .unwrap();
        let limits = in_force(&job, &service);
        assert_eq!(limits.max_body, Some(2000));
        let p = Proposal {
            labels: vec!["nightly", "TRIAGE"],
            ..Proposal::default()
        };
        assert_eq!(check(&limits, &p), Ok(()));
        let p = Proposal {
            labels: vec!["nightly", "wontfix"],
            ..Proposal::default()
        };
        assert_eq!(
            refused(&limits, &p).to_string(),
            "the output adds the label `wontfix`, and limits.labels allows only triage, nightly"
        );
        // A job queued before limits existed still reads, with the trigger's labels allowed.
        let mut old = serde_json::to_value(&job).unwrap();
        old.as_object_mut().unwrap().remove("limits");
        let old: JobSpec = serde_json::from_value(old).unwrap();
        assert_eq!(
            in_force(&old, &Limits::default()).labels,
            Some(vec!["nightly".to_owned()])
        );
    }

    #[test]
    fn secrets_are_refused_by_rule_and_place_without_repeating_them() {
        let token = github_token();
        let body = format!("All done.\n\nI used {token} to test.");
        let p = Proposal {
            bodies: vec![("the comment body", &body)],
            ..Proposal::default()
        };
        let v = refused(&Limits::default(), &p);
        assert_eq!(v.rule, "limits.secrets");
        assert_eq!(
            v.to_string(),
            "the comment body contains a secret on line 3 (gitleaks rule github-pat), which limits.secrets refuses"
        );
        assert!(!v.to_string().contains(&token));

        let allow = Limits {
            secrets: Some(Secrets::Allow),
            ..Limits::default()
        };
        assert_eq!(check(&allow, &p), Ok(()));

        let mut f = file("src/config.py", 2, 0);
        f.added_lines = vec![
            (7, "x = 1".into()),
            (8, format!("AWS = \"AKIA{}\"", "ABCDEFGHIJKLMNOP")),
        ];
        let c = commit(vec![f]);
        let v = refused(&Limits::default(), &with_changes(&c));
        assert_eq!(
            v.to_string(),
            "the pull request adds a secret at src/config.py:8 (gitleaks rule aws-access-token), which limits.secrets refuses"
        );
    }

    #[test]
    fn bodies_are_checked_as_posted_with_known_secrets_redacted_and_commits_as_pushed() {
        // A value gitleaks' generic rule finds; once nightshift knows it (an `env:` pass-through), it is
        // redacted from what is posted, so the body passes; the same line in a commit does not.
        let value = format!("dk-live-{}", "7Qx2Lm9Vb4Rt8Zc1");
        let body = format!("Deployed.\nkey={value} done\n");
        let p = Proposal {
            bodies: vec![("the comment body", &body)],
            ..Proposal::default()
        };
        assert_eq!(
            refused(&Limits::default(), &p).to_string(),
            "the comment body contains a secret on line 2 (gitleaks rule generic-api-key), which limits.secrets refuses"
        );
        crate::redact::global().add(&value);
        assert_eq!(check(&Limits::default(), &p), Ok(()));
        let mut f = file("deploy.env", 1, 0);
        f.added_lines = vec![(3, format!("key={value}"))];
        let c = commit(vec![f]);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&c)).to_string(),
            "the pull request adds a secret nightshift was given at deploy.env:3, which limits.secrets refuses"
        );
    }

    #[test]
    fn a_known_secret_of_no_recognisable_shape_is_refused_in_a_commit() {
        // A password passed through to the agent: no gitleaks rule finds `hunter2`-like text on its own.
        let value = "correct-horse-battery-staple-42";
        let mut f = file("notes.txt", 1, 0);
        f.added_lines = vec![
            (1, "nothing here".into()),
            (2, format!("the password is {value}")),
        ];
        let c = commit(vec![f]);
        assert_eq!(check(&Limits::default(), &with_changes(&c)), Ok(()));
        crate::redact::global().add(value);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&c)).to_string(),
            "the pull request adds a secret nightshift was given at notes.txt:2, which limits.secrets refuses"
        );
        let allow = Limits {
            secrets: Some(Secrets::Allow),
            ..Limits::default()
        };
        assert_eq!(check(&allow, &with_changes(&c)), Ok(()));
    }

    #[test]
    fn a_known_secret_in_a_binary_file_as_utf16_or_in_a_path_is_refused() {
        let value = "binary-borne-secret-9QzX";
        crate::redact::global().add(value);
        let utf16: String = value.chars().flat_map(|c| [c, '\0']).collect();
        for (path, binary, line) in [
            ("app.bin", true, format!("\u{fffd}\0\0{value}\0\u{fffd}")),
            ("notes-utf16.txt", true, format!("\u{fffd}\u{fffd}{utf16}")),
        ] {
            let mut f = file(path, 0, 0);
            f.binary = binary;
            f.added_lines = vec![(1, "\0\0".into()), (2, line)];
            assert_eq!(
                refused(&Limits::default(), &with_changes(&commit(vec![f]))).to_string(),
                format!(
                    "the pull request adds a secret nightshift was given at {path}:2, which limits.secrets refuses"
                )
            );
        }
        let f = file(&format!("leak/{value}.txt"), 1, 0);
        assert_eq!(
            refused(&Limits::default(), &with_changes(&commit(vec![f]))).to_string(),
            "the pull request adds a path that holds a secret nightshift was given, which limits.secrets refuses"
        );
        // A binary file's bytes are not read by gitleaks' rules of random-looking strings.
        let mut blob = file("blob.dat", 0, 0);
        blob.binary = true;
        blob.added_lines = vec![(1, format!("\u{fffd}AWS = \"AKIA{}\"", "QRSTUVWXYZABCDEF"))];
        assert_eq!(
            check(
                &Limits::default(),
                &with_changes(&commit(vec![blob.clone()]))
            ),
            Ok(())
        );
        blob.binary = false;
        assert!(check(&Limits::default(), &with_changes(&commit(vec![blob]))).is_err());
    }

    #[test]
    fn the_detector_finds_known_formats_and_not_ordinary_text() {
        // A PEM block with its end line: gitleaks' rule wants the whole block, not a header.
        let key_block = format!(
            "-----BEGIN {}PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----",
            "OPENSSH ", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
        );
        let found = |t: &str| secrets::find(t).map(|f| f.rule_id);
        assert_eq!(found(&github_token()), Some("github-pat"));
        assert_eq!(found(&key_block), Some("private-key"));
        assert_eq!(
            found(&format!(
                "xox{}-1234567890123-1234567890123-Zx8PqR2mTn4WvB6yKc1Lh3Jd",
                "b"
            )),
            Some("slack-bot-token")
        );
        assert_eq!(
            found(&format!(
                "key: AIza{}",
                "SyD9x4Kq2Lm7Np0Rt5Vw8Yb3Zc6Fg1Hj_kT"
            )),
            Some("gcp-api-key")
        );
        assert_eq!(
            found(&format!("{}_live_{}", "sk", "4eC39HqLyjWDarjtT1zdp7dc")),
            Some("stripe-access-token")
        );
        for ordinary in [
            "ghp_short",
            "see https://github.com/o/r/pull/1 and commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39",
            "AKIAlowercasenotakey",
            "-----BEGIN PUBLIC KEY-----",
            // A header alone is not a key.
            &format!("-----BEGIN {}PRIVATE KEY-----", "OPENSSH "),
        ] {
            assert_eq!(found(ordinary), None, "{ordinary}");
        }
    }

    #[test]
    fn invisible_characters_do_not_hide_a_token() {
        let token = github_token();
        let split: String = token.chars().flat_map(|c| [c, '\u{200B}']).collect();
        assert_eq!(secrets::find(&split).map(|f| f.rule_id), Some("github-pat"));
        let soft: String = token.chars().flat_map(|c| [c, '\u{00AD}']).collect();
        assert_eq!(secrets::find(&soft).map(|f| f.rule_id), Some("github-pat"));
    }

    #[test]
    fn hostile_sizes_are_checked_in_linear_time() {
        // 10 MB on one line, made of near-tokens: every position starts a candidate that fails late.
        let near = "ghp_".to_owned() + &"a".repeat(30) + " ";
        let line = near.repeat(10_000_000 / near.len());
        let mut f = file("big.txt", 1, 0);
        f.added_lines = vec![(1, line.clone())];
        let c = commit(vec![f]);
        assert_eq!(check(&Limits::default(), &with_changes(&c)), Ok(()));
        let prefixes = "AKIA".repeat(2_500_000);
        assert_eq!(secrets::find(&prefixes), None);
        let dashes = "-----BEGIN ".repeat(1_000_000);
        assert_eq!(secrets::find(&dashes), None);
        let zw = "\u{200B}".repeat(3_000_000);
        assert_eq!(secrets::find(&zw), None);
    }

    #[test]
    fn the_summary_shows_every_limit_in_force() {
        assert_eq!(
            summary(&Limits::default()),
            "limits: bodies ≤ 262144 bytes, ≤ 50 inline comments, labels: none, paths: **, \
             !.github/workflows/**, !.github/actions/**, ≤ 1000 files, ≤ 100000 lines, secrets: refused"
        );
    }

    #[test]
    fn hostile_names_are_shown_escaped() {
        let c = commit(vec![file(".github/workflows/a\nb\u{1b}[31m.yml", 1, 0)]);
        let v = refused(&Limits::default(), &with_changes(&c));
        assert!(v.to_string().contains("a\\nb\\u{1b}[31m.yml"), "{v}");
    }
}
