//! Trigger files: loading and checking them ([`load`]), and deciding which fire for an event
//! ([`TriggerSet::evaluate`]): each filter in GitHub's order, and for a trigger that does not fire, the
//! first filter that stopped it.

pub mod load;
pub mod model;
pub mod pattern;
pub mod reload;
pub mod repo;
pub mod samples;
pub mod schedule;
pub mod template;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use minijinja::{Environment, Value};

use crate::queue::JobSpec;
use crate::source::event::Event;
pub use model::{EventKind, OutputKind, OutputOptions, OutputSpec, Skills};
use pattern::PatternList;
pub use schedule::Schedule;

/// A checked trigger, ready to match.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// The file name without extension; it names jobs and branches.
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub events: HashMap<EventKind, Filter>,
    pub schedules: Vec<Schedule>,
    /// `owner/name` patterns, matched case-insensitively; None for every repository.
    pub repos: Option<PatternList>,
    pub condition: Option<String>,
    /// Author associations allowed to set it off; None for anyone.
    pub from: Option<Vec<String>>,
    pub from_self: bool,
    pub agent: String,
    pub skills: Option<Skills>,
    pub prompt: String,
    pub output: OutputSpec,
    pub concurrency: Option<Concurrency>,
    pub timeout: Option<Duration>,
    pub max_turns: Option<u32>,
    pub max_output: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Concurrency {
    pub group: String,
    pub cancel_in_progress: bool,
}

/// The checked filters under one event.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Activity types; empty for events without types (push, schedule).
    pub types: Vec<String>,
    pub branches: Option<PatternList>,
    pub branches_ignore: Option<PatternList>,
    pub tags: Option<PatternList>,
    pub tags_ignore: Option<PatternList>,
    pub paths: Option<PatternList>,
    pub paths_ignore: Option<PatternList>,
    pub labels: Option<Vec<String>>,
    pub conclusions: Option<Vec<String>>,
    pub workflows: Option<Vec<String>>,
    /// Lowercase, with its slash.
    pub command: Option<String>,
}

impl Filter {
    pub fn needs_changed_files(&self) -> bool {
        self.paths.is_some() || self.paths_ignore.is_some()
    }
}

/// Why a trigger did not fire for an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

/// What a trigger made of an event: a job to run (or the error that stopped preparing it), or the first
/// filter that stopped it.
#[derive(Debug)]
pub enum Decision {
    Fire(Result<Box<JobSpec>, String>),
    Skip(Skip),
}

/// What matching knows besides the payload.
#[derive(Clone, Debug, Default)]
pub struct MatchInput {
    /// The pull request's changed files (from the API), for `paths` filters on pull_request events.
    pub changed_files: Option<Vec<String>>,
    /// nightshift's own login on GitHub (e.g. `my-app[bot]`), whose events do not fire triggers.
    pub bot_login: Option<String>,
}

/// GitHub considers only the first 300 changed files for path filters.
pub const MAX_CHANGED_FILES: usize = 300;

/// All loaded triggers, indexed by event and by repository.
pub struct TriggerSet {
    triggers: Vec<Trigger>,
    /// Triggers listing literal repositories, by event and lowercase `owner/name`.
    by_repo: HashMap<(EventKind, String), Vec<usize>>,
    /// Triggers for every repository, or for repository patterns, by event.
    by_event: HashMap<EventKind, Vec<usize>>,
    env: Environment<'static>,
}

impl TriggerSet {
    pub fn new(triggers: Vec<Trigger>) -> TriggerSet {
        let mut by_repo: HashMap<(EventKind, String), Vec<usize>> = HashMap::new();
        let mut by_event: HashMap<EventKind, Vec<usize>> = HashMap::new();
        for (i, t) in triggers.iter().enumerate() {
            let kinds = t
                .events
                .keys()
                .copied()
                .chain((!t.schedules.is_empty()).then_some(EventKind::Schedule));
            let literal = t.repos.as_ref().and_then(PatternList::literals);
            for kind in kinds {
                match &literal {
                    Some(repos) => {
                        for repo in repos {
                            by_repo
                                .entry((kind, repo.to_lowercase()))
                                .or_default()
                                .push(i);
                        }
                    }
                    None => by_event.entry(kind).or_default().push(i),
                }
            }
        }
        TriggerSet {
            triggers,
            by_repo,
            by_event,
            env: template::environment(),
        }
    }

    pub fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }

    /// The triggers that may fire for an event of `kind` in `repo` (a superset; filters decide).
    pub fn candidates(&self, kind: EventKind, repo: &str) -> impl Iterator<Item = &Trigger> {
        let literal = self.by_repo.get(&(kind, repo.to_lowercase()));
        let mut idx: Vec<usize> = literal
            .into_iter()
            .flatten()
            .chain(self.by_event.get(&kind).into_iter().flatten())
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| &self.triggers[i])
    }

    /// Whether any trigger that may fire for this event filters on changed files it does not carry.
    pub fn needs_changed_files(&self, event: &Event) -> bool {
        let (Some(kind), Some(repo)) = (EventKind::from_name(&event.name), &event.repository)
        else {
            return false;
        };
        kind == EventKind::PullRequest
            && self
                .candidates(kind, &repo.full_name.to_string())
                .any(|t| t.events.get(&kind).is_some_and(Filter::needs_changed_files))
    }

    /// Every trigger's decision for `event`: the ones that fire, and why each other one did not.
    pub fn decide<'a>(&'a self, event: &Event, input: &MatchInput) -> Vec<(&'a Trigger, Decision)> {
        let ctx = OnceCell::new();
        self.triggers
            .iter()
            .map(|t| (t, self.evaluate_with(t, event, input, &ctx)))
            .collect()
    }

    /// The triggers that fire for `event`, each with its rendered job (or the error that stopped it).
    pub fn fired<'a>(
        &'a self,
        event: &Event,
        input: &MatchInput,
    ) -> Vec<(&'a Trigger, Result<Box<JobSpec>, String>)> {
        let (Some(kind), Some(repo)) = (EventKind::from_name(&event.name), &event.repository)
        else {
            return Vec::new();
        };
        let ctx = OnceCell::new();
        self.candidates(kind, &repo.full_name.to_string())
            .filter_map(|t| match self.evaluate_with(t, event, input, &ctx) {
                Decision::Fire(job) => Some((t, job)),
                Decision::Skip(_) => None,
            })
            .collect()
    }

    /// What `trigger` makes of `event`.
    pub fn evaluate(&self, trigger: &Trigger, event: &Event, input: &MatchInput) -> Decision {
        self.evaluate_with(trigger, event, input, &OnceCell::new())
    }

    fn evaluate_with(
        &self,
        trigger: &Trigger,
        event: &Event,
        input: &MatchInput,
        ctx: &OnceCell<Value>,
    ) -> Decision {
        match self.check_filters(trigger, event, input) {
            Err(skip) => Decision::Skip(skip),
            Ok(command) => {
                let ctx = ctx.get_or_init(|| template::context(event, None));
                let ctx = match &command {
                    Some(cmd) => template::with_command(ctx, cmd),
                    None => ctx.clone(),
                };
                if let Some(condition) = &trigger.condition {
                    match template::is_true(&self.env, condition, &ctx) {
                        Ok(true) => {}
                        Ok(false) => {
                            return Decision::Skip(Skip(format!("`if: {condition}` is false")));
                        }
                        Err(e) => {
                            return Decision::Fire(Err(format!(
                                "the `if` of trigger `{}` failed: {e}",
                                trigger.name
                            )));
                        }
                    }
                }
                Decision::Fire(self.prepare(trigger, event, &ctx).map(Box::new))
            }
        }
    }

    /// Runs every filter in order; the first that stops the trigger says why. On success returns the slash
    /// command the comment carried, if the trigger has one.
    fn check_filters(
        &self,
        trigger: &Trigger,
        event: &Event,
        input: &MatchInput,
    ) -> Result<Option<template::Command>, Skip> {
        let skip = |reason: String| Err(Skip(reason));
        let Some(kind) = EventKind::from_name(&event.name) else {
            return skip(format!(
                "`{}` is not an event nightshift triggers on",
                event.name
            ));
        };
        if kind == EventKind::Schedule {
            return check_schedule(trigger, event);
        }
        let Some(filter) = trigger.events.get(&kind) else {
            return skip(format!("it does not trigger on `{}`", event.name));
        };
        let Some(repository) = &event.repository else {
            return skip("the event has no repository".to_owned());
        };
        if let Some(repos) = &trigger.repos
            && !repos.matches(&repository.full_name.to_string().to_lowercase())
        {
            return skip(format!(
                "repository {} is not in repos {:?}",
                repository.full_name,
                repos.sources()
            ));
        }
        if !filter.types.is_empty() {
            let action = event.action.as_deref().unwrap_or_default();
            if !filter.types.iter().any(|t| t == action) {
                return skip(format!(
                    "type `{action}` is not one of types [{}]",
                    filter.types.join(", ")
                ));
            }
        }
        if !trigger.from_self && is_from_nightshift(event, input.bot_login.as_deref()) {
            return skip(
                "nightshift caused this event itself (set `from_self: true` to allow it)"
                    .to_owned(),
            );
        }
        if let (Some(allowed), Some(association)) = (&trigger.from, event.author_association())
            && !allowed.iter().any(|a| a == association)
        {
            return skip(format!(
                "the author is {association}, not one of from [{}]",
                allowed.join(", ")
            ));
        }
        let command = match &filter.command {
            None => None,
            Some(cmd) => match event
                .body()
                .and_then(|body| template::parse_command(cmd, body))
            {
                Some(found) => Some(found),
                None => return skip(format!("the comment does not start with `{cmd}`")),
            },
        };
        check_refs(filter, event)?;
        if let Some(wanted) = &filter.labels {
            let labels = event.labels();
            if !labels
                .iter()
                .any(|l| wanted.iter().any(|w| w.eq_ignore_ascii_case(l)))
            {
                return skip(format!(
                    "labels [{}] include none of [{}]",
                    labels.join(", "),
                    wanted.join(", ")
                ));
            }
        }
        if let Some(wanted) = &filter.conclusions {
            let conclusion = event
                .run
                .as_ref()
                .and_then(|r| r.conclusion.as_deref())
                .unwrap_or("none");
            if !wanted.iter().any(|w| w == conclusion) {
                return skip(format!(
                    "conclusion `{conclusion}` is not one of conclusions [{}]",
                    wanted.join(", ")
                ));
            }
        }
        if let Some(wanted) = &filter.workflows {
            let name = event
                .run
                .as_ref()
                .and_then(|r| r.name.as_deref())
                .unwrap_or_default();
            if !wanted.iter().any(|w| w == name) {
                return skip(format!(
                    "workflow `{name}` is not one of workflows [{}]",
                    wanted.join(", ")
                ));
            }
        }
        if filter.needs_changed_files() {
            check_paths(filter, event, input)?;
        }
        Ok(command)
    }

    /// Renders the job a fired trigger runs.
    fn prepare(&self, trigger: &Trigger, event: &Event, ctx: &Value) -> Result<JobSpec, String> {
        let render = |what: &str, source: &str| {
            template::render(&self.env, source, ctx).map_err(|e| {
                format!(
                    "the {what} of trigger `{}` did not render: {e}",
                    trigger.name
                )
            })
        };
        let prompt = render("prompt", &trigger.prompt)?;
        let title = trigger
            .output
            .options
            .title
            .as_deref()
            .map(|t| render("output title", t))
            .transpose()?;
        let group = trigger
            .concurrency
            .as_ref()
            .map(|c| render("concurrency group", &c.group))
            .transpose()?;
        let repository = event
            .repository
            .as_ref()
            .ok_or("the event has no repository")?;
        Ok(JobSpec::new(
            trigger, event, repository, prompt, title, group,
        ))
    }
}

/// A scheduled tick fires the triggers that have that schedule and list the repository.
fn check_schedule(trigger: &Trigger, event: &Event) -> Result<Option<template::Command>, Skip> {
    let Some((cron, timezone)) = &event.schedule else {
        return Err(Skip("the schedule event names no cron".to_owned()));
    };
    if !trigger
        .schedules
        .iter()
        .any(|s| &s.cron == cron && &s.timezone == timezone)
    {
        return Err(Skip(format!("it has no schedule `{cron}` ({timezone})")));
    }
    let Some(repository) = &event.repository else {
        return Err(Skip("the event has no repository".to_owned()));
    };
    match &trigger.repos {
        Some(repos) if repos.matches(&repository.full_name.to_string().to_lowercase()) => Ok(None),
        _ => Err(Skip(format!(
            "repository {} is not in its repos",
            repository.full_name
        ))),
    }
}

/// Whether nightshift caused `event`: its own login sent it, or the comment or review carries the marker
/// nightshift puts in everything it posts.
fn is_from_nightshift(event: &Event, bot_login: Option<&str>) -> bool {
    let by_login = match (bot_login, &event.sender) {
        (Some(bot), Some(sender)) => sender.login.eq_ignore_ascii_case(bot),
        _ => false,
    };
    by_login
        || event
            .body()
            .is_some_and(|b| b.contains(crate::sink::texts::MARKER_PREFIX))
}

/// Branch and tag filters, with GitHub's rule for pushes: with only branch filters a tag push does not fire,
/// with only tag filters a branch push does not.
fn check_refs(filter: &Filter, event: &Event) -> Result<(), Skip> {
    let has_branch_filter = filter.branches.is_some() || filter.branches_ignore.is_some();
    let has_tag_filter = filter.tags.is_some() || filter.tags_ignore.is_some();
    if let Some(tag) = event.tag() {
        if has_branch_filter && !has_tag_filter {
            return Err(Skip(format!(
                "tag `{tag}` was pushed but the trigger filters branches only"
            )));
        }
        return check_list(tag, "tag", &filter.tags, &filter.tags_ignore, "tags");
    }
    if event.push.is_some() && has_tag_filter && !has_branch_filter {
        return Err(Skip(
            "a branch was pushed but the trigger filters tags only".to_owned(),
        ));
    }
    if has_branch_filter {
        let Some(branch) = event.branch() else {
            return Err(Skip(
                "the event has no branch for the branch filters".to_owned(),
            ));
        };
        return check_list(
            branch,
            "branch",
            &filter.branches,
            &filter.branches_ignore,
            "branches",
        );
    }
    Ok(())
}

fn check_list(
    name: &str,
    what: &str,
    include: &Option<PatternList>,
    ignore: &Option<PatternList>,
    key: &str,
) -> Result<(), Skip> {
    if let Some(list) = include
        && !list.matches(name)
    {
        return Err(Skip(format!(
            "{what} `{name}` does not match {key} {:?}",
            list.sources()
        )));
    }
    if let Some(list) = ignore
        && list.matches(name)
    {
        return Err(Skip(format!(
            "{what} `{name}` matches {key}-ignore {:?}",
            list.sources()
        )));
    }
    Ok(())
}

fn check_paths(filter: &Filter, event: &Event, input: &MatchInput) -> Result<(), Skip> {
    let files: &[String] = match (&event.push, &input.changed_files) {
        (Some(push), _) => &push.changed_files,
        (None, Some(files)) => files,
        (None, None) => {
            return Err(Skip(
                "the changed files are not known, so the path filters cannot pass".to_owned(),
            ));
        }
    };
    let files = &files[..files.len().min(MAX_CHANGED_FILES)];
    if files.is_empty() {
        return Err(Skip("no file changed".to_owned()));
    }
    if let Some(paths) = &filter.paths
        && !files.iter().any(|f| paths.matches(f))
    {
        return Err(Skip(format!(
            "no changed file matches paths {:?}",
            paths.sources()
        )));
    }
    if let Some(ignore) = &filter.paths_ignore
        && files.iter().all(|f| ignore.matches(f))
    {
        return Err(Skip(format!(
            "every changed file matches paths-ignore {:?}",
            ignore.sources()
        )));
    }
    Ok(())
}

/// What `nightshift match` reports: the triggers that fire with their rendered jobs, and for each other
/// trigger the first filter that stopped it. Serialized, this is the documented `--json` shape.
#[derive(Debug, serde::Serialize)]
pub struct MatchReport {
    pub fired: Vec<FiredReport>,
    pub skipped: Vec<SkippedReport>,
}

#[derive(Debug, serde::Serialize)]
pub struct FiredReport {
    pub trigger: String,
    pub agent: String,
    pub output: String,
    /// The rendered prompt (absent when rendering failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Why the job could not be prepared (a template failed on this payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct SkippedReport {
    pub trigger: String,
    pub reason: String,
}

impl TriggerSet {
    pub fn report(&self, event: &Event, input: &MatchInput) -> MatchReport {
        let mut report = MatchReport {
            fired: Vec::new(),
            skipped: Vec::new(),
        };
        for (trigger, decision) in self.decide(event, input) {
            match decision {
                Decision::Fire(job) => report.fired.push(FiredReport {
                    trigger: trigger.name.clone(),
                    agent: trigger.agent.clone(),
                    output: trigger.output.kind.to_string(),
                    prompt: job.as_ref().ok().map(|j| j.prompt.clone()),
                    concurrency_group: job.as_ref().ok().and_then(|j| j.concurrency_group.clone()),
                    error: job.err(),
                }),
                Decision::Skip(Skip(reason)) => report.skipped.push(SkippedReport {
                    trigger: trigger.name.clone(),
                    reason,
                }),
            }
        }
        report
    }
}

impl std::fmt::Display for MatchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for fired in &self.fired {
            writeln!(
                f,
                "fires: {} (agent {}, output {})",
                fired.trigger, fired.agent, fired.output
            )?;
            if let Some(group) = &fired.concurrency_group {
                writeln!(f, "  concurrency group: {group}")?;
            }
            match (&fired.prompt, &fired.error) {
                (_, Some(error)) => writeln!(f, "  error: {error}")?,
                (Some(prompt), None) => {
                    writeln!(f, "  prompt:")?;
                    for line in prompt.lines() {
                        writeln!(f, "    {line}")?;
                    }
                }
                (None, None) => {}
            }
        }
        for skipped in &self.skipped {
            writeln!(f, "skips: {}: {}", skipped.trigger, skipped.reason)?;
        }
        if self.fired.is_empty() && self.skipped.is_empty() {
            writeln!(f, "no triggers loaded")?;
        }
        Ok(())
    }
}
