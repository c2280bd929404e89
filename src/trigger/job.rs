//! The job a trigger makes of an event: its spec, frozen when the delivery is matched, which the queue stores
//! and a worker runs.

use serde::{Deserialize, Serialize};

use crate::ids::{InstallationId, RepoName};
use crate::source::event::{Event, Repository};
use crate::trigger::{Limits, OutputKind, Skills, Trigger};

/// A job as matched: everything needed to run it, frozen when its delivery was matched, so a later change of
/// the trigger file does not change a queued job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub trigger: String,
    pub agent: String,
    pub prompt: String,
    pub output: OutputKind,
    /// The output's title (pull_request, issue), rendered.
    #[serde(default)]
    pub output_title: Option<String>,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub labels: Vec<String>,
    /// The check run's name (check_run output).
    #[serde(default)]
    pub check_name: Option<String>,
    /// The trigger's own agent timeout, overriding the profile's.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// The trigger's turn limit, lowering the profile's.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// The trigger's cap on the final message, lowering the profile's.
    #[serde(default)]
    pub max_output: Option<usize>,
    /// Skills named by the trigger; `all_skills` for `skills: auto`.
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub all_skills: bool,
    /// The concurrency group (rendered) and whether a new job cancels the group's others.
    #[serde(default)]
    pub concurrency_group: Option<String>,
    #[serde(default)]
    pub cancel_in_progress: bool,
    pub event: String,
    pub action: Option<String>,
    pub repo: RepoName,
    pub installation: Option<InstallationId>,
    pub clone_url: String,
    pub default_branch: String,
    /// The commit to check out (a pull request's head, a pushed commit, a run's commit); the default
    /// branch's tip when None.
    pub head_sha: Option<String>,
    /// The issue or pull request the event is about.
    pub number: Option<u64>,
    pub title: Option<String>,
    pub is_pull_request: bool,
    /// The job works on a fork's code with `forks: read_only`: the agent's worktree is mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// The trigger's own `limits:` (the service's apply where it says nothing).
    #[serde(default)]
    pub limits: Limits,
}

impl JobSpec {
    pub fn new(
        trigger: &Trigger,
        event: &Event,
        repository: &Repository,
        prompt: String,
        output_title: Option<String>,
        concurrency_group: Option<String>,
    ) -> JobSpec {
        let pr = event.pull_request.as_ref();
        let issue = event.issue.as_ref();
        let options = &trigger.output.options;
        JobSpec {
            trigger: trigger.name.clone(),
            agent: trigger.agent.clone(),
            prompt,
            output: trigger.output.kind,
            output_title,
            draft: options.draft.unwrap_or(false),
            labels: options.labels.clone().unwrap_or_default(),
            check_name: options.name.clone(),
            timeout_secs: trigger.timeout.map(|t| t.as_secs()),
            max_turns: trigger.max_turns,
            max_output: trigger.max_output,
            skills: match &trigger.skills {
                Some(Skills::Named(names)) => names.clone(),
                _ => Vec::new(),
            },
            all_skills: trigger.skills == Some(Skills::Auto),
            concurrency_group,
            cancel_in_progress: trigger
                .concurrency
                .as_ref()
                .is_some_and(|c| c.cancel_in_progress),
            event: event.name.clone(),
            action: event.action.clone(),
            repo: repository.full_name.clone(),
            installation: event.installation,
            clone_url: repository.clone_url.clone(),
            default_branch: repository.default_branch.clone(),
            head_sha: event.commit().map(str::to_owned),
            number: event.number(),
            title: pr
                .map(|p| p.title.clone())
                .or_else(|| issue.map(|i| i.title.clone())),
            is_pull_request: pr.is_some()
                || issue.is_some_and(|i| i.is_pull_request)
                || event
                    .run
                    .as_ref()
                    .is_some_and(|r| !r.pull_requests.is_empty()),
            read_only: trigger.forks == crate::trigger::Forks::ReadOnly && event.from_fork(),
            limits: trigger.limits.clone(),
        }
    }
}
