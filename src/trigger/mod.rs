//! Trigger files: loading and checking them ([`load`]), and deciding which fire for an event ([`TriggerSet::evaluate`]).

pub mod load;
pub mod model;
pub mod pattern;
pub mod template;

use std::collections::HashMap;
use std::path::PathBuf;

use minijinja::Environment;

use crate::queue::JobSpec;
use crate::source::event::Event;
pub use model::{EventKind, OutputKind};
use pattern::PatternList;

/// A checked trigger, ready to match.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// The file name without extension; it names jobs and branches.
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub events: HashMap<EventKind, Filter>,
    pub agent: String,
    pub prompt: String,
    pub output: OutputKind,
}

/// The checked filters under one event.
#[derive(Clone, Debug)]
pub struct Filter {
    pub types: Vec<String>,
    pub branches: Option<PatternList>,
    pub branches_ignore: Option<PatternList>,
}

/// Why a trigger did not fire for an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

/// What a trigger made of an event: a job to run, or the first filter that stopped it.
#[derive(Debug)]
pub enum Decision {
    Fire(Result<Box<JobSpec>, String>),
    Skip(Skip),
}

/// All loaded triggers, indexed by event.
pub struct TriggerSet {
    triggers: Vec<Trigger>,
    by_event: HashMap<EventKind, Vec<usize>>,
    env: Environment<'static>,
}

impl TriggerSet {
    pub fn new(triggers: Vec<Trigger>) -> TriggerSet {
        let mut by_event: HashMap<EventKind, Vec<usize>> = HashMap::new();
        for (i, t) in triggers.iter().enumerate() {
            for kind in t.events.keys() {
                by_event.entry(*kind).or_default().push(i);
            }
        }
        TriggerSet {
            triggers,
            by_event,
            env: template::environment(),
        }
    }

    pub fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }

    /// The triggers that fire for `event`, each with its rendered job (or the error that stopped rendering).
    pub fn fired<'a>(&'a self, event: &Event) -> Vec<(&'a Trigger, Result<Box<JobSpec>, String>)> {
        let Some(kind) = EventKind::from_name(&event.name) else {
            return Vec::new();
        };
        let candidates = self
            .by_event
            .get(&kind)
            .map(Vec::as_slice)
            .unwrap_or_default();
        candidates
            .iter()
            .map(|&i| &self.triggers[i])
            .filter_map(|t| match self.evaluate(t, event) {
                Decision::Fire(job) => Some((t, job)),
                Decision::Skip(_) => None,
            })
            .collect()
    }

    /// What `trigger` makes of `event`.
    pub fn evaluate(&self, trigger: &Trigger, event: &Event) -> Decision {
        let skip = |reason: String| Decision::Skip(Skip(reason));
        let Some(filter) = EventKind::from_name(&event.name).and_then(|k| trigger.events.get(&k))
        else {
            return skip(format!("it does not trigger on `{}`", event.name));
        };
        let action = event.action.as_deref().unwrap_or_default();
        if !filter.types.iter().any(|t| t == action) {
            return skip(format!(
                "type `{action}` is not one of [{}]",
                filter.types.join(", ")
            ));
        }
        let Some(repository) = &event.repository else {
            return skip("the event has no repository".to_owned());
        };
        if filter.branches.is_some() || filter.branches_ignore.is_some() {
            let Some(pr) = &event.pull_request else {
                return skip("branch filters need a pull request".to_owned());
            };
            if let Some(branches) = &filter.branches
                && !branches.matches(&pr.base_ref)
            {
                return skip(format!(
                    "base branch `{}` does not match branches {:?}",
                    pr.base_ref,
                    branches.sources()
                ));
            }
            if let Some(ignore) = &filter.branches_ignore
                && ignore.matches(&pr.base_ref)
            {
                return skip(format!(
                    "base branch `{}` matches branches-ignore {:?}",
                    pr.base_ref,
                    ignore.sources()
                ));
            }
        }
        let ctx = template::context(event);
        let job = template::render(&self.env, &trigger.prompt, &ctx)
            .map_err(|e| {
                format!(
                    "the prompt of trigger `{}` did not render: {e}",
                    trigger.name
                )
            })
            .map(|prompt| Box::new(JobSpec::new(trigger, event, repository, prompt)));
        Decision::Fire(job)
    }
}
