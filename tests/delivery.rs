//! What people see on GitHub, as stories through the real binary against the strict fake GitHub: one
//! progress comment edited with the result, an honest check run, pull requests that never erase people's
//! commits, one issue per dedupe key, the output policy, and every output exactly once when GitHub fails
//! before or after a write, drops the connection, hangs, or is down.

mod common;

use std::time::Duration;

use common::fake_github::Fault;
use common::{Auth, Spine, append_config, git};
use nightshift::store::JobState;
use serde_json::Value;

const REPO: &str = "Codertocat/Hello-World";

/// An `issues.labeled` delivery for issue `number` (the fake learns the issue from it).
fn labeled(spine: &Spine, number: u64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&spine.payload("issues/labeled.json")).unwrap();
    v["issue"]["number"] = number.into();
    v["issue"]["title"] = format!("Spelling error {number}").into();
    serde_json::to_vec(&v).unwrap()
}

fn opened(spine: &Spine, number: u64) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    v["issue"]["number"] = number.into();
    serde_json::to_vec(&v).unwrap()
}

/// The comments on issue `number`.
fn comments_on(spine: &Spine, number: u64) -> Vec<common::fake_github::Comment> {
    spine
        .github
        .comments()
        .into_iter()
        .filter(|c| c.repo == REPO && c.number == number)
        .collect()
}

/// Waits (polling the store) until every job has ended, however many there are; returns them.
async fn wait_all_ended(
    spine: &mut Spine,
    n: usize,
    limit: Duration,
) -> Vec<nightshift::store::JobRecord> {
    let start = std::time::Instant::now();
    loop {
        let jobs = spine.jobs().await;
        if jobs.len() == n
            && jobs.iter().all(|j| {
                matches!(
                    j.state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                )
            })
        {
            return jobs;
        }
        assert!(
            start.elapsed() < limit,
            "jobs did not end: {:#?}",
            jobs.iter()
                .filter(|j| !matches!(j.state, JobState::Succeeded | JobState::Failed))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const FIX: (&str, &str) = (
    "fix.yml",
    "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: edit\nprompt: fix it\noutput: pull_request\n",
);

#[tokio::test]
async fn issue_labeled_progress_comment_then_pull_request_then_the_comment_links_it() {
    let mut spine = Spine::new(Auth::Token, &[FIX]).await;
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);

    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 1, "one comment, edited: {comments:#?}");
    let comment = &comments[0];
    assert!(
        comment.edits[0]
            .before
            .contains("Working on it: trigger `fix` started agent `edit`"),
        "it first said it was working: {comment:#?}"
    );
    let pulls = spine.github.pulls();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].head, "nightshift/fix/1");
    assert_eq!(pulls[0].base, "main");
    assert!(pulls[0].body.starts_with("Closes #1."), "{}", pulls[0].body);
    assert!(
        comment.body.contains(&format!("/pull/{}", pulls[0].number)),
        "then it linked the pull request: {}",
        comment.body
    );
    // The branch holds the agent's change on top of main.
    let pushed = git(&spine.remote, &["show", "nightshift/fix/1:README.md"]);
    assert!(pushed.ends_with("fix it"), "{pushed}");
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_failing_agent_edits_the_progress_comment_and_fails_its_check_run() {
    let comment = (
        "triage.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: failing\nprompt: x\n",
    );
    let check = (
        "audit.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: failing\nprompt: x\noutput:\n  type: check_run\n  name: audit\n",
    );
    let mut spine = Spine::new(Auth::App, &[comment, check]).await;
    spine.add_agents("  failing: {command: [sh, -c, 'echo broken >&2; exit 3'], timeout: 30s}\n");
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Failed),
        "{jobs:#?}"
    );

    // Each job has one comment on the issue, which first said it was working and now says it failed.
    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 2, "{comments:#?}");
    for c in &comments {
        assert!(c.edits[0].before.contains("Working on it"), "{c:#?}");
        assert!(
            c.body.starts_with("This job failed: the agent failed."),
            "{}",
            c.body
        );
    }
    // The check run was in progress while the agent ran, and concluded failure: never green.
    let runs = spine.github.check_runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].name, "audit");
    assert_eq!(runs[0].history[0]["status"], "in_progress");
    assert_eq!(runs[0].status, "completed");
    assert_eq!(runs[0].conclusion.as_deref(), Some("failure"));
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_check_run_is_green_only_when_the_agent_says_so_and_carries_its_annotations() {
    let check = |name: &str, agent: &str| {
        format!(
            "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: {agent}\nprompt: x\nprogress: false\noutput:\n  type: check_run\n  name: {name}\n"
        )
    };
    let (a, b) = (
        check("says-nothing", "reply"),
        check("says-success", "passing"),
    );
    let mut spine = Spine::new(Auth::App, &[("a.yml", a.as_str()), ("b.yml", b.as_str())]).await;
    spine.add_agents(
        "  passing: {command: [sh, -c, 'printf %s \"{\\\"summary\\\": \\\"all good\\\", \\\"conclusion\\\": \\\"success\\\", \\\"comments\\\": [{\\\"path\\\": \\\"README.md\\\", \\\"line\\\": 1, \\\"body\\\": \\\"nit\\\", \\\"severity\\\": \\\"notice\\\"}]}\" > $NIGHTSHIFT_OUTPUT_DIR/review.json; echo checked'], timeout: 30s}\n",
    );
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:#?}"
    );
    let runs = spine.github.check_runs();
    let by_name = |n: &str| runs.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(
        by_name("says-nothing").conclusion.as_deref(),
        Some("neutral")
    );
    let green = by_name("says-success");
    assert_eq!(green.conclusion.as_deref(), Some("success"));
    assert_eq!(green.annotations.len(), 1, "{green:#?}");
    assert_eq!(green.annotations[0]["annotation_level"], "notice");
    assert!(
        spine.github.comments().is_empty(),
        "progress: false posts no comment"
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_rerun_never_erases_commits_people_pushed_to_the_branch() {
    let mut spine = Spine::new(Auth::Token, &[FIX]).await;
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    spine.wait_for_finished_jobs(1).await;
    // Someone adds a commit on top of nightshift's branch.
    let human = spine.commit("nightshift/fix/1", "nightshift/fix/1", "NOTES.md", "mine\n");
    assert_eq!(
        spine.deliver("issues", "l-2", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(jobs[1].state, JobState::Succeeded, "{:?}", jobs[1].error);
    assert_eq!(
        git(&spine.remote, &["rev-parse", "nightshift/fix/1"]),
        human,
        "the person's commit is still the branch's tip"
    );
    let own = format!("nightshift/fix/1-job-{}", jobs[1].id);
    assert!(!git(&spine.remote, &["rev-parse", &own]).is_empty());
    let log = spine.job_log(jobs[1].id).await;
    assert!(
        log.iter()
            .any(|l| l.line.contains("has commits nightshift did not push")),
        "{log:#?}"
    );
    let heads: Vec<String> = spine
        .github
        .pulls()
        .iter()
        .map(|p| p.head.clone())
        .collect();
    assert!(heads.contains(&own), "{heads:?}");
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_second_job_for_the_same_issue_updates_its_branch_and_pull_request() {
    let mut spine = Spine::new(Auth::Token, &[FIX]).await;
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    spine.wait_for_finished_jobs(1).await;
    let first = git(&spine.remote, &["rev-parse", "nightshift/fix/1"]);
    assert_eq!(
        spine.deliver("issues", "l-2", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(jobs[1].state, JobState::Succeeded, "{:?}", jobs[1].error);
    let pulls = spine.github.pulls();
    assert_eq!(
        pulls.len(),
        1,
        "the open pull request is reused: {pulls:#?}"
    );
    assert!(
        pulls[0].body.contains(&format!("job {}", jobs[1].id)),
        "its description is the new job's: {}",
        pulls[0].body
    );
    // The branch moved only by nightshift: the same change again (a new commit when the clock moved on, the
    // same one otherwise), on top of main, nobody's work in between.
    let tip = git(&spine.remote, &["rev-parse", "nightshift/fix/1"]);
    let parent = git(&spine.remote, &["rev-parse", "nightshift/fix/1^"]);
    assert_eq!(parent, git(&spine.remote, &["rev-parse", "main"]));
    assert!(tip == first || git(&spine.remote, &["rev-parse", &format!("{first}^")]) == parent);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_dedupe_key_keeps_one_open_issue() {
    let audit = (
        "audit.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: audit\nprogress: false\noutput:\n  type: issue\n  title: Dependency audit\n  dedupe: weekly-audit\n",
    );
    let mut spine = Spine::new(Auth::Token, &[audit]).await;
    spine.start().await;
    // (Issue numbers below the one filed: a payload's issue is one the fake then knows.)
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 60)).await,
        202
    );
    spine.wait_for_finished_jobs(1).await;
    assert_eq!(
        spine.deliver("issues", "o-2", &opened(&spine, 10)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:#?}"
    );
    let filed: Vec<_> = spine
        .github
        .issues()
        .into_iter()
        .filter(|i| i.title == "Dependency audit")
        .collect();
    assert_eq!(filed.len(), 1, "{filed:#?}");
    let follow_ups = comments_on(&spine, filed[0].number);
    assert_eq!(
        follow_ups.len(),
        1,
        "the second job commented on it: {follow_ups:#?}"
    );
    assert!(follow_ups[0].body.contains(&format!("job {}", jobs[1].id)));
    // A stranger's open issue with the same hidden marker is not taken for nightshift's.
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_pull_request_touching_workflows_is_refused_by_the_policy_and_nothing_is_pushed() {
    let sneaky = (
        "sneaky.yml",
        "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: workflow\nprompt: x\noutput: pull_request\n",
    );
    let mut spine = Spine::new(Auth::Token, &[sneaky]).await;
    spine.add_agents(
        "  workflow: {command: [sh, -c, 'mkdir -p .github/workflows && echo \"on: push\" > .github/workflows/ci.yml && echo done'], timeout: 30s}\n",
    );
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    assert!(
        jobs[0]
            .error
            .as_deref()
            .unwrap()
            .contains(".github/workflows/ci.yml"),
        "{:?}",
        jobs[0].error
    );
    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].body.contains("breaks the output policy")
            && comments[0].body.contains(".github/workflows/ci.yml"),
        "{}",
        comments[0].body
    );
    assert!(spine.github.pulls().is_empty());
    assert!(
        git(&spine.remote, &["branch", "--list", "nightshift/*"]).is_empty(),
        "no branch was pushed"
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn every_output_is_posted_once_when_github_fails_after_the_write() {
    let comment = (
        "c.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: x\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[comment, FIX]).await;
    append_config(&spine, "max_jobs_per_hour: 1000\n");
    spine.start().await;
    // The comment is created and answered 502; the next try is created and the connection dropped.
    spine.github.fail_next(
        "issues/create-comment",
        &[Fault::BadGatewayAfter, Fault::DropAfter],
    );
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(
        comments_on(&spine, 1).len(),
        1,
        "{:#?}",
        spine.github.comments()
    );

    // The pull request is opened and the connection dropped: found by its head, not opened twice.
    spine.github.fail_next("pulls/create", &[Fault::DropAfter]);
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 2)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(jobs[1].state, JobState::Succeeded, "{:?}", jobs[1].error);
    assert_eq!(spine.github.pulls().len(), 1, "{:#?}", spine.github.pulls());
    let log = spine.job_log(jobs[1].id).await;
    assert!(
        log.iter()
            .any(|l| l.line.contains("may have been created: looking for it")),
        "{log:#?}"
    );
    assert_eq!(
        spine.github.fault_counts().values().sum::<usize>(),
        3,
        "{:?}",
        spine.github.fault_counts()
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_refused_post_fails_the_job_at_once_with_githubs_reason() {
    let comment = (
        "c.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: x\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[comment]).await;
    spine.start().await;
    spine.github.fail_next("issues/create-comment", &[422u16]);
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(jobs[0].retries, 0, "a refusal is not waited on");
    assert!(
        jobs[0].error.as_deref().unwrap().contains("422"),
        "{:?}",
        jobs[0].error
    );
    // It says so on the issue (the failure note is a comment of its own: there was no progress comment).
    let comments = spine.wait_for_comments(1).await;
    assert!(
        comments[0].body.contains("GitHub refused it"),
        "{}",
        comments[0].body
    );
}

#[tokio::test]
async fn a_github_outage_makes_the_job_wait_visibly_and_then_deliver_once() {
    let comment = (
        "c.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: x\n",
    );
    let mut spine = Spine::new(Auth::Token, &[comment]).await;
    spine.start().await;
    spine.github.outage(Duration::from_secs(600));
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    // The job waits, and says why.
    let mut waited = None;
    for _ in 0..300 {
        let jobs = spine.jobs().await;
        if let Some(why) = jobs.first().and_then(|j| j.waiting.clone()) {
            waited = Some(why);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = waited.expect("the job never showed as waiting");
    assert!(why.contains("503"), "{why}");
    spine.github.end_outage();
    let jobs = wait_all_ended(&mut spine, 1, Duration::from_secs(120)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert!(jobs[0].retries >= 1);
    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(
        comments[0].body.contains("Agent reply for"),
        "{}",
        comments[0].body
    );
    spine.assert_no_unexpected_calls();
}

/// The progress comment is posted while the worktree is prepared: an agent starts while GitHub has not yet
/// answered the comment's post.
#[tokio::test]
async fn the_agent_starts_while_the_progress_comment_is_still_being_posted() {
    let mut spine = Spine::new(Auth::Token, &[FIX]).await;
    spine.start().await;
    spine.github.set_hang(Duration::from_secs(600));
    spine
        .github
        .fail_next("issues/create-comment", &[Fault::HangAfter]);
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    let log = spine
        .wait_for_log_line(nightshift::ids::JobId(1), "starting agent")
        .await;
    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(
        comments[0].body.contains("Working on it"),
        "{}",
        comments[0].body
    );
    // GitHub's client gives up on the hung post after seconds, and says so in the log: not before the agent.
    assert!(
        !log.iter()
            .any(|l| l.line.starts_with("posting the job's comment")),
        "{log:#?}"
    );
}

/// Kill -9 while the pull request's create hangs after GitHub applied it (between the post and its record):
/// after the restart the job only delivers (the agent is not run again) and finds the pull request.
#[tokio::test]
async fn kill_9_between_the_post_and_its_record_posts_once_and_runs_the_agent_once() {
    let mut spine = Spine::new(Auth::Token, &[FIX]).await;
    spine.start().await;
    spine.github.set_hang(Duration::from_secs(600));
    spine.github.fail_next("pulls/create", &[Fault::HangAfter]);
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    spine
        .github
        .wait_until(
            Duration::from_secs(60),
            "the pull request is created",
            |g| !g.pulls().is_empty(),
        )
        .await;
    spine.kill();
    spine.start().await;
    let jobs = wait_all_ended(&mut spine, 1, Duration::from_secs(120)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 1, "the agent ran once");
    assert_eq!(spine.github.pulls().len(), 1);
    let log = spine.job_log(jobs[0].id).await;
    let starts = log
        .iter()
        .filter(|l| l.line.starts_with("starting agent"))
        .count();
    assert_eq!(starts, 1, "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.line.contains("delivering the stored result"))
    );
    assert!(
        log.iter()
            .any(|l| l.line.contains("found the branch's open pull request")),
        "{log:#?}"
    );
    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].body.contains("/pull/"), "{}", comments[0].body);
}

/// Kill -9 after the agent ended and before anything of its result was posted (GitHub is down, so the
/// delivery waits): after the restart the result is delivered from the store, once.
#[tokio::test]
async fn kill_9_between_the_agents_end_and_the_post_delivers_the_stored_result() {
    let mut spine = Spine::new(Auth::Token, &[FIX]).await;
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "l-1", &labeled(&spine, 1)).await,
        202
    );
    // The progress comment is there: the agent is starting. GitHub goes down before the result is posted.
    spine
        .github
        .wait_until(Duration::from_secs(60), "the progress comment", |g| {
            !g.comments().is_empty()
        })
        .await;
    spine.github.outage(Duration::from_secs(600));
    for _ in 0..600 {
        let jobs = spine.jobs().await;
        if jobs[0].state == JobState::Delivering && jobs[0].waiting.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(spine.jobs().await[0].state, JobState::Delivering);
    assert!(spine.github.pulls().is_empty(), "nothing posted yet");
    spine.kill();
    spine.github.end_outage();
    spine.start().await;
    let jobs = wait_all_ended(&mut spine, 1, Duration::from_secs(120)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 1, "the agent ran once");
    assert_eq!(spine.github.pulls().len(), 1);
    let comments = comments_on(&spine, 1);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].body.contains("/pull/"), "{}", comments[0].body);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn past_its_jobs_an_hour_a_repository_waits_and_says_why() {
    let comment = (
        "c.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: x\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[comment]).await;
    append_config(&spine, "max_jobs_per_hour: 1\n");
    spine.start().await;
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    spine.wait_for_finished_jobs(1).await;
    assert_eq!(
        spine.deliver("issues", "o-2", &opened(&spine, 2)).await,
        202
    );
    let mut why = None;
    for _ in 0..300 {
        let jobs = spine.jobs().await;
        if let Some(w) = jobs.get(1).and_then(|j| j.waiting.clone()) {
            why = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let why = why.expect("the second job never said it waits");
    assert!(why.contains("max_jobs_per_hour"), "{why}");
    assert_eq!(spine.jobs().await[1].state, JobState::Queued);
    assert_eq!(spine.github.comments().len(), 1);
}

#[tokio::test]
async fn a_call_github_never_answers_is_given_up_at_the_timeout_and_its_output_found_not_repeated()
{
    let comment = (
        "c.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: x\nprogress: false\n",
    );
    let mut spine = Spine::new(Auth::Token, &[comment]).await;
    spine.start().await;
    // GitHub applies the comment and then never answers (longer than the 5 s `github.timeout` here).
    spine.github.set_hang(Duration::from_secs(60));
    spine
        .github
        .fail_next("issues/create-comment", &[Fault::HangAfter]);
    assert_eq!(
        spine.deliver("issues", "o-1", &opened(&spine, 1)).await,
        202
    );
    let jobs = wait_all_ended(&mut spine, 1, Duration::from_secs(50)).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(
        comments_on(&spine, 1).len(),
        1,
        "{:#?}",
        spine.github.comments()
    );
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        log.iter()
            .any(|l| l.line.contains("timed out") && l.line.contains("may have been created")),
        "{log:#?}"
    );
    spine.assert_no_unexpected_calls();
}
