//! Trigger files as written: the serde types. [`super::load`] turns them into checked [`super::Trigger`]s.
//! Every field is documented here; `nightshift schema` publishes these types as a JSON Schema.

use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_saphyr::Spanned;
use std::borrow::Cow;

/// A trigger file: when an event happens, run an agent with these instructions.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(title = "nightshift trigger file")]
#[serde(deny_unknown_fields)]
pub struct TriggerFile {
    /// What the trigger is for, in a sentence.
    pub description: Option<String>,
    /// Which events fire it: an event name, a list of names, or a map of events to their filters.
    #[schemars(with = "On")]
    pub on: Spanned<On>,
    /// Repositories (`owner/name` patterns, `!` excludes) the trigger applies to; all installed
    /// repositories when left out. Schedules need it.
    #[schemars(with = "Option<Vec<String>>")]
    pub repos: Option<Vec<Spanned<String>>>,
    /// A condition: a minijinja expression over `event`, `repo` and `command` that must be true.
    #[serde(rename = "if")]
    #[schemars(with = "Option<String>")]
    pub condition: Option<Spanned<String>>,
    /// Who may set it off, by their association with the repository (OWNER, MEMBER, COLLABORATOR,
    /// CONTRIBUTOR, FIRST_TIME_CONTRIBUTOR, FIRST_TIMER, MANNEQUIN, NONE), or `anyone`. Defaults to
    /// OWNER, MEMBER, COLLABORATOR. When the payload does not say (labels, closing, pushes, runs), the
    /// actor's permission is asked of GitHub: admin or write counts as COLLABORATOR (OWNER for the
    /// repository's owner), anything else as NONE; an actor whose standing is unknown is not trusted. A
    /// payload's MEMBER or COLLABORATOR (given whatever the access) is checked the same way: less than
    /// write counts as NONE.
    #[schemars(with = "Option<Who>")]
    pub from: Option<Spanned<Who>>,
    /// Bots (logins such as `renovate[bot]`) whose events may fire this trigger. Events sent by any other
    /// bot never do.
    #[schemars(with = "Option<Vec<String>>")]
    pub from_bots: Option<Vec<Spanned<String>>>,
    /// Whether events caused by nightshift itself (its comments, issues, pull requests and checks) may fire
    /// this trigger.
    #[serde(default)]
    pub from_self: bool,
    /// What to do with a pull request from a fork (or a run whose commit is not known to be the
    /// repository's own): `skip` it, run the job `read_only` (the agent cannot change the worktree), or
    /// `allow` it like any other. Defaults to `skip` for output pull_request (a fork's commits are never
    /// pushed into the repository, so it takes no other value) and `read_only` otherwise.
    #[schemars(with = "Option<Forks>")]
    pub forks: Option<Spanned<Forks>>,
    /// The agent profile (from nightshift.yml) that runs the job.
    #[schemars(with = "String")]
    pub agent: Spanned<String>,
    /// Skills the agent gets: a list of names, or `auto` for all of them.
    #[schemars(with = "Option<Skills>")]
    pub skills: Option<Spanned<Skills>>,
    /// The instructions, a minijinja template over `event`, `repo` and `command`.
    #[schemars(with = "String")]
    pub prompt: Spanned<String>,
    /// Where the agent's result goes: a type name, or a map with `type` and its options.
    #[schemars(with = "Option<OutputSpec>")]
    pub output: Option<Spanned<OutputSpec>>,
    /// At most one job of a group runs at a time.
    pub concurrency: Option<ConcurrencySpec>,
    /// Wall-clock limit for the agent, e.g. 20m (the profile's timeout when left out).
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// The most model turns for this trigger's jobs (lowers the profile's; Claude Code agents).
    #[schemars(with = "Option<u32>")]
    pub max_turns: Option<Spanned<u32>>,
    /// The most bytes of the agent's final message kept for this trigger's jobs (lowers the profile's).
    pub max_output: Option<usize>,
    /// Whether a job on an issue or pull request posts a comment when it starts and edits it with the
    /// result (default true).
    pub progress: Option<bool>,
    /// The most links in a chain of jobs set off by nightshift's own outputs this trigger fires for
    /// (lowers the service's `max_depth`, default 1). An event a person caused has depth 0; one caused by
    /// a job's output has that job's depth + 1.
    #[schemars(with = "Option<u32>")]
    pub max_depth: Option<Spanned<u32>>,
    /// What this trigger's outputs may contain; checked before anything is posted. Each field left out is
    /// the service's (`limits:` in nightshift.yml), else its default.
    pub limits: Option<LimitsFile>,
    /// Commands run in the job's worktree, in the agent's box, after the agent ends and before anything is
    /// delivered (at most 20). A failing step goes back to the agent with its output. Left out, the first
    /// `verify:` default in nightshift.yml whose `repos` match applies; `verify: []` runs none. Steps come
    /// only from trigger files and nightshift.yml (a repository's triggers from its default branch), never
    /// from the pull request under review.
    #[schemars(with = "Option<super::verify::VerifySchema>")]
    pub verify: Option<super::verify::VerifyFile>,
    /// How many more times the agent runs when a step fails, given the failure (default 2; 0 = none; at
    /// most 5). Budgets and the timeout cover all runs together.
    #[schemars(with = "Option<u32>")]
    pub verify_rounds: Option<Spanned<u32>>,
    /// When steps still fail after the last round: `fail` (default) delivers nothing; `draft` (output
    /// pull_request only) opens the pull request as a draft labelled as failing verification.
    #[schemars(with = "Option<super::verify::VerifyFail>")]
    pub verify_fail: Option<Spanned<super::verify::VerifyFail>>,
}

/// `from:` — `anyone`, one association, or a list of them.
#[derive(Debug)]
pub enum Who {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl Who {
    /// The names, each with where it is written (`at` for a single one).
    pub fn names(self, at: serde_saphyr::Location) -> Vec<Spanned<String>> {
        match self {
            Who::One(name) => vec![Spanned {
                value: name,
                referenced: at,
                defined: at,
            }],
            Who::Many(names) => names,
        }
    }
}

impl<'de> Deserialize<'de> for Who {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Who;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`anyone`, an author association, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Who, E> {
                Ok(Who::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Who, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    names.push(name);
                }
                Ok(Who::Many(names))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Who {
    fn schema_name() -> Cow<'static, str> {
        "Who".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut names: Vec<&str> = ASSOCIATIONS.to_vec();
        names.push("anyone");
        json_schema!({
            "description": "`anyone`, an author association, or a list of them.",
            "anyOf": [
                { "enum": names },
                { "type": "array", "items": { "enum": names } }
            ]
        })
    }
}

/// `forks:` — how a trigger treats code from a fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Forks {
    /// Do not fire for a fork's pull request or run.
    Skip,
    /// Fire, with the agent's worktree read-only.
    ReadOnly,
    /// Fire like for any other pull request.
    Allow,
}

impl Forks {
    pub fn name(self) -> &'static str {
        match self {
            Forks::Skip => "skip",
            Forks::ReadOnly => "read_only",
            Forks::Allow => "allow",
        }
    }
}

/// `skills:` — named skills, or all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Skills {
    Auto,
    Named(Vec<String>),
}

impl<'de> Deserialize<'de> for Skills {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skills;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of skill names, or `auto`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Skills, E> {
                match v {
                    "auto" => Ok(Skills::Auto),
                    other => Err(E::custom(format!(
                        "`{other}` is not a list of skills; write [{other}] or `auto`"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skills, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(Skills::Named(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a job's result is delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The agent's final message as a comment on the issue or pull request.
    #[default]
    Comment,
    /// A pull request review: the message as its summary, with inline comments from `review.json`.
    Review,
    /// The agent's changes committed to `nightshift/<trigger>/<number>` and opened as a pull request.
    PullRequest,
    /// A new issue whose body is the agent's message.
    Issue,
    /// A check run on the commit, with the message as its summary.
    CheckRun,
}

impl OutputKind {
    pub const ALL: [OutputKind; 5] = [
        OutputKind::Comment,
        OutputKind::Review,
        OutputKind::PullRequest,
        OutputKind::Issue,
        OutputKind::CheckRun,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Comment => "comment",
            OutputKind::Review => "review",
            OutputKind::PullRequest => "pull_request",
            OutputKind::Issue => "issue",
            OutputKind::CheckRun => "check_run",
        }
    }

    /// Outputs that change code (and so default to trusted authors only).
    pub fn writes_code(self) -> bool {
        self == OutputKind::PullRequest
    }
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `output:` — a type, or a type with options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputSpec {
    pub kind: OutputKind,
    pub options: OutputOptions,
}

/// Options of an output, each for the types named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputOptions {
    /// pull_request, issue: the title (a template).
    pub title: Option<String>,
    /// pull_request: open it as a draft.
    pub draft: Option<bool>,
    /// pull_request, issue: labels to add.
    pub labels: Option<Vec<String>>,
    /// check_run: the check's name (the trigger's name by default).
    pub name: Option<String>,
    /// pull_request: the body (a template); nightshift adds the agent's message, `Closes #N` for an
    /// issue's job, and its footer.
    pub body: Option<String>,
    /// issue: a key (a template, e.g. `audit-{{ repo }}`): while an open issue nightshift filed with the
    /// same key exists, it is updated instead of a new one being filed. A key that renders empty files a
    /// new issue every time.
    pub dedupe: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputMap {
    #[serde(rename = "type")]
    kind: OutputKind,
    #[serde(flatten)]
    options: OutputOptions,
}

impl<'de> Deserialize<'de> for OutputSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OutputSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an output type (comment, review, pull_request, issue, check_run) or a map with `type`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OutputSpec, E> {
                let kind = OutputKind::deserialize(de::value::StrDeserializer::<E>::new(v))?;
                Ok(OutputSpec {
                    kind,
                    options: OutputOptions::default(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OutputSpec, A::Error> {
                let m = OutputMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(OutputSpec {
                    kind: m.kind,
                    options: m.options,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `concurrency:` — jobs of one group run one at a time.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    /// The group's name, a template (e.g. `pr-{{ repo }}-{{ event.pull_request.number }}`).
    #[schemars(with = "String")]
    pub group: Spanned<String>,
    /// Cancel the group's queued and running jobs when a new one is queued.
    #[serde(default)]
    pub cancel_in_progress: bool,
}

/// The events nightshift can be triggered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Issues,
    IssueComment,
    PullRequest,
    PullRequestReview,
    PullRequestReviewComment,
    CheckRun,
    CheckSuite,
    WorkflowRun,
    Push,
    Schedule,
}

/// The filters a trigger file may put under an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKey {
    Types,
    Branches,
    BranchesIgnore,
    Tags,
    TagsIgnore,
    Paths,
    PathsIgnore,
    Labels,
    Conclusions,
    Workflows,
    Command,
}

impl FilterKey {
    pub fn name(self) -> &'static str {
        match self {
            FilterKey::Types => "types",
            FilterKey::Branches => "branches",
            FilterKey::BranchesIgnore => "branches-ignore",
            FilterKey::Tags => "tags",
            FilterKey::TagsIgnore => "tags-ignore",
            FilterKey::Paths => "paths",
            FilterKey::PathsIgnore => "paths-ignore",
            FilterKey::Labels => "labels",
            FilterKey::Conclusions => "conclusions",
            FilterKey::Workflows => "workflows",
            FilterKey::Command => "command",
        }
    }
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Issues,
        EventKind::IssueComment,
        EventKind::PullRequest,
        EventKind::PullRequestReview,
        EventKind::PullRequestReviewComment,
        EventKind::CheckRun,
        EventKind::CheckSuite,
        EventKind::WorkflowRun,
        EventKind::Push,
        EventKind::Schedule,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Issues => "issues",
            EventKind::IssueComment => "issue_comment",
            EventKind::PullRequest => "pull_request",
            EventKind::PullRequestReview => "pull_request_review",
            EventKind::PullRequestReviewComment => "pull_request_review_comment",
            EventKind::CheckRun => "check_run",
            EventKind::CheckSuite => "check_suite",
            EventKind::WorkflowRun => "workflow_run",
            EventKind::Push => "push",
            EventKind::Schedule => "schedule",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Every activity type (`action`) GitHub sends for the event; empty for events without types.
    pub fn activity_types(self) -> &'static [&'static str] {
        match self {
            EventKind::Issues => &[
                "opened",
                "edited",
                "deleted",
                "transferred",
                "pinned",
                "unpinned",
                "closed",
                "reopened",
                "assigned",
                "unassigned",
                "labeled",
                "unlabeled",
                "locked",
                "unlocked",
                "milestoned",
                "demilestoned",
                "typed",
                "untyped",
            ],
            EventKind::IssueComment | EventKind::PullRequestReviewComment => {
                &["created", "edited", "deleted"]
            }
            EventKind::PullRequest => &[
                "assigned",
                "unassigned",
                "labeled",
                "unlabeled",
                "opened",
                "edited",
                "closed",
                "reopened",
                "synchronize",
                "converted_to_draft",
                "locked",
                "unlocked",
                "enqueued",
                "dequeued",
                "milestoned",
                "demilestoned",
                "ready_for_review",
                "review_requested",
                "review_request_removed",
                "auto_merge_enabled",
                "auto_merge_disabled",
            ],
            EventKind::PullRequestReview => &["submitted", "edited", "dismissed"],
            EventKind::CheckRun => &["created", "rerequested", "completed", "requested_action"],
            EventKind::CheckSuite => &["completed", "requested", "rerequested"],
            EventKind::WorkflowRun => &["completed", "requested", "in_progress"],
            EventKind::Push | EventKind::Schedule => &[],
        }
    }

    /// The types that fire when `types` is left out, as GitHub does it.
    pub fn default_types(self) -> &'static [&'static str] {
        match self {
            EventKind::PullRequest => &["opened", "synchronize", "reopened"],
            other => other.activity_types(),
        }
    }

    /// The filters that apply to this event.
    pub fn filters(self) -> &'static [FilterKey] {
        use FilterKey::*;
        match self {
            EventKind::Issues => &[Types, Labels],
            EventKind::IssueComment => &[Types, Labels, Command],
            EventKind::PullRequest => {
                &[Types, Branches, BranchesIgnore, Paths, PathsIgnore, Labels]
            }
            EventKind::PullRequestReview | EventKind::PullRequestReviewComment => {
                &[Types, Branches, BranchesIgnore]
            }
            EventKind::CheckRun | EventKind::CheckSuite => &[Types, Conclusions],
            EventKind::WorkflowRun => &[Types, Branches, BranchesIgnore, Conclusions, Workflows],
            EventKind::Push => &[
                Branches,
                BranchesIgnore,
                Tags,
                TagsIgnore,
                Paths,
                PathsIgnore,
            ],
            EventKind::Schedule => &[],
        }
    }
}

/// Conclusions a check run, check suite or workflow run can end with.
pub const CONCLUSIONS: &[&str] = &[
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
    "stale",
    "startup_failure",
];

/// Author associations GitHub reports.
pub const ASSOCIATIONS: &[&str] = &[
    "OWNER",
    "MEMBER",
    "COLLABORATOR",
    "CONTRIBUTOR",
    "FIRST_TIME_CONTRIBUTOR",
    "FIRST_TIMER",
    "MANNEQUIN",
    "NONE",
];

/// Filters under one event.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Activity types (the payload's `action`) that fire the trigger.
    #[schemars(with = "Option<Vec<String>>")]
    pub types: Option<Vec<Spanned<String>>>,
    /// Branches (pull request base, pushed branch, workflow run branch), GitHub filter patterns.
    #[schemars(with = "Option<Vec<String>>")]
    pub branches: Option<Vec<Spanned<String>>>,
    /// Branches to skip.
    #[serde(rename = "branches-ignore")]
    #[schemars(with = "Option<Vec<String>>")]
    pub branches_ignore: Option<Vec<Spanned<String>>>,
    /// Pushed tags.
    #[schemars(with = "Option<Vec<String>>")]
    pub tags: Option<Vec<Spanned<String>>>,
    /// Pushed tags to skip.
    #[serde(rename = "tags-ignore")]
    #[schemars(with = "Option<Vec<String>>")]
    pub tags_ignore: Option<Vec<Spanned<String>>>,
    /// Changed files: fires when at least one matches.
    #[schemars(with = "Option<Vec<String>>")]
    pub paths: Option<Vec<Spanned<String>>>,
    /// Changed files to skip: skips when every changed file matches.
    #[serde(rename = "paths-ignore")]
    #[schemars(with = "Option<Vec<String>>")]
    pub paths_ignore: Option<Vec<Spanned<String>>>,
    /// Labels of the issue or pull request (for `labeled`, the label just added); any one fires it.
    #[schemars(with = "Option<Vec<String>>")]
    pub labels: Option<Vec<Spanned<String>>>,
    /// Conclusions of the run or suite, e.g. [failure, timed_out].
    #[schemars(with = "Option<Vec<String>>")]
    pub conclusions: Option<Vec<Spanned<String>>>,
    /// Names of the workflows whose runs fire it.
    #[schemars(with = "Option<Vec<String>>")]
    pub workflows: Option<Vec<Spanned<String>>>,
    /// A slash command the comment must start with, e.g. `/review`.
    #[schemars(with = "Option<String>")]
    pub command: Option<Spanned<String>>,
}

impl EventFilter {
    /// The filter keys this filter sets, with where.
    pub fn keys(&self) -> Vec<(FilterKey, Option<serde_saphyr::Location>)> {
        let first =
            |l: &Option<Vec<Spanned<String>>>| l.as_ref().map(|v| v.first().map(|s| s.referenced));
        let mut keys = Vec::new();
        let lists = [
            (FilterKey::Types, &self.types),
            (FilterKey::Branches, &self.branches),
            (FilterKey::BranchesIgnore, &self.branches_ignore),
            (FilterKey::Tags, &self.tags),
            (FilterKey::TagsIgnore, &self.tags_ignore),
            (FilterKey::Paths, &self.paths),
            (FilterKey::PathsIgnore, &self.paths_ignore),
            (FilterKey::Labels, &self.labels),
            (FilterKey::Conclusions, &self.conclusions),
            (FilterKey::Workflows, &self.workflows),
        ];
        for (key, list) in lists {
            if let Some(at) = first(list) {
                keys.push((key, at));
            }
        }
        if let Some(c) = &self.command {
            keys.push((FilterKey::Command, Some(c.referenced)));
        }
        keys
    }
}

/// One `schedule:` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// POSIX cron, 5 fields (minute hour day-of-month month day-of-week; 0 and 7 are Sunday).
    #[schemars(with = "String")]
    pub cron: Spanned<String>,
    /// IANA time zone the cron is read in (UTC when left out).
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Spanned<String>>,
}

/// The `on:` value, in any of its three shapes.
#[derive(Debug, Default)]
pub struct On {
    pub events: BTreeMap<EventKind, EventFilter>,
    pub schedule: Vec<ScheduleSpec>,
}

fn unknown_event<E: de::Error>(name: &str) -> E {
    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
    let hint = crate::yaml::did_you_mean(name, known.iter().copied())
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    E::custom(format!(
        "unknown event `{name}`{hint}; nightshift triggers on {}",
        known.join(", ")
    ))
}

fn event_without_options<E: de::Error>(name: &str) -> Result<EventKind, E> {
    match EventKind::from_name(name) {
        Some(EventKind::Schedule) => Err(E::custom(
            "`schedule` needs a list of crons: schedule: [{cron: \"0 3 * * 1-5\"}]",
        )),
        Some(kind) => Ok(kind),
        None => Err(unknown_event(name)),
    }
}

impl<'de> Deserialize<'de> for On {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnVisitor;

        impl<'de> Visitor<'de> for OnVisitor {
            type Value = On;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an event name, a list of event names, or a map of events to their filters",
                )
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<On, E> {
                let mut on = On::default();
                on.events
                    .insert(event_without_options(name)?, EventFilter::default());
                Ok(on)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<On, A::Error> {
                let mut on = On::default();
                while let Some(name) = seq.next_element::<String>()? {
                    on.events
                        .insert(event_without_options(&name)?, EventFilter::default());
                }
                Ok(on)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<On, A::Error> {
                let mut on = On::default();
                while let Some(name) = map.next_key::<String>()? {
                    let kind = EventKind::from_name(&name).ok_or_else(|| unknown_event(&name))?;
                    if kind == EventKind::Schedule {
                        if !on.schedule.is_empty() {
                            return Err(de::Error::custom("`schedule` is listed twice"));
                        }
                        on.schedule = map.next_value()?;
                        if on.schedule.is_empty() {
                            return Err(de::Error::custom("`schedule` lists no cron"));
                        }
                        continue;
                    }
                    let filter: Option<EventFilter> = map.next_value()?;
                    if on.events.insert(kind, filter.unwrap_or_default()).is_some() {
                        return Err(de::Error::custom(format!("event `{name}` is listed twice")));
                    }
                }
                Ok(on)
            }
        }

        deserializer.deserialize_any(OnVisitor)
    }
}

impl JsonSchema for Skills {
    fn schema_name() -> Cow<'static, str> {
        "Skills".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Skills the agent gets: a list of skill names, or `auto` for all of them.",
            "anyOf": [
                { "const": "auto" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

impl JsonSchema for OutputSpec {
    fn schema_name() -> Cow<'static, str> {
        "Output".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let kind = generator.subschema_for::<OutputKind>();
        // The map form is the options' own object with `type` among its properties: an `allOf` of a closed
        // options object and another with `type` would refuse every map (`type` is not an option).
        let mut map = OutputOptions::json_schema(generator);
        if let Some(object) = map.as_object_mut() {
            if let Some(properties) = object.get_mut("properties").and_then(|p| p.as_object_mut()) {
                properties.insert("type".to_owned(), kind.clone().into());
            }
            object.insert("required".to_owned(), serde_json::json!(["type"]));
            object.remove("title");
        }
        json_schema!({
            "description": "Where the agent's result goes: an output type, or a map with `type` and the type's options.",
            "anyOf": [kind, map]
        })
    }
}

impl JsonSchema for On {
    fn schema_name() -> Cow<'static, str> {
        "On".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = EventKind::ALL
            .iter()
            .filter(|k| **k != EventKind::Schedule)
            .map(|k| k.name())
            .collect();
        let filter = generator.subschema_for::<EventFilter>();
        let schedule = generator.subschema_for::<Vec<ScheduleSpec>>();
        let mut properties = serde_json::Map::new();
        for name in &names {
            properties.insert(
                (*name).to_owned(),
                json_schema!({ "anyOf": [filter, { "type": "null" }] }).into(),
            );
        }
        properties.insert("schedule".to_owned(), schedule.into());
        json_schema!({
            "description": "Which events fire the trigger: an event name, a list of names, or a map of events to their filters.",
            "anyOf": [
                { "enum": names },
                { "type": "array", "items": { "enum": names } },
                { "type": "object", "properties": properties, "additionalProperties": false }
            ]
        })
    }
}

/// `limits:` as written, in a trigger file or in nightshift.yml: what an output may contain. The agent
/// proposes; nightshift checks the proposal against these and posts nothing that breaks one (the job fails
/// with the rule it broke).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// The most bytes of any one body posted (comment, review summary, issue or pull request body, check
    /// summary): a number of bytes or a size such as `20KB` (1000 bytes) or `16KiB` (1024 bytes); at most
    /// 65536, GitHub's own limit. Default 60KB.
    #[schemars(with = "Option<Size>")]
    pub max_body: Option<Spanned<Size>>,
    /// The most inline comments a review may carry; a review with more is refused. Default 50.
    #[schemars(with = "Option<u32>")]
    pub max_inline_comments: Option<Spanned<u32>>,
    /// Labels an output may add (the issue or pull request output's `labels`, and any the agent proposes).
    /// Default: only those the trigger's `output:` names.
    #[schemars(with = "Option<Vec<String>>")]
    pub labels: Option<Vec<Spanned<String>>>,
    /// Paths a pull request may touch (add, change, delete, or change the mode of), as GitHub's `paths`
    /// filter patterns; `!` excludes, and the last matching pattern wins. Default: everything except
    /// `.github/workflows/**` and `.github/actions/**`. Paths are also compared without regard to case, so
    /// `.GitHub/Workflows/x.yml` is refused where `.github/workflows/**` is.
    #[schemars(with = "Option<Vec<String>>")]
    pub paths: Option<Vec<Spanned<String>>>,
    /// The most files a pull request's commit may change. Default 1000.
    #[schemars(with = "Option<u64>")]
    pub max_files: Option<Spanned<u64>>,
    /// The most lines (added plus removed) a pull request's commit may change. Default 100000.
    #[schemars(with = "Option<u64>")]
    pub max_lines: Option<Spanned<u64>>,
    /// Whether text that looks like a credential (API keys, tokens, private keys) in a body or in a line
    /// the commit adds is `refuse`d (default) or `allow`ed.
    #[schemars(with = "Option<Secrets>")]
    pub secrets: Option<Spanned<Secrets>>,
}

/// A size: a number of bytes, or a number with a unit (B, KB, KiB, MB, MiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// The size in bytes, or why it is not one.
    pub fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Size::Bytes(n) => return Ok(*n),
            Size::Text(t) => t.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" | "K" => 1000,
            "KiB" => 1024,
            "MB" | "M" => 1_000_000,
            "MiB" => 1024 * 1024,
            _ => return Err(format!("`{text}` is not a size")),
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .ok_or_else(|| format!("`{text}` is not a size"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of bytes or a size such as 20KB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size::Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Size {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of bytes, or a number with a unit: 20KB, 16KiB, 1MB.",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+ ?(B|KB|kB|K|KiB|MB|M|MiB)?$" }
            ]
        })
    }
}

/// `secrets:` — what to do with text that looks like a credential.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Secrets {
    /// Post nothing that contains one: the job fails, naming the rule and where it was found.
    #[default]
    Refuse,
    /// Do not look.
    Allow,
}

/// GitHub refuses a body longer than 65,536 characters; a byte is never more than a character.
pub const GITHUB_MAX_BODY: u64 = 65_536;

/// The limits one layer (a trigger, or the service) sets, each `None` where it says nothing. A job freezes
/// its trigger's; the check lays them over the service's with [`Limits::over`] and fills the rest with the
/// defaults (`crate::sink::policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inline_comments: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// Pattern sources, each already checked to compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lines: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Secrets>,
}

impl Limits {
    /// These limits, with `base`'s wherever these say nothing (field by field).
    pub fn over(&self, base: &Limits) -> Limits {
        Limits {
            max_body: self.max_body.or(base.max_body),
            max_inline_comments: self.max_inline_comments.or(base.max_inline_comments),
            labels: self.labels.clone().or_else(|| base.labels.clone()),
            paths: self.paths.clone().or_else(|| base.paths.clone()),
            max_files: self.max_files.or(base.max_files),
            max_lines: self.max_lines.or(base.max_lines),
            secrets: self.secrets.or(base.secrets),
        }
    }
}

/// One problem in a `limits:` block: where, what, and a hint.
pub type LimitProblem = (serde_saphyr::Location, String, Option<String>);

impl LimitsFile {
    /// Checks the values; every problem is returned, each with where it is written.
    pub fn check(self) -> Result<Limits, Vec<LimitProblem>> {
        let mut problems: Vec<LimitProblem> = Vec::new();
        let max_body = self.max_body.and_then(|size| match size.value.bytes() {
            Ok(0) => {
                problems.push((
                    size.referenced,
                    "max_body cannot be 0: every output posts a body".into(),
                    Some("write a size such as 20KB".into()),
                ));
                None
            }
            Ok(n) if n > GITHUB_MAX_BODY => {
                problems.push((
                    size.referenced,
                    format!("max_body is {n} bytes, more than GitHub accepts ({GITHUB_MAX_BODY})"),
                    Some("write at most 64KiB".into()),
                ));
                None
            }
            Ok(n) => Some(n),
            Err(message) => {
                problems.push((
                    size.referenced,
                    message,
                    Some("write a number of bytes, or a size such as 20KB, 16KiB".into()),
                ));
                None
            }
        });
        let labels = self.labels.map(|labels| {
            labels
                .into_iter()
                .filter_map(|l| {
                    let name = l.value.trim();
                    if name.is_empty() || name.chars().any(char::is_control) {
                        problems.push((
                            l.referenced,
                            format!("`{}` is not a label name", l.value.escape_debug()),
                            Some("write label names as GitHub shows them, e.g. bug".into()),
                        ));
                        return None;
                    }
                    Some(name.to_owned())
                })
                .collect()
        });
        let paths = self.paths.map(|paths| {
            let mut compiled = Vec::new();
            for p in &paths {
                match super::pattern::Pattern::parse(&p.value) {
                    Ok(pattern) => compiled.push(pattern),
                    Err(e) => {
                        problems.push((p.referenced, format!("bad pattern: {}", e.message), e.hint))
                    }
                }
            }
            if compiled.len() == paths.len()
                && let Err(e) = super::pattern::PatternList::new(compiled)
            {
                problems.push((paths[0].referenced, e.message, e.hint));
            }
            paths.into_iter().map(|p| p.value).collect()
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Limits {
            max_body,
            max_inline_comments: self.max_inline_comments.map(|s| s.value),
            labels,
            paths,
            max_files: self.max_files.map(|s| s.value),
            max_lines: self.max_lines.map(|s| s.value),
            secrets: self.secrets.map(|s| s.value),
        })
    }
}

/// The JSON Schema of a trigger file, for editors (yaml-language-server) to complete and check with.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(TriggerFile)).expect("a schema serializes")
}
