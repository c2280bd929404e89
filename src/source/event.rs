//! A GitHub event parsed at the edge: the fields the pipeline relies on, typed, plus the raw payload for
//! trigger templates and the agent.

use serde::Deserialize;

use crate::ids::{InstallationId, RepoName};

/// GitHub considers only the first 300 changed files of a push or pull request for path filters; a push's
/// are kept up to there.
pub const MAX_CHANGED_FILES: usize = 300;

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
    /// Who made the run of a `workflow_run` event: the actor of its first attempt and the one who
    /// (re-)ran it.
    pub run_actors: Vec<Actor>,
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

impl Actor {
    fn from_raw(user: RawUser) -> Actor {
        Actor {
            is_bot: user.kind.as_deref() == Some("Bot") || user.login.ends_with("[bot]"),
            login: user.login,
        }
    }
}

/// Someone whose standing with the repository decides whether a trigger may fire: their login, whether
/// they are a bot, and their author association when the payload states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub login: String,
    pub is_bot: bool,
    pub association: Option<String>,
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
    pub author: Option<Actor>,
}

#[derive(Clone, Debug)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    pub base_ref: String,
    pub head_sha: String,
    pub labels: Vec<String>,
    pub author_association: Option<String>,
    pub author: Option<Actor>,
    /// True when the head branch lives in another repository (a fork), or its repository is gone.
    pub from_fork: bool,
    /// What a job on it freezes: its head and base, where the head lives, its state.
    pub facts: PullFacts,
}

/// A pull request's facts as they were when its job was matched: the job checks out `head_sha`, a review
/// is posted on it, and whether it comes from a fork decides `forks:` and trust. From the payload for
/// `pull_request*` events; asked of GitHub (`GET /repos/{o}/{r}/pulls/{n}`) for a comment on a pull request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullFacts {
    pub number: u64,
    pub head_sha: String,
    /// The head branch's name (in `head_repo`).
    pub head_ref: String,
    /// The head repository's full name; None when it was deleted.
    pub head_repo: Option<String>,
    pub base_ref: String,
    pub base_sha: String,
    /// The head lives in another repository than the base (a fork), or its repository is gone.
    pub from_fork: bool,
    /// `open` or `closed`.
    pub state: String,
}

impl PullFacts {
    /// The facts of a pull request object (a payload's `pull_request`, or GitHub's answer to `pulls/get`).
    pub fn from_value(pr: &serde_json::Value) -> Result<PullFacts, serde_json::Error> {
        let raw = RawPullRequest::deserialize(pr)?;
        Ok(raw.facts())
    }
}

/// A comment or review: its text and how its author relates to the repository.
#[derive(Clone, Debug)]
pub struct Authored {
    /// The comment's or review's id.
    pub id: Option<u64>,
    pub body: String,
    pub author_association: Option<String>,
    pub author: Option<Actor>,
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
    /// Whether the run's commit may come from a fork: its head repository is another one (workflow runs),
    /// a listed pull request's head is in another repository, or (check runs and suites) no pull request
    /// of this repository is listed, so where the commit came from is unknown.
    pub from_fork: bool,
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
    user: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawPullRequest {
    number: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    state: String,
    base: RawRef,
    head: RawHead,
    #[serde(default)]
    labels: Vec<RawLabel>,
    author_association: Option<String>,
    user: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawRef {
    #[serde(rename = "ref")]
    ref_name: String,
    #[serde(default)]
    sha: String,
    repo: Option<RawRepoRef>,
}

#[derive(Deserialize)]
struct RawHead {
    sha: String,
    #[serde(rename = "ref", default)]
    ref_name: String,
    repo: Option<RawRepoRef>,
}

impl RawPullRequest {
    fn head_is_foreign(&self) -> bool {
        match (&self.head.repo, &self.base.repo) {
            (Some(head), Some(base)) => !head.same(base),
            // The head repository was deleted, or the payload does not say: not known to be ours.
            _ => true,
        }
    }

    fn facts(&self) -> PullFacts {
        PullFacts {
            number: self.number,
            head_sha: self.head.sha.clone(),
            head_ref: self.head.ref_name.clone(),
            head_repo: self.head.repo.as_ref().and_then(|r| r.full_name.clone()),
            base_ref: self.base.ref_name.clone(),
            base_sha: self.base.sha.clone(),
            from_fork: self.head_is_foreign(),
            state: self.state.clone(),
        }
    }
}

/// A repository as a pull request's head or base names it; which fields are present varies by event.
#[derive(Deserialize)]
struct RawRepoRef {
    id: Option<u64>,
    full_name: Option<String>,
    url: Option<String>,
}

impl RawRepoRef {
    fn same(&self, other: &RawRepoRef) -> bool {
        if let (Some(a), Some(b)) = (self.id, other.id) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (&self.full_name, &other.full_name) {
            return a.eq_ignore_ascii_case(b);
        }
        matches!((&self.url, &other.url), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
    }
}

#[derive(Deserialize)]
struct RawAuthored {
    id: Option<u64>,
    body: Option<String>,
    author_association: Option<String>,
    user: Option<RawUser>,
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
    pull_requests: Vec<RawRunPull>,
    check_suite: Option<Box<RawRun>>,
    head_repository: Option<RawRepoRef>,
    actor: Option<RawUser>,
    triggering_actor: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawRunPull {
    number: u64,
    head: Option<RawRunPullRef>,
    base: Option<RawRunPullRef>,
}

#[derive(Deserialize)]
struct RawRunPullRef {
    repo: Option<RawRepoRef>,
}

fn names(labels: Vec<RawLabel>) -> Vec<String> {
    labels.into_iter().map(|l| l.name).collect()
}

/// What the webhook endpoint stores beside a payload, read without building the payload's tree: its action,
/// repository and installation. Everything else is read by the dispatcher after the answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Indexed {
    pub action: Option<String>,
    /// `repository.full_name` when it is a valid repository name (the full parse keeps the same ones).
    pub repo: Option<String>,
    pub installation_id: Option<i64>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    action: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    repository: Option<HeadRepository<'a>>,
    installation: Option<RawInstallation>,
}

#[derive(Deserialize)]
struct HeadRepository<'a> {
    #[serde(borrow)]
    full_name: std::borrow::Cow<'a, str>,
}

impl Indexed {
    /// Reads the indexed fields of a payload, checking that the whole body is one JSON object. The rest of
    /// the payload is skipped, not kept: no allocation for it.
    pub fn parse(payload: &[u8]) -> Result<Indexed, serde_json::Error> {
        let start = payload.iter().find(|b| !b.is_ascii_whitespace());
        if start != Some(&b'{') {
            return Err(serde::de::Error::custom("the payload is not a JSON object"));
        }
        let head: Head = serde_json::from_slice(payload)?;
        Ok(Indexed {
            action: head.action.map(String::from),
            repo: head
                .repository
                .and_then(|r| RepoName::parse(&r.full_name).map(|_| r.full_name.into_owned())),
            installation_id: head.installation.map(|i| i.id as i64),
        })
    }
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
                // The first MAX_CHANGED_FILES distinct paths, in order, each looked up once: a push of
                // 100 commits of 3,000 paths each was a linear scan per path (10^10 comparisons, minutes of
                // a runtime thread), for paths no filter ever reads past the first 300.
                let mut changed_files: Vec<String> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                'commits: for commit in raw.commits.unwrap_or_default() {
                    for file in commit
                        .added
                        .into_iter()
                        .chain(commit.removed)
                        .chain(commit.modified)
                    {
                        if changed_files.len() == MAX_CHANGED_FILES {
                            break 'commits;
                        }
                        if seen.insert(file.clone()) {
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
        let base_repo = payload["repository"]["full_name"]
            .as_str()
            .map(str::to_owned);
        let is_workflow_run = raw.workflow_run.is_some();
        let mut run_actors = Vec::new();
        let run = raw
            .check_run
            .or(raw.check_suite)
            .or(raw.workflow_run)
            .map(|r| {
                let suite_branch = r.check_suite.as_ref().and_then(|s| s.head_branch.clone());
                let cross_repo = r.pull_requests.iter().any(|p| {
                    match (
                        p.head.as_ref().and_then(|h| h.repo.as_ref()),
                        p.base.as_ref().and_then(|b| b.repo.as_ref()),
                    ) {
                        (Some(head), Some(base)) => !head.same(base),
                        _ => true,
                    }
                });
                let from_fork = if is_workflow_run {
                    let head = r
                        .head_repository
                        .as_ref()
                        .and_then(|h| h.full_name.as_deref());
                    cross_repo
                        || match (head, base_repo.as_deref()) {
                            (Some(head), Some(base)) => !head.eq_ignore_ascii_case(base),
                            _ => true,
                        }
                } else {
                    cross_repo || r.pull_requests.is_empty()
                };
                for user in [r.actor, r.triggering_actor].into_iter().flatten() {
                    let actor = Actor::from_raw(user);
                    if !run_actors.iter().any(|a: &Actor| a.login == actor.login) {
                        run_actors.push(actor);
                    }
                }
                Run {
                    name: r.name,
                    conclusion: r.conclusion,
                    head_branch: r.head_branch.or(suite_branch),
                    head_sha: r.head_sha,
                    pull_requests: r.pull_requests.into_iter().map(|p| p.number).collect(),
                    from_fork,
                }
            });
        Ok(Event {
            name: name.to_owned(),
            action: raw.action,
            repository,
            installation: raw.installation.map(|i| InstallationId(i.id)),
            sender: raw.sender.map(Actor::from_raw),
            issue: raw.issue.map(|i| Issue {
                number: i.number,
                title: i.title,
                is_pull_request: i.pull_request.is_some_and(|v| !v.is_null()),
                labels: names(i.labels),
                author_association: i.author_association,
                author: i.user.map(Actor::from_raw),
            }),
            pull_request: raw.pull_request.map(|p| PullRequest {
                facts: p.facts(),
                from_fork: p.head_is_foreign(),
                number: p.number,
                title: p.title,
                base_ref: p.base.ref_name,
                head_sha: p.head.sha,
                labels: names(p.labels),
                author_association: p.author_association,
                author: p.user.map(Actor::from_raw),
            }),
            run_actors,
            comment: raw.comment.map(|c| Authored {
                id: c.id,
                body: c.body.unwrap_or_default(),
                author_association: c.author_association,
                author: c.user.map(Actor::from_raw),
            }),
            review: raw.review.map(|r| Authored {
                id: r.id,
                body: r.body.unwrap_or_default(),
                author_association: r.author_association,
                author: r.user.map(Actor::from_raw),
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
    /// or updated. None when the payload does not say (labeling, closing, pushing, runs): then the
    /// dispatcher asks GitHub for the actor's permission, and without an answer the actor is not trusted.
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

    /// Whether the action is one the author of the issue or pull request performs (so the payload's
    /// `author_association` describes whoever set the event off).
    fn authored_action(&self) -> bool {
        matches!(
            self.action.as_deref(),
            Some("opened" | "edited" | "reopened" | "synchronize" | "ready_for_review")
        )
    }

    /// Who set the event off, whose standing decides whether a trigger may fire:
    /// - a comment or review: its author (with the payload's association);
    /// - an issue or pull request opened, edited, reopened, updated or marked ready: its author (with the
    ///   payload's association);
    /// - a workflow run: both the actor of its first attempt and whoever re-ran it (a fork's author causes
    ///   the run; a maintainer re-running it does not make the fork's code trusted);
    /// - anything else (labels, closing, pushes, check runs and suites): the sender, whose association the
    ///   payload does not carry.
    ///
    /// The sender is always included too, so a bot that sends an event about a person's issue still counts.
    pub fn principals(&self) -> Vec<Principal> {
        let principal = |actor: &Actor, association: Option<&String>| Principal {
            login: actor.login.clone(),
            is_bot: actor.is_bot,
            association: association.cloned(),
        };
        let mut found: Vec<Principal> = Vec::new();
        if let Some(c) = self.comment.as_ref().or(self.review.as_ref()) {
            if let Some(author) = c.author.as_ref().or(self.sender.as_ref()) {
                found.push(principal(author, c.author_association.as_ref()));
            }
        } else if self.authored_action() && (self.pull_request.is_some() || self.issue.is_some()) {
            let (author, association) = match &self.pull_request {
                Some(p) => (p.author.as_ref(), p.author_association.as_ref()),
                None => {
                    let i = self.issue.as_ref().expect("checked above");
                    (i.author.as_ref(), i.author_association.as_ref())
                }
            };
            match author {
                Some(author) => found.push(principal(author, association)),
                None => {
                    if let Some(sender) = &self.sender {
                        found.push(principal(sender, association));
                    }
                }
            }
        }
        for actor in &self.run_actors {
            found.push(principal(actor, None));
        }
        if let Some(sender) = &self.sender
            && !found
                .iter()
                .any(|p| p.login.eq_ignore_ascii_case(&sender.login))
        {
            found.push(principal(sender, None));
        }
        found
    }

    /// Whether the code the job would work on may come from a fork: a pull request whose head is in
    /// another repository, or a run whose commit is not known to be this repository's own.
    pub fn from_fork(&self) -> bool {
        if let Some(pr) = &self.pull_request {
            return pr.from_fork;
        }
        self.push.is_none() && self.run.as_ref().is_some_and(|r| r.from_fork)
    }

    /// The texts of the object this event is about that `own` (nightshift's account) wrote itself: the
    /// comment's or review's body, the issue's or pull request's body, a check run's `external_id` (which
    /// only the app that made the run can set). A text someone else wrote is never among them, whatever it
    /// contains.
    pub fn texts_written_by(&self, own: &str) -> Vec<&str> {
        let by = |user: &serde_json::Value| {
            user["login"]
                .as_str()
                .is_some_and(|l| l.eq_ignore_ascii_case(own))
        };
        let p = &*self.payload;
        let mut texts = Vec::new();
        for object in [&p["comment"], &p["review"], &p["issue"], &p["pull_request"]] {
            if by(&object["user"])
                && let Some(body) = object["body"].as_str()
            {
                texts.push(body);
            }
        }
        let sender_is_own = self
            .sender
            .as_ref()
            .is_some_and(|s| s.login.eq_ignore_ascii_case(own));
        if sender_is_own
            && self.name == "check_run"
            && let Some(id) = p["check_run"]["external_id"].as_str()
        {
            texts.push(id);
        }
        texts
    }

    /// The text of the comment or review the event carries.
    pub fn body(&self) -> Option<&str> {
        self.comment
            .as_ref()
            .or(self.review.as_ref())
            .map(|c| c.body.as_str())
    }
}

/// The payload of a scheduled tick: what GitHub's `schedule` event carries (the cron), plus the repository
/// and installation so the job knows where to work.
pub fn schedule_payload(
    cron: &str,
    timezone: &str,
    repo: &crate::store::KnownRepo,
    installation: Option<i64>,
) -> serde_json::Value {
    let (owner, name) = repo
        .full_name
        .split_once('/')
        .unwrap_or((&repo.full_name, ""));
    let mut v = serde_json::json!({
        "schedule": cron,
        "timezone": timezone,
        "repository": {
            "full_name": repo.full_name,
            "name": name,
            "owner": { "login": owner },
            "clone_url": repo.clone_url,
            "default_branch": repo.default_branch,
        },
    });
    if let Some(id) = installation.or(repo.installation_id) {
        v["installation"] = serde_json::json!({ "id": id });
    }
    v
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

    /// A push of 100 commits of 3,000 paths each (GitHub allows 2,048 and 3,000): its changed files are the
    /// first 300 distinct paths, in order, a repeat counted once. Before, every path was looked for in the
    /// list so far: 10^10 comparisons on a runtime thread for one delivery anyone who can push could send.
    #[test]
    fn a_huge_push_keeps_its_first_distinct_changed_files() {
        let mut payload: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!(
                "{}/tests/fixtures/webhooks/push/default.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        let commits: Vec<serde_json::Value> = (0..100)
            .map(|c| {
                let mut added: Vec<String> = (0..3000).map(|f| format!("dir/{c}/{f}.txt")).collect();
                added[0] = "shared.txt".into();
                serde_json::json!({"id": format!("{c:040x}"), "added": added, "removed": [], "modified": []})
            })
            .collect();
        payload["commits"] = serde_json::Value::Array(commits);
        let event = Event::parse("push", &serde_json::to_vec(&payload).unwrap()).unwrap();
        let files = &event.push.unwrap().changed_files;
        assert_eq!(files.len(), MAX_CHANGED_FILES);
        assert_eq!(files[0], "shared.txt");
        assert_eq!(files[1], "dir/0/1.txt");
        assert_eq!(files.iter().filter(|f| *f == "shared.txt").count(), 1);
        assert_eq!(files[299], "dir/0/299.txt");
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
                let event = Event::parse(&name, &text)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.path().display()));
                // What the webhook endpoint indexes without the full parse agrees with it.
                let indexed = Indexed::parse(&text).unwrap();
                assert_eq!(
                    indexed,
                    Indexed {
                        action: event.action.clone(),
                        repo: event.repository.map(|r| r.full_name.to_string()),
                        installation_id: event.installation.map(|i| i.0 as i64),
                    },
                    "{}",
                    file.path().display()
                );
                count += 1;
            }
        }
        assert_eq!(count, 124);
    }

    #[test]
    fn the_index_reads_only_a_json_object_and_keeps_only_valid_repository_names() {
        for bad in [
            &b"[]"[..],
            b"\"text\"",
            b"null",
            b"{",
            b"{} trailing",
            b"{\"installation\": {\"id\": \"1\"}}",
        ] {
            assert!(
                Indexed::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let odd = br#" {"action": "opened", "repository": {"full_name": "../../etc"}, "extra": [1, {"a": null}]}"#;
        let indexed = Indexed::parse(odd).unwrap();
        assert_eq!(indexed.action.as_deref(), Some("opened"));
        assert_eq!(indexed.repo, None);
        let escaped = br#"{"repository": {"full_name": "octo/cat"}, "installation": {"id": 7}}"#;
        let indexed = Indexed::parse(escaped).unwrap();
        assert_eq!(indexed.repo.as_deref(), Some("octo/cat"));
        assert_eq!(indexed.installation_id, Some(7));
    }

    #[test]
    fn events_expose_what_filters_need() {
        let labeled = fixture("issues/labeled.json");
        assert_eq!(labeled.labels(), ["bug"]);
        assert_eq!(
            labeled.author_association(),
            None,
            "the payload does not say how the labeler relates to the repository"
        );
        assert_eq!(
            labeled.principals(),
            [Principal {
                login: "Codertocat".into(),
                is_bot: false,
                association: None
            }],
            "the labeler is looked up"
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
        assert!(!pr.from_fork());
    }

    #[test]
    fn runs_count_who_started_and_who_reran_them_and_know_forks() {
        let mut payload: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!(
                "{}/tests/fixtures/webhooks/workflow_run/completed.json",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
        )
        .unwrap();
        payload["workflow_run"]["actor"]["login"] = "fork-author".into();
        payload["workflow_run"]["triggering_actor"]["login"] = "maintainer".into();
        payload["sender"]["login"] = "maintainer".into();
        payload["workflow_run"]["head_repository"]["full_name"] =
            payload["repository"]["full_name"].clone();
        let run = Event::from_value("workflow_run", payload.clone()).unwrap();
        let logins: Vec<String> = run.principals().into_iter().map(|p| p.login).collect();
        assert_eq!(logins, ["fork-author", "maintainer"]);
        assert!(!run.from_fork());
        payload["workflow_run"]["head_repository"]["full_name"] = "mallory/fork".into();
        assert!(
            Event::from_value("workflow_run", payload)
                .unwrap()
                .from_fork()
        );
    }
}
