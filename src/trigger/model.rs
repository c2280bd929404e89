//! Trigger files as written: the serde types. [`super::load`] turns them into checked [`super::Trigger`]s.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_saphyr::Spanned;

/// A trigger file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerFile {
    /// What the trigger is for, in a sentence.
    pub description: Option<String>,
    /// Which events fire it: an event name, a list of names, or a map of events to their filters.
    pub on: Spanned<On>,
    /// The agent profile (from nightshift.yml) that runs the job.
    pub agent: Spanned<String>,
    /// The instructions, a minijinja template over `event` (the payload) and `repo` (`owner/name`).
    pub prompt: Spanned<String>,
    /// Where the agent's result goes.
    #[serde(default)]
    pub output: Option<Spanned<OutputKind>>,
}

/// Where a job's result is delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The agent's final message as a comment on the issue or pull request.
    #[default]
    Comment,
    /// The agent's changes committed to `nightshift/<trigger>/<number>` and opened as a pull request.
    PullRequest,
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputKind::Comment => "comment",
            OutputKind::PullRequest => "pull_request",
        })
    }
}

/// The events nightshift can be triggered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    Issues,
    IssueComment,
    PullRequest,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::Issues,
        EventKind::IssueComment,
        EventKind::PullRequest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Issues => "issues",
            EventKind::IssueComment => "issue_comment",
            EventKind::PullRequest => "pull_request",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Every activity type (`action`) GitHub sends for the event.
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
            EventKind::IssueComment => &["created", "edited", "deleted"],
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
        }
    }

    /// The types that fire when `types` is left out, as GitHub does it.
    pub fn default_types(self) -> &'static [&'static str] {
        match self {
            EventKind::PullRequest => &["opened", "synchronize", "reopened"],
            other => other.activity_types(),
        }
    }
}

/// Filters under one event.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// Activity types (the payload's `action`) that fire the trigger.
    pub types: Option<Vec<Spanned<String>>>,
    /// Base branches (pull_request only), GitHub filter patterns; `!` excludes.
    pub branches: Option<Vec<Spanned<String>>>,
    /// Base branches to skip (pull_request only).
    #[serde(rename = "branches-ignore")]
    pub branches_ignore: Option<Vec<Spanned<String>>>,
}

/// The `on:` value, in any of its three shapes.
#[derive(Debug, Default)]
pub struct On {
    pub events: BTreeMap<EventKind, EventFilter>,
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
                let kind = EventKind::from_name(name).ok_or_else(|| unknown_event(name))?;
                let mut on = On::default();
                on.events.insert(kind, EventFilter::default());
                Ok(on)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<On, A::Error> {
                let mut on = On::default();
                while let Some(name) = seq.next_element::<String>()? {
                    let kind = EventKind::from_name(&name).ok_or_else(|| unknown_event(&name))?;
                    on.events.insert(kind, EventFilter::default());
                }
                Ok(on)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<On, A::Error> {
                let mut on = On::default();
                while let Some(name) = map.next_key::<String>()? {
                    let kind = EventKind::from_name(&name).ok_or_else(|| unknown_event(&name))?;
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
