//! Loading trigger files: every problem in every file, each with its file, line, column and a hint.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde_saphyr::{Location, Spanned};

use super::model::{
    ASSOCIATIONS, CONCLUSIONS, ConcurrencySpec, EventFilter, EventKind, Forks, Limits, LimitsFile,
    OutputKind, OutputSpec, TriggerFile,
};
use super::pattern::{Pattern, PatternList};
use super::schedule::Schedule;
use super::{Concurrency, Filter, Trigger, samples, template};
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
pub use crate::config::AgentKinds;

pub fn load(paths: &[PathBuf], agents: Option<&AgentKinds>) -> Loaded {
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

/// Collects the problems of one file.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<Diagnostic>,
    env: Environment<'static>,
    /// A repository's trigger file, in the service: its templates are tried against the samples in a
    /// helper process (`isolate.rs`), on the budget of all the repository's files.
    apart: Option<&'a mut super::isolate::Checks>,
}

impl Checker<'_> {
    fn error(&mut self, at: Location, message: impl Into<String>, hint: Option<String>) {
        let mut d = Diagnostic::at(self.path, at, message);
        d.hint = hint;
        self.errors.push(d);
    }

    fn patterns(
        &mut self,
        list: Option<Vec<Spanned<String>>>,
        lowercase: bool,
    ) -> Option<PatternList> {
        let list = list?;
        let before = self.errors.len();
        let mut compiled = Vec::new();
        for p in &list {
            let source = if lowercase {
                p.value.to_lowercase()
            } else {
                p.value.clone()
            };
            match Pattern::parse(&source) {
                Ok(pattern) => compiled.push(pattern),
                Err(e) => self.error(p.referenced, format!("bad pattern: {}", e.message), e.hint),
            }
        }
        if list.is_empty() {
            return None;
        }
        match PatternList::new(compiled) {
            Ok(patterns) if self.errors.len() == before => Some(patterns),
            Ok(_) => None,
            Err(e) => {
                self.error(list[0].referenced, e.message, e.hint);
                None
            }
        }
    }

    fn names(
        &mut self,
        list: Option<Vec<Spanned<String>>>,
        key: &str,
        known: Option<&[&str]>,
    ) -> Option<Vec<String>> {
        let list = list?;
        for item in &list {
            if let Some(known) = known
                && !known.contains(&item.value.as_str())
            {
                let hint = did_you_mean(&item.value, known.iter().copied())
                    .or_else(|| Some(format!("one of: {}", known.join(", "))));
                self.error(
                    item.referenced,
                    format!("`{}` is not one of the {key}", item.value),
                    hint,
                );
            }
        }
        Some(list.into_iter().map(|i| i.value).collect())
    }

    fn template(&mut self, value: &Spanned<String>, what: &str) {
        if let Err((line, message)) = template::check(&self.env, &value.value) {
            let (l, c) = template_position(self.text, value, line);
            self.errors.push(
                Diagnostic::new(self.path, l, c, format!("the {what} is not a valid template: {message}")).with_hint(
                    "templates use minijinja (Jinja2) syntax: {{ event.issue.title }}, {% if ... %}...{% endif %}",
                ),
            );
        }
    }
}

/// Parses and checks one trigger file, returning every problem found in it.
pub fn load_one(
    path: &Path,
    text: &str,
    agents: Option<&AgentKinds>,
) -> Result<Trigger, Vec<Diagnostic>> {
    load_checked(path, text, agents, None)
}

/// [`load_one`] for a repository's own trigger file: in the service (`checks`), its templates are tried
/// against the samples in a helper process with limits (`isolate.rs`), as they render for events, on one
/// budget for all the repository's files.
pub fn load_repository_file(
    path: &Path,
    text: &str,
    agents: Option<&AgentKinds>,
    checks: Option<&mut super::isolate::Checks>,
) -> Result<Trigger, Vec<Diagnostic>> {
    load_checked(path, text, agents, checks)
}

fn load_checked<'a>(
    path: &'a Path,
    text: &'a str,
    agents: Option<&AgentKinds>,
    apart: Option<&'a mut super::isolate::Checks>,
) -> Result<Trigger, Vec<Diagnostic>> {
    let file: TriggerFile = yaml::from_str(path, text).map_err(|d| vec![d])?;
    let mut c = Checker {
        path,
        text,
        errors: Vec::new(),
        env: template::environment(),
        apart,
    };

    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        c.errors.push(
            Diagnostic::new(path, 1, 1, format!("`{name}` cannot name a trigger"))
                .with_hint("the file name names the trigger and its branches: use letters, digits, `-`, `_` and `.`"),
        );
    }

    let on_at = file.on.referenced;
    let on = file.on.value;
    if on.events.is_empty() && on.schedule.is_empty() {
        c.error(on_at, "`on` lists no event", None);
    }
    let mut events = HashMap::new();
    for (kind, filter) in on.events {
        if let Some(filter) = check_filter(&mut c, kind, filter) {
            events.insert(kind, filter);
        }
    }
    let mut schedules = Vec::new();
    for entry in &on.schedule {
        match Schedule::parse(
            &entry.cron.value,
            entry.timezone.as_ref().map(|t| t.value.as_str()),
        ) {
            Ok(s) => schedules.push(s),
            Err(e) => {
                let tz = entry.timezone.as_ref();
                match tz {
                    Some(tz) if e.message.contains("time zone") => {
                        c.error(tz.referenced, e.message, e.hint)
                    }
                    _ => {
                        c.error(entry.cron.referenced, e.message, e.hint);
                        // The cron was wrong; say so about the time zone too, if it is.
                        if let Some(tz) = tz
                            && let Err(e) = super::schedule::time_zone(&tz.value)
                        {
                            c.error(tz.referenced, e.message, e.hint);
                        }
                    }
                }
            }
        }
    }
    if !on.schedule.is_empty() && file.repos.is_none() {
        c.error(
            on_at,
            "a schedule needs `repos`: a scheduled job has no event to say which repository it is for",
            Some("add e.g. repos: [acme/api]".to_owned()),
        );
    }

    let repos = file.repos.and_then(|list| {
        for r in &list {
            if !r.value.contains('/') {
                c.error(
                    r.referenced,
                    format!("`{}` is not an owner/name pattern", r.value),
                    Some("write e.g. acme/api or acme/*".into()),
                );
            }
        }
        c.patterns(Some(list), true)
    });

    if let Some(condition) = &file.condition
        && let Err(e) = template::check_expression(&c.env, &condition.value)
    {
        c.error(
            condition.referenced,
            format!("`if` is not a valid expression: {e}"),
            Some("`if` is a minijinja expression, e.g. `not event.pull_request.draft`".into()),
        );
    }

    let output = file
        .output
        .map(|o| (o.referenced, o.value))
        .unwrap_or((on_at, OutputSpec::default()));
    check_output(&mut c, output.0, &output.1, !on.schedule.is_empty());
    let (output_at, output) = output;

    let from = file.from.map(|w| w.value.names(w.referenced));
    let from_at = from.as_ref().and_then(|l| l.first().map(|a| a.referenced));
    let from = match from {
        None => Some(TRUSTED.iter().map(|a| a.to_string()).collect()),
        Some(list) if list.iter().any(|a| a.value == "anyone") => {
            if list.len() > 1 {
                c.error(
                    list[0].referenced,
                    "`anyone` already includes every association",
                    Some("write `from: anyone` alone, or list the associations".into()),
                );
            }
            None
        }
        Some(list) if list.is_empty() => {
            c.error(
                on_at,
                "`from` lists nobody, so the trigger could never fire",
                Some(
                    "leave `from` out for OWNER, MEMBER, COLLABORATOR, or write `from: anyone`"
                        .into(),
                ),
            );
            None
        }
        Some(list) => {
            let mut known = ASSOCIATIONS.to_vec();
            known.push("anyone");
            c.names(Some(list), "author associations", Some(&known))
        }
    };
    let from_bots = file
        .from_bots
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| {
            let valid = !b.value.is_empty()
                && b.value
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '[' | ']'));
            if !valid {
                c.error(
                    b.referenced,
                    format!("`{}` is not a GitHub login", b.value),
                    Some("name the bot by its login, e.g. renovate[bot]".into()),
                );
                return None;
            }
            Some(b.value.to_lowercase())
        })
        .collect::<Vec<_>>();
    let forks = match file.forks {
        None if output.kind.writes_code() => Forks::Skip,
        None => Forks::ReadOnly,
        Some(f) => {
            if output.kind.writes_code() && f.value != Forks::Skip {
                c.error(
                    f.referenced,
                    format!(
                        "`forks: {}` cannot go with output pull_request: a fork's commits are never pushed into the repository",
                        f.value.name()
                    ),
                    Some("leave `forks` out (skip), or use output comment or review for forks' pull requests".into()),
                );
            }
            f.value
        }
    };

    if let Some(agents) = agents
        && agents.get(&file.agent.value) == Some(&"openai")
        && output.kind == OutputKind::PullRequest
    {
        c.error(
            output_at,
            format!(
                "agent `{}` is a model endpoint: it answers but cannot change files, so it cannot make a pull request",
                file.agent.value
            ),
            Some("use a command, codex or claude agent, or output: comment, review, issue or check_run".into()),
        );
    }
    if agents.is_some_and(|a| a.token_auth) && output.kind == OutputKind::CheckRun {
        c.error(
            output_at,
            "output `check_run` needs a GitHub App: GitHub does not let a personal token create check runs",
            Some("run nightshift as a GitHub App (github.app_id and private_key), or use output: comment, review or issue".into()),
        );
    }
    if let Some(agents) = agents
        && !agents.contains_key(&file.agent.value)
    {
        let hint =
            did_you_mean(&file.agent.value, agents.keys().map(String::as_str)).or_else(|| {
                let defined = agents.keys().cloned().collect::<Vec<_>>().join(", ");
                Some(format!(
                    "profiles defined: {}",
                    if defined.is_empty() { "none" } else { &defined }
                ))
            });
        c.error(
            file.agent.referenced,
            format!(
                "agent `{}` is not a profile in the service config",
                file.agent.value
            ),
            hint,
        );
    }

    c.template(&file.prompt, "prompt");
    let concurrency = file.concurrency.map(
        |ConcurrencySpec {
             group,
             cancel_in_progress,
         }| {
            c.template(&group, "concurrency group");
            Concurrency {
                group: group.value,
                cancel_in_progress,
            }
        },
    );
    let timeout = file
        .timeout
        .and_then(|t| match humantime::parse_duration(&t.value) {
            Ok(d) => Some(d),
            Err(_) => {
                c.error(
                    t.referenced,
                    format!("`{}` is not a duration", t.value),
                    Some("write e.g. 90s, 20m, 1h".into()),
                );
                None
            }
        });

    if let (Some(turns), Some(agents)) = (&file.max_turns, agents)
        && let Some(kind) = agents.get(&file.agent.value)
        && *kind != "claude"
    {
        c.error(
            turns.referenced,
            format!(
                "agent `{}` runs {kind}, which cannot keep a turn limit",
                file.agent.value
            ),
            Some("max_turns works with claude agents; a timeout works with all".into()),
        );
    }

    let limits = match file.limits.map(LimitsFile::check) {
        None => Limits::default(),
        Some(Ok(limits)) => limits,
        Some(Err(problems)) => {
            for (at, message, hint) in problems {
                c.error(at, format!("limits: {message}"), hint);
            }
            Limits::default()
        }
    };

    let verify = file
        .verify
        .and_then(|list| match super::verify::check_steps(list) {
            Ok(steps) => Some(steps),
            Err(problems) => {
                for (at, message, hint) in problems {
                    c.error(at, message, hint);
                }
                None
            }
        });
    let verify_rounds =
        file.verify_rounds.as_ref().and_then(|r| {
            match super::verify::check_rounds(r, "verify_rounds") {
                Ok(r) => Some(r),
                Err((at, message, hint)) => {
                    c.error(at, message, hint);
                    None
                }
            }
        });
    let verify_fail = match file.verify_fail {
        None => super::verify::VerifyFail::Fail,
        Some(f) => {
            if f.value == super::verify::VerifyFail::Draft && output.kind != OutputKind::PullRequest
            {
                c.error(
                    f.referenced,
                    format!(
                        "`verify_fail: draft` needs output pull_request, and this trigger's output is `{}`",
                        output.kind
                    ),
                    Some("only a pull request can be opened as a draft; remove it, or write verify_fail: fail".into()),
                );
            }
            f.value
        }
    };

    if c.errors.is_empty() {
        let trigger = Trigger {
            name,
            path: path.to_owned(),
            description: file.description,
            events,
            schedules,
            repos,
            condition: file.condition.as_ref().map(|s| s.value.clone()),
            from,
            from_bots,
            from_self: file.from_self,
            forks,
            agent: file.agent.value.clone(),
            skills: file.skills.map(|s| s.value),
            prompt: file.prompt.value.clone(),
            output,
            concurrency,
            timeout,
            max_turns: file.max_turns.map(|t| t.value),
            max_output: file.max_output,
            progress: file.progress.unwrap_or(true),
            max_depth: file.max_depth.map(|d| d.value),
            limits,
            verify,
            verify_rounds,
            verify_fail,
            warnings: Vec::new(),
        };
        check_against_samples(&mut c, &trigger, &file.prompt, file.condition.as_ref());
        if c.errors.is_empty() {
            let mut trigger = trigger;
            trigger.warnings = warnings(path, &trigger, from_at.unwrap_or(on_at), agents);
            return Ok(trigger);
        }
    }
    Err(c.errors)
}

/// The associations trusted when a trigger does not say: people with write access.
pub const TRUSTED: [&str; 3] = ["OWNER", "MEMBER", "COLLABORATOR"];

/// Associations of people with no standing in the repository: strangers.
const STRANGERS: [&str; 4] = ["NONE", "FIRST_TIMER", "FIRST_TIME_CONTRIBUTOR", "MANNEQUIN"];

/// What `check` and `serve` warn about in a valid trigger: one that anyone (or any stranger) can set off
/// and that runs an agent able to execute tools (command, codex, claude).
fn warnings(
    path: &Path,
    trigger: &Trigger,
    at: Location,
    agents: Option<&AgentKinds>,
) -> Vec<String> {
    let mut found = Vec::new();
    let kind = agents.and_then(|a| a.get(&trigger.agent)).copied();
    let runs_tools = kind.is_none_or(|k| k != "openai");
    let open = match &trigger.from {
        None => true,
        Some(from) => from.iter().any(|a| STRANGERS.contains(&a.as_str())),
    };
    if open && !trigger.events.is_empty() && runs_tools {
        found.push(format!(
            "{}:{}:{}: warning: anyone can set off trigger `{}`, and agent `{}`{} can run tools on what they write\n  hint: list who may with `from` (e.g. from: [OWNER, MEMBER, COLLABORATOR]), or use an openai agent",
            path.display(),
            at.line(),
            at.column(),
            trigger.name,
            trigger.agent,
            kind.map(|k| format!(" ({k})")).unwrap_or_default(),
        ));
    }
    found
}

fn check_output(c: &mut Checker<'_>, at: Location, output: &OutputSpec, scheduled: bool) {
    let o = &output.options;
    let kind = output.kind;
    let misplaced = [
        (
            "title",
            o.title.is_some(),
            &[OutputKind::PullRequest, OutputKind::Issue][..],
        ),
        ("draft", o.draft.is_some(), &[OutputKind::PullRequest][..]),
        (
            "labels",
            o.labels.is_some(),
            &[OutputKind::PullRequest, OutputKind::Issue][..],
        ),
        ("name", o.name.is_some(), &[OutputKind::CheckRun][..]),
        ("body", o.body.is_some(), &[OutputKind::PullRequest][..]),
        ("dedupe", o.dedupe.is_some(), &[OutputKind::Issue][..]),
    ];
    for (key, set, allowed) in misplaced {
        if set && !allowed.contains(&kind) {
            let names: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
            c.error(
                at,
                format!("output option `{key}` does not apply to `{kind}`"),
                Some(format!("it applies to {}", names.join(", "))),
            );
        }
    }
    for (what, source) in [
        ("title", &o.title),
        ("body", &o.body),
        ("dedupe key", &o.dedupe),
    ] {
        if let Some(source) = source
            && let Err((_, message)) = template::check(&c.env, source)
        {
            c.error(
                at,
                format!("the output {what} is not a valid template: {message}"),
                Some("templates use minijinja (Jinja2) syntax: {{ event.issue.number }}".into()),
            );
        }
    }
    if scheduled && matches!(kind, OutputKind::Comment | OutputKind::Review) {
        c.error(
            at,
            format!(
                "a scheduled job has no issue or pull request, so its output cannot be `{kind}`"
            ),
            Some("use output: issue, pull_request or check_run".into()),
        );
    }
}

fn check_filter(c: &mut Checker<'_>, kind: EventKind, filter: EventFilter) -> Option<Filter> {
    let before = c.errors.len();
    for (key, at) in filter.keys() {
        if !kind.filters().contains(&key) {
            let names: Vec<&str> = kind.filters().iter().map(|k| k.name()).collect();
            let applies: Vec<&str> = EventKind::ALL
                .iter()
                .filter(|k| k.filters().contains(&key))
                .map(|k| k.name())
                .collect();
            let hint = if names.is_empty() {
                format!(
                    "`{}` takes no filters; `{}` applies to {}",
                    kind.name(),
                    key.name(),
                    applies.join(", ")
                )
            } else {
                format!(
                    "`{}` takes {}; `{}` applies to {}",
                    kind.name(),
                    names.join(", "),
                    key.name(),
                    applies.join(", ")
                )
            };
            let message = format!("`{}` does not apply to `{}`", key.name(), kind.name());
            match at {
                Some(at) => c.error(at, message, Some(hint)),
                None => c
                    .errors
                    .push(Diagnostic::new(c.path, 1, 1, message).with_hint(hint)),
            }
        }
    }
    let first =
        |l: &Option<Vec<Spanned<String>>>| l.as_ref().and_then(|v| v.first().map(|s| s.referenced));
    let pairs = [
        (
            filter.branches.is_some(),
            first(&filter.branches_ignore),
            "branches",
        ),
        (filter.tags.is_some(), first(&filter.tags_ignore), "tags"),
        (filter.paths.is_some(), first(&filter.paths_ignore), "paths"),
    ];
    for (included, ignored, key) in pairs {
        if let (true, Some(at)) = (included, ignored) {
            c.error(
                at,
                format!("`{}` has both `{key}` and `{key}-ignore`", kind.name()),
                Some(format!(
                    "use `{key}` with `!pattern` entries to include and exclude"
                )),
            );
        }
    }
    let types = match filter.types {
        None => kind.default_types().iter().map(|s| s.to_string()).collect(),
        Some(types) => {
            for t in &types {
                if !kind.activity_types().contains(&t.value.as_str()) {
                    let hint = did_you_mean(&t.value, kind.activity_types().iter().copied())
                        .or_else(|| Some(format!("one of: {}", kind.activity_types().join(", "))));
                    c.error(
                        t.referenced,
                        format!("`{}` is not an activity type of `{}`", t.value, kind.name()),
                        hint,
                    );
                }
            }
            types.into_iter().map(|t| t.value).collect()
        }
    };
    let command = filter.command.map(|cmd| {
        let valid = cmd.value.starts_with('/')
            && cmd.value.len() > 1
            && !cmd.value.contains(char::is_whitespace);
        if !valid {
            c.error(
                cmd.referenced,
                format!("`{}` is not a slash command", cmd.value),
                Some("write it as one word that starts with `/`, e.g. /review".into()),
            );
        }
        cmd.value.to_lowercase()
    });
    let built = Filter {
        types,
        branches: c.patterns(filter.branches, false),
        branches_ignore: c.patterns(filter.branches_ignore, false),
        tags: c.patterns(filter.tags, false),
        tags_ignore: c.patterns(filter.tags_ignore, false),
        paths: c.patterns(filter.paths, false),
        paths_ignore: c.patterns(filter.paths_ignore, false),
        labels: c.names(filter.labels, "labels", None),
        conclusions: c.names(filter.conclusions, "conclusions", Some(CONCLUSIONS)),
        workflows: c.names(filter.workflows, "workflows", None),
        command,
    };
    (c.errors.len() == before).then_some(built)
}

/// Renders the templates against a real payload of every event and type the trigger fires on, so a value
/// that does not exist in that event (`event.pull_request` in an `issues` trigger) is caught now.
fn check_against_samples(
    c: &mut Checker<'_>,
    trigger: &Trigger,
    prompt: &Spanned<String>,
    condition: Option<&Spanned<String>>,
) {
    let command = template::Command {
        name: "/command".into(),
        args: "arguments".into(),
    };
    let scheduled =
        (!trigger.schedules.is_empty()).then(|| (EventKind::Schedule, super::Filter::default()));
    for (kind, filter) in trigger
        .events
        .iter()
        .map(|(k, f)| (*k, f.clone()))
        .chain(scheduled)
    {
        // Octokit's examples are real but not always complete, so a template is wrong for an event only when
        // it fails on every sample of the types the trigger fires on.
        let mut first_failure = None;
        let mut passed = false;
        let mut seen = BTreeSet::new();
        for (event, action, parsed) in samples::parsed() {
            let fires = *event == kind.name()
                && (filter.types.is_empty() || filter.types.iter().any(|t| t == action));
            if !fires || !seen.insert(*action) {
                continue;
            }
            let sample_command = filter.command.as_ref().map(|_| &command);
            let shape = if action.is_empty() {
                event.to_string()
            } else {
                format!("{event}.{action}")
            };
            let session = c
                .apart
                .as_deref_mut()
                .map(|checks| checks.against(&parsed.payload, template::repo_of(parsed)));
            // The prompt is rendered only when the `if` did not fail.
            let renders = |if_true: &Option<Result<bool, String>>| !matches!(if_true, Some(Err(_)));
            let (if_true, rendered) = match session {
                Some(session) => {
                    let if_true =
                        condition.map(|cond| session.is_true(&cond.value, sample_command));
                    let rendered = renders(&if_true)
                        .then(|| session.render_at(false, &prompt.value, sample_command));
                    (if_true, rendered)
                }
                None => {
                    let ctx = template::context(parsed, sample_command);
                    let if_true =
                        condition.map(|cond| template::is_true(&c.env, &cond.value, &ctx));
                    let rendered =
                        renders(&if_true).then(|| template::render_at(&c.env, &prompt.value, &ctx));
                    (if_true, rendered)
                }
            };
            let failure = match if_true {
                Some(Err(e)) => {
                    let cond = condition.expect("checked above");
                    Some(Diagnostic::at(
                        c.path,
                        cond.referenced,
                        format!("`if` fails for event `{shape}`: {e}"),
                    ))
                }
                _ => rendered.and_then(Result::err).map(|(line, e)| {
                    let (l, col) = template_position(c.text, prompt, line);
                    Diagnostic::new(
                        c.path,
                        l,
                        col,
                        format!("the prompt fails for event `{shape}`: {e}"),
                    )
                }),
            };
            // No helper could be had: nothing more can be checked (the read fails, `repo.rs`).
            if c.apart
                .as_deref()
                .is_some_and(|s| s.unavailable().is_some())
            {
                return;
            }
            // A renderer stopped by its limits refuses the file, whatever the other samples did.
            if let Some(why) = c.apart.as_deref().and_then(|s| s.stopped()) {
                let (line, col) = template_position(c.text, prompt, 1);
                c.errors.push(Diagnostic::new(
                    c.path,
                    line,
                    col,
                    format!(
                        "checking the templates against GitHub's sample payloads failed: {why}"
                    ),
                ));
                return;
            }
            match failure {
                None => passed = true,
                Some(d) => {
                    first_failure.get_or_insert(d);
                }
            }
        }
        if let (false, Some(d)) = (passed, first_failure) {
            c.errors.push(d.with_hint(guard_hint()));
            return;
        }
    }
}

fn guard_hint() -> String {
    "that value is not in this event's payload; check the name, or guard it with `{% if event.x is defined %}`".into()
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

    fn agents() -> AgentKinds {
        [
            ("default".to_owned(), "command"),
            ("fixer".to_owned(), "codex"),
            ("chat".to_owned(), "openai"),
        ]
        .into()
    }

    fn errors(text: &str) -> Vec<String> {
        load_one(Path::new("triggers/t.yml"), text, Some(&agents()))
            .map(|_| Vec::new())
            .unwrap_or_else(|ds| ds.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn with_a_token_a_check_run_output_is_refused_and_other_outputs_are_not() {
        let mut token = agents();
        token.token_auth = true;
        let check = "on: push\nagent: default\nprompt: x\noutput: {type: check_run, name: lint}\n";
        let ds = load_one(Path::new("triggers/t.yml"), check, Some(&token)).unwrap_err();
        let ds: Vec<String> = ds.iter().map(ToString::to_string).collect();
        assert_eq!(
            ds,
            [
                "triggers/t.yml:4:9: error: output `check_run` needs a GitHub App: GitHub does not let a \
              personal token create check runs\n  hint: run nightshift as a GitHub App (github.app_id \
              and private_key), or use output: comment, review or issue"
            ]
        );
        // As an App (or with no config at hand), the same file loads.
        assert!(errors(check).is_empty());
        assert!(load_one(Path::new("triggers/t.yml"), check, None).is_ok());
        for output in ["comment", "review", "issue", "pull_request"] {
            let text = format!("on: pull_request\nagent: default\nprompt: x\noutput: {output}\n");
            assert!(
                load_one(Path::new("triggers/t.yml"), &text, Some(&token)).is_ok(),
                "{output}"
            );
        }
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
        assert_eq!(t.output.kind, OutputKind::Comment);
        assert_eq!(
            t.from.unwrap(),
            TRUSTED,
            "every trigger defaults to trusted authors"
        );
        assert_eq!(t.forks, Forks::ReadOnly);
        assert!(t.warnings.is_empty());
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
    fn writing_triggers_default_to_trusted_authors() {
        let t = load_one(
            Path::new("a.yml"),
            "on: issues\nagent: x\nprompt: x\noutput: pull_request\n",
            None,
        )
        .unwrap();
        assert_eq!(t.from.unwrap(), ["OWNER", "MEMBER", "COLLABORATOR"]);
        let t = load_one(
            Path::new("a.yml"),
            "on: issues\nagent: x\nprompt: x\noutput: pull_request\nfrom: [anyone]\n",
            None,
        )
        .unwrap();
        assert_eq!(t.from, None);
    }

    #[test]
    fn from_anyone_widens_it_and_check_warns_about_tools() {
        let open = |agent: &str| {
            load_one(
                Path::new("triggers/t.yml"),
                &format!("on: issues\nfrom: anyone\nagent: {agent}\nprompt: x\n"),
                Some(&agents()),
            )
            .unwrap()
        };
        let t = open("fixer");
        assert_eq!(t.from, None);
        assert_eq!(
            t.warnings,
            [
                "triggers/t.yml:2:7: warning: anyone can set off trigger `t`, and agent `fixer` (codex) can run tools on what they write\n  hint: list who may with `from` (e.g. from: [OWNER, MEMBER, COLLABORATOR]), or use an openai agent"
            ]
        );
        assert!(
            open("chat").warnings.is_empty(),
            "a model endpoint runs no tools"
        );
        let t = load_one(
            Path::new("a.yml"),
            "on: issues\nfrom: NONE\nagent: x\nprompt: x\n",
            None,
        )
        .unwrap();
        assert_eq!(t.from.unwrap(), ["NONE"]);
        assert_eq!(
            t.warnings.len(),
            1,
            "NONE is anyone without ties to the repository"
        );
        let found = errors("on: issues\nfrom: [anyone, OWNER]\nagent: default\nprompt: x\n");
        assert!(
            found[0].contains("`anyone` already includes every association"),
            "{found:?}"
        );
        let found = errors("on: issues\nfrom_bots: ['not a login']\nagent: default\nprompt: x\n");
        assert!(
            found[0].starts_with("triggers/t.yml:2:13: error: `not a login` is not a GitHub login"),
            "{found:?}"
        );
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
    fn values_missing_from_the_events_payload_are_caught() {
        let found = errors(
            "on:\n  issues:\n    types: [opened]\nagent: default\nprompt: |\n  ok {{ event.issue.title }}\n  {{ event.pull_request.title }}\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("triggers/t.yml:7:3: error: the prompt fails for event `issues.opened`: undefined value"), "{}", found[0]);
        assert!(errors("on:\n  issues:\n    types: [labeled]\nagent: default\nprompt: \"{{ event.label.name }}\"\n").is_empty());
        let found = errors("on: issues\nagent: default\nprompt: x\nif: event.nope.x\n");
        assert!(
            found[0].contains("`if` fails for event `issues."),
            "{found:?}"
        );
        assert!(errors("on: issues\nagent: default\nprompt: \"{% if event.label is defined %}{{ event.label.name }}{% endif %}\"\n").is_empty());
    }

    #[test]
    fn structural_mistakes_name_line_column_and_hint() {
        let found = errors("on:\n  issues:\n    typs: [opened]\nagent: default\nprompt: x\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("triggers/t.yml:3:5: error: unknown field `typs`"),
            "{}",
            found[0]
        );
        assert!(
            found[0].ends_with("hint: did you mean `types`?"),
            "{}",
            found[0]
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
            found[0].starts_with("triggers/t.yml:4:1: error: unknown variant `pr`"),
            "{}",
            found[0]
        );
        let found = errors("on: issues\nprompt: x\n");
        assert!(found[0].contains("missing field `agent`"), "{}", found[0]);
    }

    #[test]
    fn filters_must_apply_to_their_event() {
        let found = errors("on:\n  issues:\n    branches: [main]\nagent: default\nprompt: x\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .starts_with("triggers/t.yml:3:16: error: `branches` does not apply to `issues`"),
            "{}",
            found[0]
        );
        assert!(
            found[0]
                .contains("hint: `issues` takes types, labels; `branches` applies to pull_request"),
            "{}",
            found[0]
        );
        let found =
            errors("on:\n  check_run:\n    conclusions: [failed]\nagent: default\nprompt: x\n");
        assert!(
            found[0].contains(
                "`failed` is not one of the conclusions\n  hint: did you mean `failure`?"
            ),
            "{found:?}"
        );
        let found =
            errors("on:\n  issue_comment:\n    command: review\nagent: default\nprompt: x\n");
        assert!(
            found[0].contains("`review` is not a slash command"),
            "{found:?}"
        );
        let found = errors(
            "on:\n  push:\n    paths: [a]\n    paths-ignore: [b]\nagent: default\nprompt: x\n",
        );
        assert!(
            found[0].contains("has both `paths` and `paths-ignore`"),
            "{found:?}"
        );
    }

    #[test]
    fn max_turns_is_for_agents_that_can_keep_it() {
        let mut agents = agents();
        agents.insert("claude".into(), "claude");
        let check = |text: &str| {
            load_one(Path::new("triggers/t.yml"), text, Some(&agents))
                .map(|t| t.max_turns)
                .map_err(|ds| ds.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            check("on: issues\nagent: claude\nprompt: x\nmax_turns: 12\n"),
            Ok(Some(12))
        );
        let found = check("on: issues\nagent: fixer\nprompt: x\nmax_turns: 12\n").unwrap_err();
        assert_eq!(
            found,
            [
                "triggers/t.yml:4:12: error: agent `fixer` runs codex, which cannot keep a turn limit\n  hint: max_turns works with claude agents; a timeout works with all"
            ]
        );
    }

    #[test]
    fn a_model_endpoint_cannot_make_a_pull_request() {
        let found = errors("on: issues\nagent: chat\nprompt: x\noutput: pull_request\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("triggers/t.yml:4:9: error: agent `chat` is a model endpoint"),
            "{found:?}"
        );
        assert!(errors("on: issues\nagent: chat\nprompt: x\noutput: comment\n").is_empty());
        assert!(errors("on: issues\nagent: fixer\nprompt: x\noutput: pull_request\n").is_empty());
    }

    #[test]
    fn schedules_check_cron_zone_repos_and_output() {
        let found = errors(
            "on:\n  schedule:\n    - cron: '0 25 * * *'\n      timezone: Mars/Base\nagent: default\nprompt: x\noutput: comment\n",
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with(
                "triggers/t.yml:3:13: error: cron `0 25 * * *`: field 2 (hour) `25` is not valid"
            ),
            "{}",
            found[0]
        );
        assert!(
            found[1].starts_with("triggers/t.yml:4:17: error: `Mars/Base` is not a time zone"),
            "{}",
            found[1]
        );
        assert!(found[2].contains("needs `repos`"), "{}", found[2]);
        assert!(
            found[3].contains(":7:9: error: a scheduled job has no issue or pull request"),
            "{}",
            found[3]
        );
        let ok = load_one(
            Path::new("nightly.yml"),
            "on:\n  schedule:\n    - cron: '0 3 * * 1-5'\n      timezone: Europe/Berlin\nrepos: [acme/api]\nagent: default\nprompt: x\noutput: issue\n",
            Some(&agents()),
        )
        .unwrap();
        assert_eq!(ok.schedules.len(), 1);
    }

    #[test]
    fn output_options_must_fit_the_output() {
        let found = errors(
            "on: pull_request\nagent: default\nprompt: x\noutput:\n  type: comment\n  draft: true\n",
        );
        assert!(
            found[0].starts_with(
                "triggers/t.yml:5:3: error: output option `draft` does not apply to `comment`"
            ),
            "{found:?}"
        );
        let t = load_one(
            Path::new("a.yml"),
            "on: issues\nagent: x\nprompt: x\noutput:\n  type: pull_request\n  title: 'Fix #{{ event.issue.number }}'\n  draft: true\n",
            None,
        )
        .unwrap();
        assert_eq!(
            (t.output.kind, t.output.options.draft),
            (OutputKind::PullRequest, Some(true))
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
