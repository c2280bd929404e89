//! Every text nightshift posts to GitHub, in one place, covered by snapshot tests.

use crate::ids::JobId;

/// The start of the hidden marker in everything nightshift posts: it tells nightshift's own comments from
/// people's (so they never set off triggers) and lets a retried job find what it already posted.
pub const MARKER_PREFIX: &str = "<!-- nightshift:job:";

/// The hidden marker that identifies a job's comment.
pub fn marker(job: JobId) -> String {
    format!("{MARKER_PREFIX}{job} -->")
}

/// GitHub refuses a comment, issue or pull request body, or a check run summary, longer than 65,536
/// characters; an agent's message is cut well before that, leaving room for nightshift's own lines.
pub const MESSAGE_MAX_CHARS: usize = 60_000;

/// `message` as it fits in a GitHub body: whole, or cut at [`MESSAGE_MAX_CHARS`] with a note saying so, with
/// every known secret redacted ([`crate::redact`]). Every agent-written text nightshift posts goes through
/// here (and every whole body through [`scrub`] or [`scrub_json`] once more, for the texts around it).
pub fn fit(message: &str) -> std::borrow::Cow<'_, str> {
    let message = crate::redact::redact(message);
    match message.char_indices().nth(MESSAGE_MAX_CHARS) {
        None => message,
        Some((end, _)) => std::borrow::Cow::Owned(format!(
            "{}\n\n_(The message was longer than GitHub allows and was cut here.)_",
            &message[..end]
        )),
    }
}

/// A whole text about to be posted to GitHub (a title, a body), with every known secret redacted.
pub fn scrub(text: &str) -> String {
    crate::redact::redact(text).into_owned()
}

/// A whole JSON body about to be posted to GitHub (a review with its inline comments, an issue, a check
/// run), with every known secret redacted in every string.
pub fn scrub_json(body: &mut serde_json::Value) {
    crate::redact::global().redact_json(body);
}

fn footer(trigger: &str, job: JobId) -> String {
    format!(
        "<sub>nightshift · trigger `{trigger}` · job {job}</sub>\n{}",
        marker(job)
    )
}

/// The agent's final message as a comment.
pub fn agent_comment(trigger: &str, job: JobId, message: &str, truncated: bool) -> String {
    let mut body = fit(message.trim_end()).into_owned();
    if body.is_empty() {
        body.push_str("_The agent finished without a message._");
    }
    if truncated {
        body.push_str("\n\n_(The agent's message was longer than its output limit and was cut.)_");
    }
    format!("{body}\n\n{}", footer(trigger, job))
}

/// What failed in a job, in words a user can act on. The worker attaches one to an error as its context
/// (`.context(Failure::Prepare)`); the failure note on GitHub says only this, while the whole error (server
/// paths, git command lines, stderr, endpoint answers) stays in the job log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The service's own configuration (an unknown profile or skill, a missing API key or agent CLI): an
    /// operator's problem, logged loudly and never posted.
    Config,
    /// Getting the repository ready: the worktree, its instructions and skills.
    Prepare,
    /// The trigger asks for something there is not (a skill): said as it is, for whoever wrote it.
    Trigger(String),
    /// The agent failed, or ran out of time; the text says which (`the agent ran out of time after 10m`).
    Agent(String),
    /// The agent's result could not be used (a symlinked message.md, a malformed review.json): said as it is,
    /// it names only the agent's files.
    Result(String),
    /// Delivering the result to GitHub.
    Deliver,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Failure::Config => "nightshift's configuration",
            Failure::Prepare => "preparing the repository",
            Failure::Trigger(_) => "the trigger",
            Failure::Agent(_) => "running the agent",
            Failure::Result(_) => "reading the agent's result",
            Failure::Deliver => "delivering the result",
        })
    }
}

impl Failure {
    /// The failure worth telling the issue or pull request about: the one attached to `error`, or a
    /// generic one; None for a configuration problem (not posted at all).
    pub fn public(error: &anyhow::Error) -> Option<String> {
        match error.downcast_ref::<Failure>() {
            Some(Failure::Config) => None,
            Some(Failure::Prepare) => Some("nightshift could not prepare the repository".into()),
            Some(Failure::Trigger(why)) => Some(format!("the trigger cannot run: {why}")),
            Some(Failure::Agent(what)) => Some(what.clone()),
            Some(Failure::Result(why)) => {
                Some(format!("the agent's result could not be used: {why}"))
            }
            Some(Failure::Deliver) => {
                Some("nightshift could not deliver the result to GitHub".into())
            }
            None => Some("nightshift could not finish this job".into()),
        }
    }
}

/// Said on the issue or pull request when its job failed, so the person who handed the work off knows:
/// what failed (from [`Failure::public`]), the job, and how an operator sees the details. Nothing from the
/// server (paths, command lines, output) is in it.
pub fn failure_comment(trigger: &str, job: JobId, what: &str) -> String {
    let what = fit(what.trim_end());
    format!(
        "This job failed: {what}.\n\nAn operator can see what happened with `nightshift jobs {job}` on the \
         server.\n\n{}",
        footer(trigger, job)
    )
}

/// Said instead of a pull request when the agent changed no file.
pub fn no_changes_comment(trigger: &str, job: JobId, message: &str) -> String {
    let mut body = String::from("The agent made no changes, so there is no pull request.");
    if !message.trim().is_empty() {
        body.push_str("\n\nIts final message:\n\n");
        body.push_str(&quote(&fit(message.trim_end())));
    }
    format!("{body}\n\n{}", footer(trigger, job))
}

pub fn pull_request_title(title: Option<&str>, number: Option<u64>) -> String {
    let title = title.map(scrub);
    match (title.as_deref(), number) {
        (Some(title), Some(n)) if !title.trim().is_empty() => format!("{} (#{n})", title.trim()),
        (_, Some(n)) => format!("Changes for #{n}"),
        _ => "Changes from nightshift".to_owned(),
    }
}

/// The pull request body: the agent's message, and a link to the issue it closes (or the pull request it
/// follows up on).
pub fn pull_request_body(
    trigger: &str,
    job: JobId,
    message: &str,
    number: Option<u64>,
    is_issue: bool,
) -> String {
    let mut body = String::new();
    match (number, is_issue) {
        (Some(n), true) => body.push_str(&format!("Closes #{n}.\n\n")),
        (Some(n), false) => body.push_str(&format!("Follow-up to #{n}.\n\n")),
        (None, _) => {}
    }
    if !message.trim().is_empty() {
        body.push_str(&fit(message.trim_end()));
        body.push_str("\n\n");
    }
    body.push_str(&footer(trigger, job));
    scrub(&body)
}

/// The title of an issue the agent opens, when the trigger gives none.
pub fn issue_title(trigger: &str, about: Option<&str>) -> String {
    match about {
        Some(t) if !t.trim().is_empty() => format!("{}: {}", trigger, t.trim()),
        _ => format!("Report from nightshift: {trigger}"),
    }
}

/// The body of an issue the agent opens.
pub fn issue_body(trigger: &str, job: JobId, message: &str, number: Option<u64>) -> String {
    let mut body = String::new();
    if let Some(n) = number {
        body.push_str(&format!("From #{n}.\n\n"));
    }
    body.push_str(&fit(message.trim_end()));
    body.push_str("\n\n");
    body.push_str(&footer(trigger, job));
    body
}

pub fn commit_message(trigger: &str, title: &str, number: Option<u64>) -> String {
    match number {
        Some(n) => format!("{title}\n\nMade by nightshift (trigger {trigger}) for #{n}."),
        None => format!("{title}\n\nMade by nightshift (trigger {trigger})."),
    }
}

fn quote(text: &str) -> String {
    text.lines()
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// Progress, and what a job's comment says when the job is done.

/// The hidden marker of an issue filed under a `dedupe:` key: the trigger and the key, hashed (the key may be
/// anything a template renders; the marker is always plain).
pub fn dedupe_marker(trigger: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{trigger}\0{key}").as_bytes());
    format!("<!-- nightshift:dedupe:{} -->", &hex::encode(digest)[..32])
}

/// `text` with a hidden `line` put before its last line (the job's marker must stay last).
pub fn with_hidden_line(text: &str, line: &str) -> String {
    match text.trim_end().rsplit_once('\n') {
        Some((head, last)) => format!("{head}\n{line}\n{last}"),
        None => format!("{line}\n{text}"),
    }
}

/// The job's comment while it runs.
pub fn progress_working(trigger: &str, agent: &str, job: JobId, link: Option<&str>) -> String {
    let link = link
        .map(|l| format!(" Follow it [here]({l})."))
        .unwrap_or_default();
    format!(
        "⏳ Working on it: trigger `{trigger}` started agent `{agent}`. This comment is edited with the \
         result when the job ends.{link}\n\n{}",
        footer(trigger, job)
    )
}

/// The job's comment once its output was delivered elsewhere (a pull request, a review, an issue, a check).
pub fn progress_delivered(trigger: &str, job: JobId, what: &str, url: Option<&str>) -> String {
    let what = match url {
        Some(url) => format!("[{what}]({url})"),
        None => what.to_owned(),
    };
    format!("✅ Done: {what}.\n\n{}", footer(trigger, job))
}

/// The job's comment when a newer job of its concurrency group replaced it.
pub fn cancelled_comment(trigger: &str, job: JobId, reason: &str) -> String {
    format!(
        "⏹️ This job was {}.\n\n{}",
        fit(reason.trim_end()),
        footer(trigger, job)
    )
}

/// The output's policy (`limits:`) refused what the agent proposed.
pub fn refused_by_policy(rule: &str) -> String {
    format!("the result was not posted because it breaks the output policy: {rule}")
}

pub fn check_title_working() -> String {
    "Running".to_owned()
}

pub fn check_summary_working(trigger: &str, agent: &str, job: JobId) -> String {
    format!("nightshift job {job}: trigger `{trigger}` is running agent `{agent}`.")
}

/// A completed check run's title.
pub fn check_title(conclusion: &str) -> String {
    match conclusion {
        "success" => "Passed",
        "failure" => "Failed",
        "cancelled" => "Cancelled",
        _ => "Done",
    }
    .to_owned()
}

/// A completed check run's summary: the agent's message, or why the job failed.
pub fn check_summary(message: &str) -> String {
    let text = fit(message.trim_end()).into_owned();
    if text.is_empty() {
        "_The agent finished without a message._".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_comment() {
        insta::assert_snapshot!(super::agent_comment("triage", JobId(12), "Looks like a duplicate of #3.\n", false), @r"
        Looks like a duplicate of #3.

        <sub>nightshift · trigger `triage` · job 12</sub>
        <!-- nightshift:job:12 -->
        ");
    }

    #[test]
    fn agent_comment_cut_and_empty() {
        insta::assert_snapshot!(super::agent_comment("triage", JobId(1), "", true), @r"
        _The agent finished without a message._

        _(The agent's message was longer than its output limit and was cut.)_

        <sub>nightshift · trigger `triage` · job 1</sub>
        <!-- nightshift:job:1 -->
        ");
    }

    #[test]
    fn no_changes() {
        insta::assert_snapshot!(no_changes_comment("fix", JobId(4), "I could not reproduce it.\nSorry."), @r"
        The agent made no changes, so there is no pull request.

        Its final message:

        > I could not reproduce it.
        > Sorry.

        <sub>nightshift · trigger `fix` · job 4</sub>
        <!-- nightshift:job:4 -->
        ");
    }

    #[test]
    fn issue_texts() {
        assert_eq!(
            issue_title("nightly-audit", None),
            "Report from nightshift: nightly-audit"
        );
        insta::assert_snapshot!(issue_body("nightly-audit", JobId(3), "Two dependencies are out of date.", None), @r"
        Two dependencies are out of date.

        <sub>nightshift · trigger `nightly-audit` · job 3</sub>
        <!-- nightshift:job:3 -->
        ");
    }

    #[test]
    fn pull_request_texts() {
        assert_eq!(
            pull_request_title(Some("Spelling error in the README file"), Some(1)),
            "Spelling error in the README file (#1)"
        );
        assert_eq!(pull_request_title(None, Some(2)), "Changes for #2");
        insta::assert_snapshot!(pull_request_body("fix", JobId(9), "Fixed the typo.", Some(1), true), @r"
        Closes #1.

        Fixed the typo.

        <sub>nightshift · trigger `fix` · job 9</sub>
        <!-- nightshift:job:9 -->
        ");
        insta::assert_snapshot!(commit_message("fix", "Fix typo (#1)", Some(1)), @r"
        Fix typo (#1)

        Made by nightshift (trigger fix) for #1.
        ");
    }

    #[test]
    fn failure_comments() {
        let says = |failure: Failure| {
            let e = anyhow::anyhow!(
                "`git worktree add /srv/nightshift/data/jobs/7` failed: fatal: bad ref"
            )
            .context(failure);
            Failure::public(&e).map(|what| super::failure_comment("fix", JobId(7), &what))
        };
        insta::assert_snapshot!(says(Failure::Prepare).unwrap(), @r"
        This job failed: nightshift could not prepare the repository.

        An operator can see what happened with `nightshift jobs 7` on the server.

        <sub>nightshift · trigger `fix` · job 7</sub>
        <!-- nightshift:job:7 -->
        ");
        insta::assert_snapshot!(says(Failure::Agent("the agent ran out of time after 10m".into())).unwrap(), @r"
        This job failed: the agent ran out of time after 10m.

        An operator can see what happened with `nightshift jobs 7` on the server.

        <sub>nightshift · trigger `fix` · job 7</sub>
        <!-- nightshift:job:7 -->
        ");
        insta::assert_snapshot!(says(Failure::Deliver).unwrap(), @r"
        This job failed: nightshift could not deliver the result to GitHub.

        An operator can see what happened with `nightshift jobs 7` on the server.

        <sub>nightshift · trigger `fix` · job 7</sub>
        <!-- nightshift:job:7 -->
        ");
        insta::assert_snapshot!(says(Failure::Result("message.md is a symlink; nightshift reads only regular files".into())).unwrap(), @r"
        This job failed: the agent's result could not be used: message.md is a symlink; nightshift reads only regular files.

        An operator can see what happened with `nightshift jobs 7` on the server.

        <sub>nightshift · trigger `fix` · job 7</sub>
        <!-- nightshift:job:7 -->
        ");
        // An error nobody classified: generic, still nothing from the server.
        let e = anyhow::anyhow!("/srv/nightshift/secret-path: boom");
        insta::assert_snapshot!(super::failure_comment("fix", JobId(7), &Failure::public(&e).unwrap()), @r"
        This job failed: nightshift could not finish this job.

        An operator can see what happened with `nightshift jobs 7` on the server.

        <sub>nightshift · trigger `fix` · job 7</sub>
        <!-- nightshift:job:7 -->
        ");
        // Configuration problems are the operator's: not posted at all.
        assert_eq!(says(Failure::Config), None);
        // The context says what failed in the log, too.
        let e = anyhow::anyhow!("fatal: bad ref").context(Failure::Prepare);
        assert_eq!(format!("{e:#}"), "preparing the repository: fatal: bad ref");
    }

    #[test]
    fn a_message_longer_than_github_allows_is_cut_and_says_so() {
        let long = "é".repeat(100_000);
        for body in [
            super::agent_comment("t", JobId(1), &long, false),
            super::issue_body("t", JobId(1), &long, Some(2)),
            super::pull_request_body("t", JobId(1), &long, Some(2), true),
            super::no_changes_comment("t", JobId(1), &long),
        ] {
            assert!(body.chars().count() <= 65_536, "{}", body.chars().count());
            assert!(body.contains("longer than GitHub allows and was cut here"));
            assert!(body.ends_with(&super::marker(JobId(1))));
        }
        assert_eq!(super::fit("short"), "short");
    }

    #[test]
    fn progress_texts() {
        insta::assert_snapshot!(progress_working("fix", "codex", JobId(5), Some("https://ns.example/jobs/5")), @r"
        ⏳ Working on it: trigger `fix` started agent `codex`. This comment is edited with the result when the job ends. Follow it [here](https://ns.example/jobs/5).

        <sub>nightshift · trigger `fix` · job 5</sub>
        <!-- nightshift:job:5 -->
        ");
        insta::assert_snapshot!(progress_delivered("fix", JobId(5), "opened a pull request", Some("https://github.com/o/r/pull/9")), @r"
        ✅ Done: [opened a pull request](https://github.com/o/r/pull/9).

        <sub>nightshift · trigger `fix` · job 5</sub>
        <!-- nightshift:job:5 -->
        ");
        insta::assert_snapshot!(cancelled_comment("fix", JobId(5), "replaced by a newer job of its concurrency group"), @r"
        ⏹️ This job was replaced by a newer job of its concurrency group.

        <sub>nightshift · trigger `fix` · job 5</sub>
        <!-- nightshift:job:5 -->
        ");
        let body = with_hidden_line(
            &issue_body("audit", JobId(3), "Two findings.", None),
            &dedupe_marker("audit", "weekly"),
        );
        assert!(body.ends_with(&marker(JobId(3))), "{body}");
        assert!(body.contains("<!-- nightshift:dedupe:"), "{body}");
        assert_ne!(dedupe_marker("audit", "a"), dedupe_marker("audit", "b"));
        assert_ne!(dedupe_marker("a", "b"), dedupe_marker("b", "a"));
    }
}
