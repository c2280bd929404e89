//! Trigger files: loading and checking them ([`load`]), and deciding which fire for an event
//! ([`TriggerSet::evaluate`]): each filter in GitHub's order, and for a trigger that does not fire, the
//! first filter that stopped it.

pub mod isolate;
pub mod job;
pub mod load;
pub mod model;
pub mod pattern;
pub mod reload;
pub mod repo;
pub mod samples;
pub mod schedule;
pub mod template;
pub mod verify;

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use minijinja::{Environment, Value};

use crate::config::DEFAULT_MAX_DEPTH;
use crate::source::event::{Event, Repository};
pub use job::JobSpec;
pub use model::{EventKind, Forks, Limits, OutputKind, OutputOptions, OutputSpec, Secrets, Skills};
use pattern::PatternList;
pub use reload::Live;
pub use schedule::Schedule;
pub use verify::{VerifyDefault, VerifyFail, VerifyStep};

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
    /// Bots (lowercase logins) whose events may set it off.
    pub from_bots: Vec<String>,
    pub from_self: bool,
    pub forks: Forks,
    pub agent: String,
    pub skills: Option<Skills>,
    pub prompt: String,
    pub output: OutputSpec,
    pub concurrency: Option<Concurrency>,
    pub timeout: Option<Duration>,
    pub max_turns: Option<u32>,
    pub max_output: Option<usize>,
    /// Post and edit a progress comment (`progress:`, default true).
    pub progress: bool,
    /// `max_depth:`, lowering the service's.
    pub max_depth: Option<u32>,
    /// What the trigger's outputs may contain (`limits:`), where it says.
    pub limits: Limits,
    /// `verify:` as written: None when left out (the service default applies), empty for `verify: []`.
    pub verify: Option<Vec<VerifyStep>>,
    /// `verify_rounds:`, where it says.
    pub verify_rounds: Option<u32>,
    pub verify_fail: VerifyFail,
    /// What `check` and `serve` warn about (`path:line:col: warning: ...`).
    pub warnings: Vec<String>,
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
    /// What GitHub said about actors the payload gives no association for (lowercase login → the
    /// association their permission maps to, or why it is not known). See [`Standing`].
    pub standing: HashMap<String, Standing>,
    /// For a comment on a pull request: its facts as GitHub answered, or why they could not be read. The
    /// payload of a comment carries neither the pull request's head nor whether it comes from a fork.
    pub pull: Option<Result<crate::source::event::PullFacts, String>>,
    /// The event's lineage depth (see [`JobSpec::depth`]), as the dispatcher found it.
    pub depth: u32,
    /// The service's `max_depth`; [`DEFAULT_MAX_DEPTH`] when None.
    pub max_depth: Option<u32>,
    /// The service's `verify:` defaults, for triggers without their own.
    pub verify: Vec<VerifyDefault>,
}

/// What is known of the pull request an event is about.
#[derive(Clone, Debug)]
enum PullKnown {
    /// The event is not about a pull request.
    None,
    Known(crate::source::event::PullFacts),
    /// A comment on a pull request whose facts could not be read, with why.
    Unknown(u64, String),
}

fn pull_known(event: &Event, input: &MatchInput) -> PullKnown {
    if let Some(pr) = &event.pull_request {
        return PullKnown::Known(pr.facts.clone());
    }
    match &event.issue {
        Some(issue) if issue.is_pull_request => match &input.pull {
            Some(Ok(facts)) if facts.number == issue.number => PullKnown::Known(facts.clone()),
            Some(Ok(facts)) => PullKnown::Unknown(
                issue.number,
                format!("GitHub answered with pull request #{}", facts.number),
            ),
            Some(Err(why)) => PullKnown::Unknown(issue.number, why.clone()),
            None => PullKnown::Unknown(
                issue.number,
                "it was not read (that needs GitHub credentials)".to_owned(),
            ),
        },
        _ => PullKnown::None,
    }
}

/// How an actor whose association the payload does not carry relates to the repository, as looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The association their permission maps to (`OWNER`, `COLLABORATOR` or `NONE`).
    Known(String),
    /// Why it could not be looked up.
    Unknown(String),
}

impl Standing {
    /// The association a repository permission (`admin`, `maintain`, `write`, `triage`, `read`, `none`)
    /// counts as: write access or more is a collaborator (the owner of a personal repository is its
    /// OWNER), anything less is NONE.
    pub fn from_permission(permission: &str, login: &str, repo: &str) -> Standing {
        let owner = repo.split('/').next().unwrap_or_default();
        let association = match permission {
            "admin" | "maintain" | "write" if owner.eq_ignore_ascii_case(login) => "OWNER",
            "admin" | "maintain" | "write" => "COLLABORATOR",
            _ => "NONE",
        };
        Standing::Known(association.to_owned())
    }
}

pub use crate::source::event::MAX_CHANGED_FILES;

/// All loaded triggers, indexed by event and by repository.
pub struct TriggerSet {
    triggers: Vec<Trigger>,
    /// Triggers listing literal repositories, by event and lowercase `owner/name`.
    by_repo: HashMap<(EventKind, String), Vec<usize>>,
    /// Triggers for every repository, or for repository patterns, by event.
    by_event: HashMap<EventKind, Vec<usize>>,
    env: Environment<'static>,
    prompt_env: Environment<'static>,
    /// A repository's own triggers: their templates render in a helper process with limits when the
    /// service has helpers ([`isolate`]).
    isolated: bool,
}

/// Where one event's templates render: in this thread, or (a repository's triggers, in the service) in a
/// helper process ([`isolate`]).
enum Renderer<'a> {
    Here {
        env: &'a Environment<'static>,
        prompt_env: &'a Environment<'static>,
        event: &'a Event,
        ctx: OnceCell<Value>,
    },
    Apart(RefCell<isolate::Session<'a>>),
}

impl<'a> Renderer<'a> {
    fn of(set: &'a TriggerSet, event: &'a Event) -> Renderer<'a> {
        match isolate::pool().filter(|_| set.isolated) {
            Some(pool) => Renderer::Apart(RefCell::new(isolate::Session::new(
                pool,
                &event.payload,
                template::repo_of(event),
            ))),
            None => Renderer::Here {
                env: &set.env,
                prompt_env: &set.prompt_env,
                event,
                ctx: OnceCell::new(),
            },
        }
    }

    fn context(ctx: &OnceCell<Value>, event: &Event, command: Option<&template::Command>) -> Value {
        let ctx = ctx.get_or_init(|| template::context(event, None));
        match command {
            Some(cmd) => template::with_command(ctx, cmd),
            None => ctx.clone(),
        }
    }

    fn is_true(&self, source: &str, command: Option<&template::Command>) -> Result<bool, String> {
        match self {
            Renderer::Here {
                env, event, ctx, ..
            } => template::is_true(env, source, &Self::context(ctx, event, command)),
            Renderer::Apart(session) => session.borrow_mut().is_true(source, command),
        }
    }

    /// Renders `source`: with the prompt environment when `prompt`.
    fn render(
        &self,
        prompt: bool,
        source: &str,
        command: Option<&template::Command>,
    ) -> Result<String, String> {
        match self {
            Renderer::Here {
                env,
                prompt_env,
                event,
                ctx,
            } => {
                let env = if prompt { prompt_env } else { env };
                template::render(env, source, &Self::context(ctx, event, command))
            }
            Renderer::Apart(session) => session.borrow_mut().render(prompt, source, command),
        }
    }
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
            prompt_env: template::prompt_environment(),
            isolated: false,
        }
    }

    /// The set as a repository's own triggers: their templates render apart ([`isolate`]).
    pub fn isolated(mut self) -> TriggerSet {
        self.isolated = true;
        self
    }

    /// Actors of `event` whose standing the payload does not state and that a trigger which may fire
    /// needs to know: the dispatcher looks them up (lowercase logins).
    pub fn logins_to_look_up(&self, event: &Event, bot_login: Option<&str>) -> Vec<String> {
        let (Some(kind), Some(repo)) = (EventKind::from_name(&event.name), &event.repository)
        else {
            return Vec::new();
        };
        let needed = self
            .candidates(kind, &repo.full_name.to_string())
            .any(|t| t.from.is_some() && t.events.contains_key(&kind));
        if !needed {
            return Vec::new();
        }
        let own = |login: &str| bot_login.is_some_and(|b| b.eq_ignore_ascii_case(login));
        let mut logins: Vec<String> = event
            .principals()
            .into_iter()
            .filter(|p| {
                (p.association.is_none() || p.association.as_deref().is_some_and(vouched_by_access))
                    && !p.is_bot
                    && !own(&p.login)
            })
            .map(|p| p.login.to_lowercase())
            .collect();
        logins.dedup();
        logins
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

    /// Whether the facts of the pull request a comment is on are needed: some trigger would fire for it if
    /// the pull request were this repository's own (its filters, trust and command pass). None is for a
    /// comment nobody trusted wrote, or one without the command.
    pub fn needs_pull(&self, event: &Event, input: &MatchInput) -> bool {
        let (Some(kind), Some(repo), Some(issue)) = (
            EventKind::from_name(&event.name),
            &event.repository,
            event.issue.as_ref().filter(|i| i.is_pull_request),
        ) else {
            return false;
        };
        if event.pull_request.is_some() {
            return false;
        }
        let mut probe = input.clone();
        probe.pull = Some(Ok(crate::source::event::PullFacts {
            number: issue.number,
            ..Default::default()
        }));
        self.candidates(kind, &repo.full_name.to_string())
            .any(|t| self.check_filters(t, event, &probe).is_ok())
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
        let renderer = Renderer::of(self, event);
        self.triggers
            .iter()
            .map(|t| (t, self.evaluate_with(t, event, input, &renderer)))
            .collect()
    }

    /// The triggers that fire for `event`, each with its rendered job (or the error that stopped it).
    pub fn fired<'a>(
        &'a self,
        event: &Event,
        input: &MatchInput,
    ) -> Vec<(&'a Trigger, Result<Box<JobSpec>, String>)> {
        self.decide_candidates(event, input)
            .into_iter()
            .filter_map(|(t, decision)| match decision {
                Decision::Fire(job) => Some((t, job)),
                Decision::Skip(_) => None,
            })
            .collect()
    }

    /// The decision of every trigger that listens to `event`'s kind in its repository (the others cannot
    /// fire for it): what the dispatcher records of a match, the skipped ones with the filter that stopped
    /// each.
    pub fn decide_candidates<'a>(
        &'a self,
        event: &Event,
        input: &MatchInput,
    ) -> Vec<(&'a Trigger, Decision)> {
        let (Some(kind), Some(repo)) = (EventKind::from_name(&event.name), &event.repository)
        else {
            return Vec::new();
        };
        let renderer = Renderer::of(self, event);
        self.candidates(kind, &repo.full_name.to_string())
            .map(|t| (t, self.evaluate_with(t, event, input, &renderer)))
            .collect()
    }

    /// What `trigger` makes of `event`.
    pub fn evaluate(&self, trigger: &Trigger, event: &Event, input: &MatchInput) -> Decision {
        self.evaluate_with(trigger, event, input, &Renderer::of(self, event))
    }

    fn evaluate_with(
        &self,
        trigger: &Trigger,
        event: &Event,
        input: &MatchInput,
        renderer: &Renderer<'_>,
    ) -> Decision {
        match self.check_filters(trigger, event, input) {
            Err(skip) => Decision::Skip(skip),
            Ok(command) => {
                if let Some(condition) = &trigger.condition {
                    match renderer.is_true(condition, command.as_ref()) {
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
                if let Some(error) = lineage(trigger, input) {
                    return Decision::Fire(Err(error));
                }
                Decision::Fire(
                    self.prepare(trigger, event, input, renderer, command.as_ref())
                        .map(Box::new),
                )
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
        check_trust(trigger, event, input)?;
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
        let pull = pull_known(event, input);
        let from_fork = match &pull {
            PullKnown::Known(facts) => facts.from_fork,
            // Not known to be the repository's own.
            PullKnown::Unknown(..) => true,
            PullKnown::None => event.from_fork(),
        };
        if trigger.forks == Forks::Skip && from_fork {
            let what = if let PullKnown::Unknown(number, why) = &pull {
                &format!(
                    "pull request #{number} could not be read ({why}), so it may come from a fork"
                )
            } else if matches!(pull, PullKnown::Known(_)) {
                "the pull request comes from a fork"
            } else {
                "the run's commit is not known to be this repository's own (it may come from a fork)"
            };
            let hint = if trigger.output.kind.writes_code() {
                "a fork's commits are never pushed into the repository"
            } else {
                "`forks: read_only` or `forks: allow` lets it run"
            };
            return skip(format!("{what}, and the trigger skips forks ({hint})"));
        }
        Ok(command)
    }

    /// Renders the job a fired trigger runs.
    fn prepare(
        &self,
        trigger: &Trigger,
        event: &Event,
        input: &MatchInput,
        renderer: &Renderer<'_>,
        command: Option<&template::Command>,
    ) -> Result<JobSpec, String> {
        let pull = match pull_known(event, input) {
            PullKnown::Known(facts) => Some(facts),
            PullKnown::None => None,
            PullKnown::Unknown(number, why) => {
                return Err(format!(
                    "pull request #{number} could not be read ({why}), so the job would not run on its code; nothing ran"
                ));
            }
        };
        let render = |what: &str, source: &str| {
            renderer.render(false, source, command).map_err(|e| {
                format!(
                    "the {what} of trigger `{}` did not render: {e}",
                    trigger.name
                )
            })
        };
        let prompt = renderer
            .render(true, &trigger.prompt, command)
            .map_err(|e| {
                format!(
                    "the prompt of trigger `{}` did not render: {e}",
                    trigger.name
                )
            })?;
        let title = trigger
            .output
            .options
            .title
            .as_deref()
            .map(|t| render("output title", t))
            .transpose()?;
        let options = &trigger.output.options;
        let body = options
            .body
            .as_deref()
            .map(|t| render("output body", t))
            .transpose()?;
        let dedupe_key = options
            .dedupe
            .as_deref()
            .map(|t| render("output dedupe key", t))
            .transpose()?
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty());
        let repository = event
            .repository
            .as_ref()
            .ok_or("the event has no repository")?;
        let group = match &trigger.concurrency {
            Some(c) => Some(bounded_group(render("concurrency group", &c.group)?)),
            None => default_group(trigger, event, repository),
        };
        let mut spec = JobSpec::new(trigger, event, repository, prompt, title, group);
        if let Some(facts) = pull {
            spec = spec.with_pull(facts, trigger.forks);
        }
        spec.depth = input.depth;
        spec.output_body = body;
        spec.dedupe_key = dedupe_key;
        (spec.verify, spec.verify_rounds) = verify::resolve(
            trigger.verify.as_deref(),
            trigger.verify_rounds,
            &input.verify,
            &repository.full_name.to_string(),
        );
        Ok(spec)
    }
}

/// The longest concurrency group kept as it renders; a longer one is kept as its start and its SHA-256.
pub const MAX_GROUP_BYTES: usize = 200;

/// A rendered concurrency group, at most [`MAX_GROUP_BYTES`] (plus a hash): the same text is the same group
/// however long it is. A group is indexed in the store, and Postgres refuses an index entry above ~2.7 KB:
/// a group rendered from an issue's body (a repository's trigger file is its pushers', the issue anyone's)
/// failed every insert of the delivery's jobs, and the delivery was retried, holding a matching lane, for
/// ever.
fn bounded_group(group: String) -> String {
    if group.len() <= MAX_GROUP_BYTES {
        return group;
    }
    use sha2::Digest;
    let mut end = MAX_GROUP_BYTES / 2;
    while !group.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}…sha256:{}",
        &group[..end],
        hex::encode(sha2::Sha256::digest(group.as_bytes()))
    )
}

/// The concurrency group of a trigger that writes a pull request and names none: one per trigger,
/// repository and issue or pull request, so duplicate deliveries (ten `labeled` events) run one at a time
/// instead of racing to push one branch. None when the event is about no issue or pull request: every
/// such job has its own branch. An issue output with `dedupe:` gets one per trigger and repository.
pub fn default_group(trigger: &Trigger, event: &Event, repository: &Repository) -> Option<String> {
    // Issues filed under a dedupe key: one job of the trigger at a time per repository, so two never both
    // find no open issue and file one each.
    if trigger.output.kind == OutputKind::Issue && trigger.output.options.dedupe.is_some() {
        return Some(format!(
            "{}/{}/dedupe",
            trigger.name,
            repository.full_name.to_string().to_lowercase()
        ));
    }
    if trigger.output.kind != OutputKind::PullRequest {
        return None;
    }
    let number = event.number()?;
    Some(format!(
        "{}/{}/{number}",
        trigger.name,
        repository.full_name.to_string().to_lowercase()
    ))
}

/// Why a trigger may not fire for an event of this lineage depth, if it may not: past the service's
/// `max_depth` or the trigger's lower one.
fn lineage(trigger: &Trigger, input: &MatchInput) -> Option<String> {
    let service = input.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
    let max = trigger.max_depth.map_or(service, |t| t.min(service));
    (input.depth > max).then(|| {
        format!(
            "lineage depth {} is past max_depth {max}: nightshift's own outputs set off this event, and a chain of jobs stops there (so nothing ran)",
            input.depth
        )
    })
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

/// Whether nightshift caused `event`: its own account sent it, or wrote the comment, review, issue or pull
/// request that set it off. The marker nightshift puts in what it posts does not count here: anyone can
/// paste it into their own comment (to silence triggers), and text nightshift's account wrote is known
/// by its author.
///
/// When nightshift does not know its account (it could not be learned at start), the marker is all it
/// has, and it counts: under a token, nightshift's comments are its user's, who is likely trusted, and an
/// agent answering comments would answer its own without end. A pasted marker then silences only the
/// event of whoever pasted it.
pub fn is_from_nightshift(event: &Event, bot_login: Option<&str>) -> bool {
    let Some(bot) = bot_login else {
        // The text the event's author wrote: a comment or review, or an issue or pull request opened.
        let payload = &event.payload;
        let written = match event.body() {
            Some(body) => Some(body),
            None if event.action.as_deref() == Some("opened") => payload["pull_request"]["body"]
                .as_str()
                .or(payload["issue"]["body"].as_str()),
            None => None,
        };
        return written.is_some_and(|t| t.contains(crate::ids::MARKER_PREFIX));
    };
    event
        .principals()
        .iter()
        .any(|p| p.login.eq_ignore_ascii_case(bot))
}

/// Who may set a trigger off: nightshift itself only with `from_self`; a bot only when the trigger names
/// it in `from_bots`; a person only when their association (from the payload, or looked up) is in
/// `from`. An actor whose standing is unknown is not trusted.
fn check_trust(trigger: &Trigger, event: &Event, input: &MatchInput) -> Result<(), Skip> {
    let skip = |reason: String| Err(Skip(reason));
    let bot = input.bot_login.as_deref();
    if is_from_nightshift(event, bot) {
        if trigger.from_self {
            return Ok(());
        }
        return skip(
            "nightshift caused this event itself (set `from_self: true` to allow it)".to_owned(),
        );
    }
    let principals = event.principals();
    for p in principals.iter().filter(|p| p.is_bot) {
        if !trigger
            .from_bots
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&p.login))
        {
            return skip(format!(
                "`{}` is a bot, and only bots the trigger names in `from_bots` may set it off",
                p.login
            ));
        }
    }
    let Some(allowed) = &trigger.from else {
        return Ok(());
    };
    if principals.is_empty() {
        return skip(format!(
            "the event names nobody who set it off, so it is not trusted (from [{}])",
            allowed.join(", ")
        ));
    }
    for p in principals.iter().filter(|p| !p.is_bot) {
        let looked_up = input.standing.get(&p.login.to_lowercase());
        let association = match (&p.association, looked_up) {
            // GitHub says MEMBER of every member of the owning organization and COLLABORATOR of an outside
            // collaborator, whatever their access: one who can only read counts as NONE.
            (Some(a), Some(Standing::Known(k))) if vouched_by_access(a) => {
                if k == "NONE" {
                    return skip(format!(
                        "{} is {a} but cannot write to the repository, so counts as NONE, not one of from [{}]",
                        p.login,
                        allowed.join(", ")
                    ));
                }
                a.clone()
            }
            (Some(a), Some(Standing::Unknown(why))) if vouched_by_access(a) => {
                return skip(format!(
                    "whether {} ({a}) can write to the repository is unknown ({why}), so they are not trusted (from [{}])",
                    p.login,
                    allowed.join(", ")
                ));
            }
            (Some(a), _) => a.clone(),
            (None, Some(Standing::Known(a))) => a.clone(),
            (None, Some(Standing::Unknown(why))) => {
                return skip(format!(
                    "how {} relates to the repository is unknown ({why}), so they are not trusted (from [{}])",
                    p.login,
                    allowed.join(", ")
                ));
            }
            (None, None) => {
                return skip(format!(
                    "the payload does not say how {} relates to the repository and it was not looked up (that needs GitHub credentials), so they are not trusted (from [{}])",
                    p.login,
                    allowed.join(", ")
                ));
            }
        };
        if !allowed.contains(&association) {
            return skip(format!(
                "{} is {association}, not one of from [{}]",
                p.login,
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// An association GitHub gives whatever the person's access to the repository (`MEMBER`: of the owning
/// organization; `COLLABORATOR`: an outside collaborator, read access included): their permission is looked
/// up, and less than write counts as `NONE`.
fn vouched_by_access(association: &str) -> bool {
    matches!(association, "MEMBER" | "COLLABORATOR")
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
