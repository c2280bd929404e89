//! Outputs beyond comments and pull requests (review, issue, check run), pull request path filters with the
//! changed files from the API, and concurrency groups, end to end through the real binary.

mod common;

use std::time::Duration;

use common::{Auth, Spine, git};
use nightshift::store::JobState;
use serde_json::Value;

fn with_head(spine: &Spine, path: &str) -> (Vec<u8>, String) {
    let head = git(&spine.remote, &["rev-parse", "main"]);
    let mut v: Value = serde_json::from_slice(&spine.payload(path)).unwrap();
    v["pull_request"]["head"]["sha"] = head.clone().into();
    v["pull_request"]["base"]["ref"] = "main".into();
    (serde_json::to_vec(&v).unwrap(), head)
}

#[tokio::test]
async fn a_review_output_posts_a_pull_request_review_at_the_head_commit() {
    let review = (
        "review.yml",
        "on: pull_request\nagent: reply\nprompt: review it\noutput: review\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    spine.start().await;
    let (body, head) = with_head(&spine, "pull_request/opened.json");
    assert_eq!(spine.deliver("pull_request", "r-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let created = spine.github.created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].operation, "pulls/create-review");
    assert_eq!(created[0].body["event"], "COMMENT");
    assert_eq!(created[0].body["commit_id"], head.as_str());
    assert!(
        created[0].body["body"]
            .as_str()
            .unwrap()
            .contains("review it")
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn an_issue_output_opens_an_issue_with_its_title_and_labels() {
    let report = (
        "report.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: summarise\noutput:\n  type: issue\n  title: 'Follow-up to #{{ event.issue.number }}'\n  labels: [triage]\n",
    );
    let mut spine = Spine::new(Auth::Token, &[report]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "i-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let created = spine.github.created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].operation, "issues/create");
    assert_eq!(created[0].body["title"], "Follow-up to #1");
    assert_eq!(created[0].body["labels"], serde_json::json!(["triage"]));
    assert!(
        created[0].body["body"]
            .as_str()
            .unwrap()
            .starts_with("From #1.\n\nAgent reply for")
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_check_run_output_reports_on_the_pushed_commit() {
    let check = (
        "audit.yml",
        "on:\n  push:\n    branches: [main]\nagent: reply\nprompt: audit\noutput:\n  type: check_run\n  name: nightshift audit\n",
    );
    // Only an App can create check runs (with a token, the trigger is refused at start).
    let mut spine = Spine::new(Auth::App, &[check]).await;
    spine.start().await;
    let head = git(&spine.remote, &["rev-parse", "main"]);
    let mut v: Value = serde_json::from_slice(&spine.payload("push/with-new-branch.json")).unwrap();
    v["ref"] = "refs/heads/main".into();
    v["after"] = head.clone().into();
    v["deleted"] = false.into();
    assert_eq!(
        spine
            .deliver("push", "p-1", &serde_json::to_vec(&v).unwrap())
            .await,
        202
    );
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    // In progress while the agent ran, then completed: neutral, since the agent did not say it passed.
    let runs = spine.github.check_runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].name, "nightshift audit");
    assert_eq!(runs[0].head_sha, head);
    assert_eq!(runs[0].history[0]["status"], "in_progress");
    assert_eq!(runs[0].status, "completed");
    assert_eq!(runs[0].conclusion.as_deref(), Some("neutral"));
    assert!(
        runs[0].output["summary"]
            .as_str()
            .unwrap()
            .contains("audit")
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn pull_request_path_filters_use_the_changed_files_from_the_api() {
    let src = (
        "src-review.yml",
        "on:\n  pull_request:\n    paths: ['src/**']\nagent: reply\nprompt: x\n",
    );
    let mut spine = Spine::new(Auth::Token, &[src]).await;
    spine.start().await;
    spine
        .github
        .set_pull_files("Codertocat/Hello-World", 2, &["docs/a.md", "README.md"]);
    let (body, _) = with_head(&spine, "pull_request/opened.json");
    assert_eq!(spine.deliver("pull_request", "docs-only", &body).await, 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        spine.jobs().await.is_empty(),
        "a docs-only pull request does not match src/**"
    );

    spine
        .github
        .set_pull_files("Codertocat/Hello-World", 2, &["docs/a.md", "src/lib.rs"]);
    assert_eq!(spine.deliver("pull_request", "with-src", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].delivery_id.0, "with-src");
    assert!(
        spine
            .github
            .calls()
            .iter()
            .any(|c| c.starts_with("GET /repos/Codertocat/Hello-World/pulls/2/files"))
    );
    spine.assert_no_unexpected_calls();
}

async fn wait_for(path: &std::path::Path) {
    for _ in 0..400 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn a_concurrency_group_runs_its_jobs_one_after_another() {
    let serial = (
        "serial.yml",
        "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: x\nconcurrency:\n  group: 'issue-{{ event.issue.number }}'\n",
    );
    let mut spine = Spine::new(Auth::Token, &[serial]).await;
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "c-1", &body).await, 202);
    wait_for(&spine.gate.join("started-1")).await;
    assert_eq!(spine.deliver("issues", "c-2", &body).await, 202);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !spine.gate.join("started-2").exists(),
        "the second job waits for the first"
    );
    std::fs::write(spine.gate.join("release"), "").unwrap();
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:?}"
    );
    assert_eq!(spine.github.comments().len(), 2);
}

#[tokio::test]
async fn cancel_in_progress_stops_the_running_job_of_the_group() {
    let latest = (
        "latest.yml",
        "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: x\nconcurrency:\n  group: 'issue-{{ event.issue.number }}'\n  cancel_in_progress: true\n",
    );
    let mut spine = Spine::new(Auth::Token, &[latest]).await;
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "old", &body).await, 202);
    wait_for(&spine.gate.join("started-1")).await;
    assert_eq!(spine.deliver("issues", "new", &body).await, 202);
    // The old job is stopped at its next heartbeat; the new one starts once it has.
    wait_for(&spine.gate.join("started-2")).await;
    std::fs::write(spine.gate.join("release"), "").unwrap();
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(
        (jobs[0].state, jobs[1].state),
        (JobState::Cancelled, JobState::Succeeded),
        "{jobs:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !spine.gate.join("finished-1").exists(),
        "the cancelled agent was killed, not left running"
    );
    assert!(spine.gate.join("finished-2").exists());
    // Each job's comment says how it ended: the cancelled one that it was replaced.
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 2, "{comments:#?}");
    assert!(
        comments.iter().any(|c| c
            .body
            .starts_with("⏹️ This job was cancelled: a newer job of its concurrency group")),
        "{comments:#?}"
    );
}

#[tokio::test]
async fn named_skills_reach_the_agent_where_it_looks_and_never_the_pull_request() {
    let with_skills = (
        "fix.yml",
        "on:\n  issues:\n    types: [labeled]\nagent: skills\nskills: [checklist]\nprompt: fix\noutput: pull_request\n",
    );
    let mut spine = Spine::new(Auth::Token, &[with_skills]).await;
    let skill = spine.dir.path().join("skills/checklist");
    std::fs::create_dir_all(&skill).unwrap();
    std::fs::write(
        skill.join("SKILL.md"),
        "---\nname: checklist\ndescription: Check things. Use always.\n---\nBody\n",
    )
    .unwrap();
    spine.start().await;
    spine
        .deliver_example("issues", "s-1", "issues/labeled.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);

    let body = &spine.github.pulls()[0].body;
    assert!(
        body.contains("skill .agents/skills/checklist/SKILL.md: checklist"),
        "{body}"
    );
    assert!(
        body.contains("skill .claude/skills/checklist/SKILL.md: checklist"),
        "{body}"
    );
    let files = git(
        &spine.remote,
        &["show", "--name-only", "--format=", "nightshift/fix/1"],
    );
    assert_eq!(files, "README.md", "only the agent's change is committed");
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        log.iter()
            .any(|l| l.line == "skills in the worktree: checklist (service)"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_missing_skill_fails_the_job_with_its_name() {
    let missing = (
        "t.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reply\nskills: [nowhere]\nprompt: x\n",
    );
    let mut spine = Spine::new(Auth::Token, &[missing]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "m-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    assert!(
        jobs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("skill `nowhere` is neither"),
        "{:?}",
        jobs[0].error
    );
    // The issue is told why, once: its progress comment says it.
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].body.contains("skill `nowhere` is neither"),
        "{}",
        comments[0].body
    );
    assert!(comments[0].edits[0].before.contains("Working on it"));
}

#[tokio::test]
async fn a_structured_review_becomes_inline_comments() {
    let review = (
        "review.yml",
        "on: pull_request\nagent: review\nprompt: review it\noutput: review\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    spine.start().await;
    // The pull request changes README.md's first line, where the review comments (as on GitHub, a comment
    // must be on a line of the diff).
    spine.github.set_pull_patches(
        "Codertocat/Hello-World",
        2,
        &[("README.md", "@@ -1 +1 @@\n-# Old title\n+# Hello-World")],
    );
    let (body, _) = with_head(&spine, "pull_request/opened.json");
    assert_eq!(spine.deliver("pull_request", "sr-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let created = spine.github.created();
    let review = &created[0].body;
    assert!(
        review["body"]
            .as_str()
            .unwrap()
            .starts_with("Two things to fix."),
        "{review:#}"
    );
    let comments = review["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 2);
    assert_eq!(
        comments[0],
        serde_json::json!({"path": "README.md", "line": 1, "side": "RIGHT", "body": "Say what the project does."})
    );
    assert_eq!(comments[1]["side"], "LEFT");
    // Each job has a home of its own, not the service's.
    let log = spine.job_log(jobs[0].id).await;
    let home = log.iter().find(|l| l.line.starts_with("home is ")).unwrap();
    assert!(home.line.contains("/jobs/1-1/home"), "{}", home.line);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_malformed_review_fails_the_job_and_says_why() {
    let review = (
        "review.yml",
        "on: pull_request\nagent: badreview\nprompt: review it\noutput: review\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    spine.start().await;
    let (body, _) = with_head(&spine, "pull_request/opened.json");
    assert_eq!(spine.deliver("pull_request", "br-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.as_deref().unwrap();
    assert!(
        error.contains("review.json is not valid: invalid type: string \"one\", expected u64"),
        "{error}"
    );
    assert!(spine.github.created().is_empty());
}

#[tokio::test]
async fn the_message_file_is_the_final_message() {
    let t = (
        "t.yml",
        "on:\n  issues:\n    types: [opened]\nagent: review\nprompt: x\n",
    );
    let mut spine = Spine::new(Auth::Token, &[t]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "mf-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let comment = &spine.github.comments()[0].body;
    assert!(comment.starts_with("written to message.md"), "{comment}");
    assert!(!comment.contains("stdout is not the message"));
}

#[tokio::test]
async fn a_sandboxed_agent_changes_its_worktree_and_nothing_else() {
    let fix = (
        "fix.yml",
        "on:\n  issues:\n    types: [labeled]\nagent: sandboxed\nprompt: fix\noutput: pull_request\n",
    );
    let mut spine = Spine::new(Auth::Token, &[fix]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "sb-1", "issues/labeled.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    let log = spine.job_log(jobs[0].id).await;
    assert_eq!(
        jobs[0].state,
        JobState::Succeeded,
        "{:?} {log:?}",
        jobs[0].error
    );
    assert!(
        !spine.gate.join("escaped").exists(),
        "the sandbox kept the agent in its worktree"
    );
    let body = &spine.github.pulls()[0].body;
    assert!(body.contains("could not write outside"), "{body}");
    assert!(
        body.contains("/jobs/1-1/tmp"),
        "TMPDIR is the job's own: {body}"
    );
    let readme = git(&spine.remote, &["show", "nightshift/fix/1:README.md"]);
    assert!(readme.ends_with("edited in the sandbox"), "{readme}");
    assert!(
        log.iter()
            .any(|l| l.stream == "stderr" && l.line == " M README.md"),
        "git works in the sandbox: {log:?}"
    );
}

#[tokio::test]
async fn a_triggers_max_output_cuts_the_message_and_says_so() {
    let short = (
        "short.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: hello\nmax_output: 14\n",
    );
    let mut spine = Spine::new(Auth::Token, &[short]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "cut-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let body = &spine.github.comments()[0].body;
    assert!(
        body.starts_with(
            "Agent reply fo\n\n_(The agent's message was longer than its output limit and was cut.)_"
        ),
        "{body}"
    );
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        log.iter()
            .any(|l| l.line == "the agent's message was cut at 14 bytes"),
        "{log:?}"
    );
}
