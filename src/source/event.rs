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
    pub sender: Option<Actor>,
    pub issue: Option<Issue>,
    pub pull_request: Option<PullRequest>,
    pub comment: Option<Authored>,
    pub review: Option<Authored>,
    /// The label just added or removed (`labeled` / `unlabeled`).
    pub label: Option<String>,
    pub push: Option<Push>,
    /// The run or suite of `check_run`, `check_suite` and `workflow_run` events.
    pub run: Option<Run>,
    /// For a `schedule` event: the cron that ticked and its time zone.
    pub schedule: Option<(String, String)>,
    /// The whole payload, for templates (`event.*`) and `$NIGHTSHIFT_EVENT_PATH`.
    pub payload: std::sync::Arc<serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct Repository {
    pub full_name: RepoName,
    pub clone_url: String,
    pub default_branch: String,
}

#[derive(Clone, Debug)]
pub struct Actor {
    pub login: String,
    pub is_bot: bool,
}

/// The issue (or pull request, seen as an issue) an event is about.
#[derive(Clone, Debug)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    /// True for comments on pull requests, which GitHub sends as `issue_comment` on an issue.
    pub is_pull_request: bool,
    pub labels: Vec<String>,
    pub author_association: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    pub base_ref: String,
    pub head_sha: String,
    pub labels: Vec<String>,
    pub author_association: Option<String>,
}

/// A comment or review: its text and how its author relates to the repository.
#[derive(Clone, Debug)]
pub struct Authored {
    pub body: String,
    pub author_association: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Push {
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1.0`.
    pub git_ref: String,
    pub after: String,
    pub deleted: bool,
    /// Files added, removed or modified by the pushed commits, in order, without repeats.
    pub changed_files: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Run {
    /// The check run's or workflow's name (none for a check suite).
    pub name: Option<String>,
    pub conclusion: Option<String>,
    pub head_branch: Option<String>,
    pub head_sha: Option<String>,
    /// Pull requests the run belongs to.
    pub pull_requests: Vec<u64>,
}

#[derive(Deserialize)]
struct Raw {
    action: Option<String>,
    repository: Option<RawRepository>,
    installation: Option<RawInstallation>,
    sender: Option<RawUser>,
    issue: Option<RawIssue>,
    pull_request: Option<RawPullRequest>,
    comment: Option<RawAuthored>,
    review: Option<RawAuthored>,
    label: Option<RawLabel>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    commits: Option<Vec<RawCommit>>,
    check_run: Option<RawRun>,
    check_suite: Option<RawRun>,
    workflow_run: Option<RawRun>,
    schedule: Option<String>,
    timezone: Option<String>,
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
struct RawUser {
    login: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RawLabel {
    name: String,
}

#[derive(Deserialize)]
struct RawIssue {
    number: u64,
    #[serde(default)]
    title: String,
    pull_request: Option<serde_json::Value>,
    #[serde(default)]
    labels: Vec<RawLabel>,
    author_association: Option<String>,
}

#[derive(Deserialize)]
struct RawPullRequest {
    number: u64,
    #[serde(default)]
    title: String,
    base: RawRef,
    head: RawHead,
    #[serde(default)]
    labels: Vec<RawLabel>,
    author_association: Option<String>,
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

#[derive(Deserialize)]
struct RawAuthored {
    body: Option<String>,
    author_association: Option<String>,
}

#[derive(Deserialize)]
struct RawCommit {
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

#[derive(Deserialize)]
struct RawRun {
    name: Option<String>,
    conclusion: Option<String>,
    head_branch: Option<String>,
    head_sha: Option<String>,
    #[serde(default)]
    pull_requests: Vec<RawNumber>,
    check_suite: Option<Box<RawRun>>,
}

#[derive(Deserialize)]
struct RawNumber {
    number: u64,
}

fn names(labels: Vec<RawLabel>) -> Vec<String> {
    labels.into_iter().map(|l| l.name).collect()
}

impl Event {
    /// Parses a payload. Fails only when the body is not a JSON object or a field we rely on has the wrong
    /// shape; events without a repository (`ping`, `installation`) parse with `repository: None`.
    pub fn parse(name: &str, payload: &[u8]) -> Result<Event, serde_json::Error> {
        let payload: serde_json::Value = serde_json::from_slice(payload)?;
        Event::from_value(name, payload)
    }

    pub fn from_value(name: &str, payload: serde_json::Value) -> Result<Event, serde_json::Error> {
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
                // Empty when the payload does not say (a scheduled tick for a repository not seen yet): the
                // mirror's HEAD names it then.
                default_branch: r.default_branch.unwrap_or_default(),
                full_name,
            })
        });
        let push = match (name, raw.git_ref, raw.after) {
            ("push", Some(git_ref), Some(after)) => {
                let mut changed_files: Vec<String> = Vec::new();
                for commit in raw.commits.unwrap_or_default() {
                    for file in commit
                        .added
                        .into_iter()
                        .chain(commit.removed)
                        .chain(commit.modified)
                    {
                        if !changed_files.contains(&file) {
                            changed_files.push(file);
                        }
                    }
                }
                Some(Push {
                    git_ref,
                    after,
                    deleted: raw.deleted,
                    changed_files,
                })
            }
            _ => None,
        };
        let run = raw
            .check_run
            .or(raw.check_suite)
            .or(raw.workflow_run)
            .map(|r| {
                let suite_branch = r.check_suite.as_ref().and_then(|s| s.head_branch.clone());
                Run {
                    name: r.name,
                    conclusion: r.conclusion,
                    head_branch: r.head_branch.or(suite_branch),
                    head_sha: r.head_sha,
                    pull_requests: r.pull_requests.into_iter().map(|p| p.number).collect(),
                }
            });
        Ok(Event {
            name: name.to_owned(),
            action: raw.action,
            repository,
            installation: raw.installation.map(|i| InstallationId(i.id)),
            sender: raw.sender.map(|s| Actor {
                is_bot: s.kind.as_deref() == Some("Bot") || s.login.ends_with("[bot]"),
                login: s.login,
            }),
            issue: raw.issue.map(|i| Issue {
                number: i.number,
                title: i.title,
                is_pull_request: i.pull_request.is_some_and(|v| !v.is_null()),
                labels: names(i.labels),
                author_association: i.author_association,
            }),
            pull_request: raw.pull_request.map(|p| PullRequest {
                number: p.number,
                title: p.title,
                base_ref: p.base.ref_name,
                head_sha: p.head.sha,
                labels: names(p.labels),
                author_association: p.author_association,
            }),
            comment: raw.comment.map(|c| Authored {
                body: c.body.unwrap_or_default(),
                author_association: c.author_association,
            }),
            review: raw.review.map(|r| Authored {
                body: r.body.unwrap_or_default(),
                author_association: r.author_association,
            }),
            label: raw.label.map(|l| l.name),
            push,
            run,
            schedule: match (name, raw.schedule) {
                ("schedule", Some(cron)) => {
                    Some((cron, raw.timezone.unwrap_or_else(|| "UTC".to_owned())))
                }
                _ => None,
            },
            payload: std::sync::Arc::new(payload),
        })
    }

    /// The issue or pull request the event is about, if any.
    pub fn number(&self) -> Option<u64> {
        self.pull_request
            .as_ref()
            .map(|p| p.number)
            .or(self.issue.as_ref().map(|i| i.number))
            .or_else(|| {
                self.run
                    .as_ref()
                    .and_then(|r| r.pull_requests.first().copied())
            })
    }

    /// The commit a job for this event works on, when it is not the default branch's tip.
    pub fn commit(&self) -> Option<&str> {
        if let Some(pr) = &self.pull_request {
            return Some(&pr.head_sha);
        }
        if let Some(push) = self.push.as_ref().filter(|p| !p.deleted) {
            return Some(&push.after);
        }
        self.run.as_ref().and_then(|r| r.head_sha.as_deref())
    }

    /// The branch the `branches` filter looks at: a pull request's base, a pushed branch, a run's branch.
    pub fn branch(&self) -> Option<&str> {
        if let Some(pr) = &self.pull_request {
            return Some(&pr.base_ref);
        }
        if let Some(push) = &self.push {
            return push.git_ref.strip_prefix("refs/heads/");
        }
        self.run.as_ref().and_then(|r| r.head_branch.as_deref())
    }

    /// The pushed tag, for a tag push.
    pub fn tag(&self) -> Option<&str> {
        self.push
            .as_ref()
            .and_then(|p| p.git_ref.strip_prefix("refs/tags/"))
    }

    /// The labels the `labels` filter looks at: the label just added for `labeled`, otherwise the issue's or
    /// pull request's labels.
    pub fn labels(&self) -> Vec<&str> {
        if self.action.as_deref() == Some("labeled")
            && let Some(label) = &self.label
        {
            return vec![label];
        }
        let labels = self
            .pull_request
            .as_ref()
            .map(|p| &p.labels)
            .or(self.issue.as_ref().map(|i| &i.labels));
        labels
            .map(|l| l.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// How the person who set this event off relates to the repository (`OWNER`, `MEMBER`, ...), where the
    /// payload says: the author of a comment or review, or of an issue or pull request they opened, edited
    /// or updated. None for events only people with access can cause (labeling, pushing, runs).
    pub fn author_association(&self) -> Option<&str> {
        if let Some(c) = self.comment.as_ref().or(self.review.as_ref()) {
            return c.author_association.as_deref();
        }
        let authored = matches!(
            self.action.as_deref(),
            Some("opened" | "edited" | "reopened" | "synchronize" | "ready_for_review")
        );
        if !authored {
            return None;
        }
        self.pull_request
            .as_ref()
            .and_then(|p| p.author_association.as_deref())
            .or(self
                .issue
                .as_ref()
                .and_then(|i| i.author_association.as_deref()))
    }

    /// The text of the comment or review the event carries.
    pub fn body(&self) -> Option<&str> {
        self.comment
            .as_ref()
            .or(self.review.as_ref())
            .map(|c| c.body.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Event {
        let text = std::fs::read(format!(
            "{}/tests/fixtures/webhooks/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        Event::parse(path.split('/').next().unwrap(), &text).unwrap()
    }

    #[test]
    fn every_octokit_example_parses() {
        let root = format!("{}/tests/fixtures/webhooks", env!("CARGO_MANIFEST_DIR"));
        let mut count = 0;
        for dir in std::fs::read_dir(root)
            .unwrap()
            .flatten()
            .filter(|d| d.path().is_dir())
        {
            let name = dir.file_name().into_string().unwrap();
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                let text = std::fs::read(file.path()).unwrap();
                Event::parse(&name, &text)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.path().display()));
                count += 1;
            }
        }
        assert_eq!(count, 124);
    }

    #[test]
    fn events_expose_what_filters_need() {
        let labeled = fixture("issues/labeled.json");
        assert_eq!(labeled.labels(), ["bug"]);
        assert_eq!(
            labeled.author_association(),
            None,
            "labeling needs access; no author check"
        );
        let opened = fixture("issues/opened.json");
        assert_eq!(opened.author_association(), Some("OWNER"));

        let push = fixture("push/default.json");
        assert_eq!((push.tag(), push.branch()), (Some("simple-tag"), None));
        assert!(push.push.as_ref().unwrap().deleted);
        assert_eq!(
            push.commit(),
            None,
            "a deleted ref has no commit to work on"
        );

        let comment = fixture("issue_comment/created.json");
        assert!(comment.body().is_some());
        assert_eq!(comment.number(), Some(1));

        let run = fixture("check_run/completed.json");
        let r = run.run.as_ref().unwrap();
        assert_eq!(
            (r.name.as_deref(), r.conclusion.as_deref()),
            (Some("Octocoders-linter"), Some("success"))
        );
        assert_eq!((run.branch(), run.number()), (Some("changes"), Some(2)));

        let pr = fixture("pull_request/opened.json");
        assert_eq!(pr.branch(), Some("master"));
        assert_eq!(pr.commit().map(str::len), Some(40));
    }
}
