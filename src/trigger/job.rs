//! The job a trigger makes of an event: its spec, frozen when the delivery is matched, which the queue stores
//! and a worker runs.

use serde::{Deserialize, Serialize};

use crate::ids::{InstallationId, RepoName};
use crate::source::event::{Event, PullFacts, Repository};
use crate::trigger::{Limits, OutputKind, Skills, Trigger, VerifyFail, VerifyStep};

/// A job as matched: everything needed to run it, frozen when its delivery was matched, so a later change of
/// the trigger file does not change a queued job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub trigger: String,
    /// Keep `agent` the second field: Postgres reads it from the stored spec's text, as the first
    /// `"agent":"` after `trigger` (migrations/postgres/0003_fair_ops.sql), because its JSON functions refuse
    /// the `\u0000` hostile text can carry.
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
    /// The pull request the job is about, as it was when the job was matched (also for a comment on it).
    #[serde(default)]
    pub pull: Option<PullFacts>,
    /// How many of nightshift's own outputs led to this job: 0 for an event a person or another app caused,
    /// 1 + the depth of the job whose output set it off for one nightshift caused.
    #[serde(default)]
    pub depth: u32,
    /// The pull request's body (output `body`, rendered); nightshift adds the agent's message, `Closes #N`
    /// and its footer.
    #[serde(default)]
    pub output_body: Option<String>,
    /// The issue's dedupe key (output `dedupe`, rendered); None or empty: every job files a new issue.
    #[serde(default)]
    pub dedupe_key: Option<String>,
    /// Whether a progress comment is posted and edited (trigger `progress`, default true).
    #[serde(default = "yes")]
    pub progress: bool,
    /// The trigger's own `limits:` (the service's apply where it says nothing).
    #[serde(default)]
    pub limits: Limits,
    /// The steps run after the agent, before anything is delivered: the trigger's `verify:`, else the
    /// service default for the repository (resolved when the job is matched).
    #[serde(default)]
    pub verify: Vec<VerifyStep>,
    /// How many more times the agent runs, given the failure, while a step fails.
    #[serde(default = "default_rounds")]
    pub verify_rounds: u32,
    /// What a pull request whose steps still fail becomes.
    #[serde(default)]
    pub verify_fail: VerifyFail,
}

fn yes() -> bool {
    true
}

fn default_rounds() -> u32 {
    crate::trigger::verify::DEFAULT_VERIFY_ROUNDS
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
            pull: None,
            depth: 0,
            output_body: None,
            dedupe_key: None,
            progress: trigger.progress,
            limits: trigger.limits.clone(),
            verify: trigger.verify.clone().unwrap_or_default(),
            verify_rounds: trigger
                .verify_rounds
                .unwrap_or(crate::trigger::verify::DEFAULT_VERIFY_ROUNDS),
            verify_fail: trigger.verify_fail,
        }
    }

    /// Freezes the pull request's facts: the job checks out its head, and works read-only on a fork's code
    /// when the trigger says `forks: read_only`.
    pub fn with_pull(mut self, facts: PullFacts, forks: crate::trigger::Forks) -> JobSpec {
        self.head_sha = Some(facts.head_sha.clone());
        self.is_pull_request = true;
        self.read_only = forks == crate::trigger::Forks::ReadOnly && facts.from_fork;
        self.pull = Some(facts);
        self
    }
}
