//! A GitHub event parsed at the edge: the fields the pipeline relies on, typed, plus the raw payload for
//! trigger templates and the agent.

use serde::Deserialize;

use crate::ids::{InstallationId, RepoName};

/// One webhook event: its `X-GitHub-Event` name and payload.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub action: Option<String>,
    pub repository: Option<Repository>,
    pub installation: Option<InstallationId>,
    pub issue: Option<Issue>,
    pub pull_request: Option<PullRequest>,
    /// The whole payload, for templates (`event.*`) and `$NIGHTSHIFT_EVENT_PATH`.
    pub payload: serde_json::Value,
}

#[derive(Clone, Debug)]
pub struct Repository {
    pub full_name: RepoName,
    pub clone_url: String,
    pub default_branch: String,
}

/// The issue (or pull request, seen as an issue) an event is about.
#[derive(Clone, Debug)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    /// True for comments on pull requests, which GitHub sends as `issue_comment` on an issue.
    pub is_pull_request: bool,
}

#[derive(Clone, Debug)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    pub base_ref: String,
    pub head_sha: String,
}

#[derive(Deserialize)]
struct Raw {
    action: Option<String>,
    repository: Option<RawRepository>,
    installation: Option<RawInstallation>,
    issue: Option<RawIssue>,
    pull_request: Option<RawPullRequest>,
}

#[derive(Deserialize)]
struct RawRepository {
    full_name: String,
    clone_url: Option<String>,
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct RawInstallation {
    id: u64,
}

#[derive(Deserialize)]
struct RawIssue {
    number: u64,
    #[serde(default)]
    title: String,
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawPullRequest {
    number: u64,
    #[serde(default)]
    title: String,
    base: RawRef,
    head: RawHead,
}

#[derive(Deserialize)]
struct RawRef {
    #[serde(rename = "ref")]
    ref_name: String,
}

#[derive(Deserialize)]
struct RawHead {
    sha: String,
}

impl Event {
    /// Parses a payload. Fails only when the body is not a JSON object or a field we rely on has the wrong
    /// shape; events without a repository (`ping`, `installation`) parse with `repository: None`.
    pub fn parse(name: &str, payload: &[u8]) -> Result<Event, serde_json::Error> {
        let payload: serde_json::Value = serde_json::from_slice(payload)?;
        if !payload.is_object() {
            return Err(serde::de::Error::custom("the payload is not a JSON object"));
        }
        let raw = Raw::deserialize(&payload)?;
        let repository = raw.repository.and_then(|r| {
            let full_name = RepoName::parse(&r.full_name)?;
            Some(Repository {
                clone_url: r
                    .clone_url
                    .unwrap_or_else(|| format!("https://github.com/{full_name}.git")),
                default_branch: r.default_branch.unwrap_or_else(|| "main".to_owned()),
                full_name,
            })
        });
        Ok(Event {
            name: name.to_owned(),
            action: raw.action,
            repository,
            installation: raw.installation.map(|i| InstallationId(i.id)),
            issue: raw.issue.map(|i| Issue {
                number: i.number,
                title: i.title,
                is_pull_request: i.pull_request.is_some_and(|v| !v.is_null()),
            }),
            pull_request: raw.pull_request.map(|p| PullRequest {
                number: p.number,
                title: p.title,
                base_ref: p.base.ref_name,
                head_sha: p.head.sha,
            }),
            payload,
        })
    }

    /// The issue or pull request number the event is about, if any.
    pub fn number(&self) -> Option<u64> {
        self.pull_request
            .as_ref()
            .map(|p| p.number)
            .or(self.issue.as_ref().map(|i| i.number))
    }
}
