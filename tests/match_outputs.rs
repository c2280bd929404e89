//! What is frozen when a job is matched, and the output options: a comment on a pull request runs on the
//! pull request's head (read from GitHub) and is a fork's when its head is; nightshift's own outputs set off
//! chains of jobs only up to `max_depth`; a pull request output gets a concurrency group per issue; the
//! command's comment gets one 👀. Matching alone first, then stories through the real binary.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Auth, Spine};
use nightshift::ids::JobId;
use nightshift::source::event::{Event, PullFacts};
use nightshift::store::{JobState, Store};
use nightshift::trigger::load::load_one;
use nightshift::trigger::{Decision, JobSpec, MatchInput, TriggerSet};
use serde_json::{Value, json};

const REPO: &str = "Codertocat/Hello-World";

fn payload(path: &str) -> Value {
    serde_json::from_slice(&common::fixture(&format!("webhooks/{path}"))).unwrap()
}

/// An owner's `/review` comment on pull request #1 (GitHub sends it as a comment on an issue).
fn review_comment(body: &str) -> Value {
    let mut p = payload("issue_comment/created.json");
    p["issue"]["pull_request"] =
        json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1" });
    p["comment"]["body"] = body.into();
    p
}

fn facts(head_repo: &str) -> PullFacts {
    PullFacts {
        number: 1,
        head_sha: "1111111111111111111111111111111111111111".into(),
        head_ref: "feature".into(),
        head_repo: Some(head_repo.into()),
        base_ref: "main".into(),
        base_sha: "2222222222222222222222222222222222222222".into(),
        from_fork: head_repo != REPO,
        state: "open".into(),
    }
}

fn decide(trigger: &str, event: &str, payload: &Value, input: &MatchInput) -> Decision {
    let trigger = load_one(Path::new("t.yml"), trigger, None).unwrap_or_else(|e| panic!("{e:?}"));
    let set = TriggerSet::new(vec![trigger]);
    let event = Event::from_value(event, payload.clone()).unwrap();
    set.evaluate(&set.triggers()[0], &event, input)
}

fn job(decision: Decision) -> Box<JobSpec> {
    match decision {
        Decision::Fire(Ok(job)) => job,
        other => panic!("expected a job, got {other:?}"),
    }
}

const REVIEW: &str =
    "on:\n  issue_comment:\n    command: /review\nagent: x\nprompt: review\nforks: read_only\n";

#[test]
fn a_comment_on_a_pull_request_freezes_the_pull_requests_head_and_fork_ness() {
    let own = MatchInput {
        pull: Some(Ok(facts(REPO))),
        ..Default::default()
    };
    let spec = job(decide(
        REVIEW,
        "issue_comment",
        &review_comment("/review"),
        &own,
    ));
    assert_eq!(
        spec.head_sha.as_deref(),
        Some(facts(REPO).head_sha.as_str())
    );
    assert_eq!(spec.pull, Some(facts(REPO)));
    assert!(!spec.read_only);

    let fork = MatchInput {
        pull: Some(Ok(facts("stranger/Hello-World"))),
        ..Default::default()
    };
    let spec = job(decide(
        REVIEW,
        "issue_comment",
        &review_comment("/review"),
        &fork,
    ));
    assert!(spec.read_only, "a fork's code is worked on read-only");
    let skip = REVIEW.replace("forks: read_only", "forks: skip");
    match decide(&skip, "issue_comment", &review_comment("/review"), &fork) {
        Decision::Skip(s) => assert!(
            s.0.contains("the pull request comes from a fork, and the trigger skips forks"),
            "{}",
            s.0
        ),
        other => panic!("a fork's pull request must be skipped: {other:?}"),
    }
}

#[test]
fn a_comment_on_a_pull_request_that_could_not_be_read_runs_nothing_and_says_why() {
    // Offline (`nightshift match`, a dry run) or GitHub failed: not the default branch instead.
    let unread = MatchInput {
        pull: Some(Err("GitHub answered 404: Not Found".into())),
        ..Default::default()
    };
    for input in [&unread, &MatchInput::default()] {
        match decide(REVIEW, "issue_comment", &review_comment("/review"), input) {
            Decision::Fire(Err(e)) => assert!(
                e.starts_with("pull request #1 could not be read (")
                    && e.ends_with("so the job would not run on its code; nothing ran"),
                "{e}"
            ),
            other => panic!("expected a clear failure: {other:?}"),
        }
    }
    let skip = REVIEW.replace("forks: read_only", "forks: skip");
    match decide(&skip, "issue_comment", &review_comment("/review"), &unread) {
        Decision::Skip(s) => assert!(s.0.contains("could not be read"), "{}", s.0),
        other => panic!("an unknown pull request may be a fork's: {other:?}"),
    }
    // Facts GitHub gave for another pull request do not count.
    let other = MatchInput {
        pull: Some(Ok(PullFacts {
            number: 2,
            ..facts(REPO)
        })),
        ..Default::default()
    };
    assert!(matches!(
        decide(REVIEW, "issue_comment", &review_comment("/review"), &other),
        Decision::Fire(Err(_))
    ));
    // A comment on a plain issue needs no pull request.
    let mut on_issue = review_comment("/review");
    on_issue["issue"]["pull_request"] = Value::Null;
    let spec = job(decide(
        REVIEW,
        "issue_comment",
        &on_issue,
        &MatchInput::default(),
    ));
    assert_eq!((spec.pull, spec.head_sha), (None, None));
}

#[test]
fn pull_request_events_take_their_facts_from_the_payload() {
    let p = payload("pull_request/opened.json");
    let spec = job(decide(
        "on: pull_request\nagent: x\nprompt: x\nfrom: anyone\n",
        "pull_request",
        &p,
        &MatchInput::default(),
    ));
    let pull = spec.pull.expect("frozen");
    assert_eq!(
        pull.head_sha,
        p["pull_request"]["head"]["sha"].as_str().unwrap()
    );
    assert_eq!(
        pull.head_ref,
        p["pull_request"]["head"]["ref"].as_str().unwrap()
    );
    assert_eq!(
        pull.base_sha,
        p["pull_request"]["base"]["sha"].as_str().unwrap()
    );
    assert_eq!(pull.head_repo.as_deref(), Some(REPO));
    assert_eq!((pull.from_fork, pull.state.as_str()), (false, "open"));
    assert_eq!(spec.head_sha.as_deref(), Some(pull.head_sha.as_str()));
}

#[test]
fn a_pull_request_whose_head_repository_is_gone_counts_as_a_forks() {
    let mut pr = payload("pull_request/opened.json")["pull_request"].clone();
    assert!(!PullFacts::from_value(&pr).unwrap().from_fork);
    pr["head"]["repo"] = Value::Null;
    let facts = PullFacts::from_value(&pr).unwrap();
    assert!(facts.from_fork && facts.head_repo.is_none());
    pr["head"]["repo"] = json!({ "id": 1, "full_name": "stranger/Hello-World" });
    assert!(PullFacts::from_value(&pr).unwrap().from_fork);
    // Not a pull request at all: an error, not facts.
    assert!(PullFacts::from_value(&json!({ "message": "Not Found" })).is_err());
}

#[test]
fn lineage_past_max_depth_fires_nothing_and_says_why() {
    let from_self = "on: issue_comment\nagent: x\nprompt: x\nfrom_self: true\n";
    let p = payload("issue_comment/created.json");
    let at = |depth, max_depth| MatchInput {
        depth,
        max_depth,
        ..Default::default()
    };
    assert_eq!(
        job(decide(from_self, "issue_comment", &p, &at(1, None))).depth,
        1
    );
    match decide(from_self, "issue_comment", &p, &at(2, None)) {
        Decision::Fire(Err(e)) => {
            assert!(e.starts_with("lineage depth 2 is past max_depth 1"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // The service may allow more; a trigger may only lower it.
    assert_eq!(
        job(decide(from_self, "issue_comment", &p, &at(2, Some(3)))).depth,
        2
    );
    let lowered = format!("{from_self}max_depth: 0\n");
    match decide(&lowered, "issue_comment", &p, &at(1, Some(3))) {
        Decision::Fire(Err(e)) => {
            assert!(e.starts_with("lineage depth 1 is past max_depth 0"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_text_nightshifts_account_wrote_is_searched_for_markers() {
    let mut p = payload("issue_comment/created.json");
    p["comment"]["user"]["login"] = "my-app[bot]".into();
    p["comment"]["body"] = "mine <!-- nightshift:job:4 -->".into();
    // The issue is a stranger's, marker and all.
    p["issue"]["body"] = "theirs <!-- nightshift:job:1 -->".into();
    let event = Event::from_value("issue_comment", p.clone()).unwrap();
    assert_eq!(
        event.texts_written_by("MY-APP[bot]"),
        ["mine <!-- nightshift:job:4 -->"]
    );
    assert!(event.texts_written_by("someone-else").is_empty());
    // A check run's external_id counts only when nightshift's account sent the event.
    let mut run = payload("check_run/completed.json");
    run["check_run"]["external_id"] = "nightshift:job:9".into();
    run["sender"]["login"] = "my-app[bot]".into();
    let event = Event::from_value("check_run", run.clone()).unwrap();
    assert_eq!(event.texts_written_by("my-app[bot]"), ["nightshift:job:9"]);
    run["sender"]["login"] = "mallory".into();
    let event = Event::from_value("check_run", run).unwrap();
    assert!(event.texts_written_by("my-app[bot]").is_empty());
}

#[test]
fn pull_request_outputs_get_a_concurrency_group_per_issue() {
    let mut labeled = payload("issues/labeled.json");
    labeled["label"]["name"] = "agent:fix".into();
    let fix = "on:\n  issues:\n    types: [labeled]\nagent: x\nprompt: x\noutput: pull_request\nfrom: anyone\n";
    let spec = job(decide(fix, "issues", &labeled, &MatchInput::default()));
    let number = labeled["issue"]["number"].as_u64().unwrap();
    assert_eq!(
        spec.concurrency_group,
        Some(format!("t/codertocat/hello-world/{number}"))
    );
    // Its own group wins; other outputs get none.
    let named = format!("{fix}concurrency:\n  group: mine\n");
    let spec = job(decide(&named, "issues", &labeled, &MatchInput::default()));
    assert_eq!(spec.concurrency_group.as_deref(), Some("mine"));
    let comment = fix.replace("output: pull_request", "output: comment");
    let spec = job(decide(&comment, "issues", &labeled, &MatchInput::default()));
    assert_eq!(spec.concurrency_group, None);
    // Issues under a dedupe key: one job of the trigger at a time in the repository, so two never both
    // file the issue.
    let dedupe = fix.replace(
        "output: pull_request",
        "output:\n  type: issue\n  dedupe: weekly",
    );
    let spec = job(decide(&dedupe, "issues", &labeled, &MatchInput::default()));
    assert_eq!(
        spec.concurrency_group.as_deref(),
        Some("t/codertocat/hello-world/dedupe")
    );
}

#[test]
fn output_body_dedupe_and_progress_are_rendered_and_frozen() {
    let p = payload("issues/opened.json");
    let pr = "on: issues\nagent: x\nprompt: x\nfrom: anyone\nprogress: false\noutput:\n  type: pull_request\n  body: 'For #{{ event.issue.number }}'\n  draft: true\n";
    let spec = job(decide(pr, "issues", &p, &MatchInput::default()));
    assert_eq!(spec.output_body.as_deref(), Some("For #1"));
    assert!(spec.draft && !spec.progress);
    let issue = "on: issues\nagent: x\nprompt: x\nfrom: anyone\noutput:\n  type: issue\n  dedupe: 'audit-{{ repo }}'\n";
    let spec = job(decide(issue, "issues", &p, &MatchInput::default()));
    assert_eq!(
        spec.dedupe_key.as_deref(),
        Some("audit-Codertocat/Hello-World")
    );
    assert!(spec.progress, "progress is on by default");
    // A key that renders empty dedupes nothing: every job files its own issue.
    let empty = issue.replace("'audit-{{ repo }}'", "\"{{ '  ' }}\"");
    let spec = job(decide(&empty, "issues", &p, &MatchInput::default()));
    assert_eq!(spec.dedupe_key, None);
    // Stored specs from before these fields still parse, with progress on.
    let mut old = serde_json::to_value(&spec).unwrap();
    for key in ["pull", "depth", "output_body", "dedupe_key", "progress"] {
        old.as_object_mut().unwrap().remove(key);
    }
    let old: JobSpec = serde_json::from_value(old).unwrap();
    assert!(old.progress && old.pull.is_none() && old.depth == 0);
}

#[test]
fn output_options_are_checked_with_where_and_a_hint() {
    let bad = |text: &str| -> String {
        load_one(Path::new("triggers/t.yml"), text, None)
            .unwrap_err()
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = bad("on: issues\nagent: x\nprompt: x\noutput:\n  type: issue\n  body: hi\n");
    assert!(
        e.contains("triggers/t.yml:5:3: error: output option `body` does not apply to `issue`\n  hint: it applies to pull_request"),
        "{e}"
    );
    let e = bad("on: issues\nagent: x\nprompt: x\noutput:\n  type: pull_request\n  dedupe: k\n");
    assert!(
        e.contains("output option `dedupe` does not apply to `pull_request`"),
        "{e}"
    );
    let e = bad("on: issues\nagent: x\nprompt: x\noutput:\n  type: issue\n  dedupe: '{{ repo'\n");
    assert!(
        e.contains("the output dedupe key is not a valid template"),
        "{e}"
    );
    let e = bad("on: issues\nagent: x\nprompt: x\nprogress: maybe\n");
    assert!(
        e.contains("triggers/t.yml:4:11: error: invalid boolean"),
        "{e}"
    );
}

#[test]
fn the_schema_accepts_map_form_outputs_with_their_type() {
    let schema = serde_json::to_value(schemars::schema_for!(
        nightshift::trigger::model::TriggerFile
    ))
    .unwrap();
    let output = &schema["$defs"]["Output"];
    let map = output["anyOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "object")
        .expect("a map form");
    let properties = map["properties"].as_object().unwrap();
    for key in ["type", "title", "body", "draft", "labels", "dedupe", "name"] {
        assert!(
            properties.contains_key(key),
            "map-form output lacks `{key}`"
        );
    }
    assert_eq!(map["required"], json!(["type"]));
    assert_eq!(map["additionalProperties"], json!(false));
    let top = schema["properties"].as_object().unwrap();
    assert!(top.contains_key("progress") && top.contains_key("max_depth"));
}

// ---- Stories through the real binary ----

/// Waits until the service's log has a line containing `text`.
async fn wait_for_service_log(spine: &Spine, text: &str) -> String {
    for _ in 0..300 {
        let log = spine.server.as_ref().unwrap().log();
        if log.contains(text) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service never logged `{text}`");
}

async fn spec_of(spine: &mut Spine, job: JobId) -> JobSpec {
    let spec = spine.store().await.job_spec(job).await.unwrap().unwrap();
    serde_json::from_str(&spec).unwrap()
}

/// The `/review` comment as a delivery from our world (clone URL, installation).
fn delivered_comment(spine: &Spine, body: &str, author: &str) -> Vec<u8> {
    let mut p: Value =
        serde_json::from_slice(&spine.payload("issue_comment/created.json")).unwrap();
    p["issue"]["pull_request"] =
        json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1" });
    p["comment"]["body"] = body.into();
    p["comment"]["user"]["login"] = author.into();
    p["sender"]["login"] = author.into();
    serde_json::to_vec(&p).unwrap()
}

#[tokio::test]
async fn a_review_command_on_a_pull_request_runs_on_its_head_and_reacts_once() {
    let head = (
        "review-head.yml",
        "on:\n  issue_comment:\n    command: /review\nagent: head\nprompt: review\n",
    );
    let also = (
        "review-also.yml",
        "on:\n  issue_comment:\n    command: /review\nagent: reply\nprompt: also\n",
    );
    let mut spine = Spine::new(Auth::Token, &[head, also]).await;
    let sha = spine.commit(
        "main",
        "feature",
        "README.md",
        "the pull request's README\n",
    );
    spine.github.set_pull_head(REPO, 1, &sha, "feature", REPO);
    spine.start().await;
    // A stranger's `/review` and an owner's chatter fire nothing and cost no call to GitHub.
    let mut stranger: Value =
        serde_json::from_slice(&delivered_comment(&spine, "/review", "mallory")).unwrap();
    stranger["comment"]["author_association"] = "NONE".into();
    let stranger = serde_json::to_vec(&stranger).unwrap();
    assert_eq!(spine.deliver("issue_comment", "c-0", &stranger).await, 202);
    let chatter = delivered_comment(&spine, "thanks!", "Codertocat");
    assert_eq!(spine.deliver("issue_comment", "c-00", &chatter).await, 202);
    let body = delivered_comment(&spine, "/review", "Codertocat");
    assert_eq!(spine.deliver("issue_comment", "c-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(2).await;
    let reads = spine
        .github
        .calls()
        .iter()
        .filter(|c| c.starts_with("GET /repos/Codertocat/Hello-World/pulls/1"))
        .count();
    assert_eq!(reads, 1, "{:#?}", spine.github.calls());
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:#?}"
    );
    let spec = spec_of(&mut spine, jobs[0].id).await;
    assert_eq!(spec.head_sha.as_deref(), Some(sha.as_str()));
    let pull = spec.pull.expect("the pull request's facts are frozen");
    assert_eq!((pull.head_ref.as_str(), pull.from_fork), ("feature", false));
    // The agent's worktree is the pull request's head, not main.
    let comments = spine.wait_for_comments(2).await;
    let answer = comments
        .iter()
        .find(|c| c.body.starts_with("HEAD "))
        .expect("the head agent answered");
    assert!(
        answer
            .body
            .starts_with(&format!("HEAD {sha}\nthe pull request's README")),
        "{}",
        answer.body
    );
    // Two triggers fired; the comment got one 👀.
    let reactions = spine.github.reactions();
    assert_eq!(reactions.len(), 1, "{reactions:#?}");
    assert_eq!(reactions[0].content, "eyes");
    assert_eq!(reactions[0].comment_id, 492700400);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_review_command_on_a_forks_pull_request_is_skipped_or_read_only_like_a_fork_event() {
    let skip = (
        "review-skip.yml",
        "on:\n  issue_comment:\n    command: /review\nagent: head\nprompt: review\nforks: skip\n",
    );
    let read_only = (
        "review-ro.yml",
        "on:\n  issue_comment:\n    command: /review\nagent: head\nprompt: review\nforks: read_only\n",
    );
    let mut spine = Spine::new(Auth::Token, &[skip, read_only]).await;
    let sha = spine.commit("main", "fork-head", "README.md", "a fork's README\n");
    spine
        .github
        .set_pull_head(REPO, 1, &sha, "patch-1", "stranger/Hello-World");
    spine.start().await;
    let body = delivered_comment(&spine, "/review", "Codertocat");
    assert_eq!(spine.deliver("issue_comment", "c-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(
        jobs.len(),
        1,
        "the forks: skip trigger ran nothing: {jobs:#?}"
    );
    assert_eq!(jobs[0].trigger, "review-ro");
    let spec = spec_of(&mut spine, jobs[0].id).await;
    assert!(spec.read_only, "a fork's code is mounted read-only");
    assert!(spec.pull.unwrap().from_fork);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_reaction_that_fails_is_logged_and_the_job_still_runs() {
    let review = (
        "review.yml",
        "on:\n  issue_comment:\n    command: /review\nagent: reply\nprompt: review\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    let sha = spine.commit("main", "feature", "README.md", "x\n");
    spine.github.set_pull_head(REPO, 1, &sha, "feature", REPO);
    spine
        .github
        .fail_next("reactions/create-for-issue-comment", &[422]);
    spine.start().await;
    let body = delivered_comment(&spine, "/review", "Codertocat");
    assert_eq!(spine.deliver("issue_comment", "c-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    wait_for_service_log(&spine, "could not react to the command's comment").await;
    spine.wait_for_comments(1).await;
}

#[tokio::test]
async fn a_review_command_whose_pull_request_cannot_be_read_fails_with_the_reason() {
    let review = (
        "review.yml",
        "on:\n  issue_comment:\n    command: /review\nagent: head\nprompt: review\n",
    );
    let mut spine = Spine::new(Auth::Token, &[review]).await;
    // pulls/get answers 404 (the pull request is gone).
    spine.start().await;
    spine.github.fail_next("pulls/get", &[404u16]);
    let body = delivered_comment(&spine, "/review", "Codertocat");
    assert_eq!(spine.deliver("issue_comment", "c-1", &body).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Failed);
    let error = jobs[0].error.as_deref().unwrap();
    assert!(
        error.starts_with(
            "pull request #1 could not be read (reading the pull request: GitHub answered 404"
        ),
        "{error}"
    );
    // Nothing ran, nothing was posted, no 👀 for a job that was not queued.
    assert!(spine.github.created().is_empty());
    assert!(spine.github.reactions().is_empty());
    let own = spine.github.own_login();
    assert!(spine.github.comments().iter().all(|c| c.author != own));
}

#[tokio::test]
async fn lineage_a_chain_of_nightshifts_own_comments_stops_at_max_depth_and_a_pasted_marker_counts_for_nothing()
 {
    let answer = (
        "answer.yml",
        "on:\n  issue_comment:\n    types: [created]\nagent: reply\nprompt: answer\nfrom_self: true\n",
    );
    let mut spine = Spine::new(Auth::Token, &[answer]).await;
    spine.start().await;
    let own = common::fake_github::TOKEN_LOGIN;
    let on_issue = |spine: &Spine, body: &str, author: &str| {
        let mut p: Value = serde_json::from_slice(&delivered_comment(spine, body, author)).unwrap();
        p["issue"]["pull_request"] = Value::Null;
        serde_json::to_vec(&p).unwrap()
    };
    // nightshift's own comment with no marker of a known job: depth 1, allowed.
    let first = on_issue(&spine, "answer\n<!-- nightshift:job:999 -->", own);
    assert_eq!(spine.deliver("issue_comment", "own-1", &first).await, 202);
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(spec_of(&mut spine, jobs[0].id).await.depth, 1);
    // Its answer, carrying job 1's marker (and, before it, one naming no job: the deepest counts).
    let second = on_issue(
        &spine,
        &format!(
            "answer <!-- nightshift:job:999 -->\n{}",
            nightshift::sink::texts::marker(jobs[0].id)
        ),
        own,
    );
    assert_eq!(spine.deliver("issue_comment", "own-2", &second).await, 202);
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert_eq!(jobs[1].state, JobState::Failed);
    let error = jobs[1].error.as_deref().unwrap();
    assert!(
        error.starts_with("lineage depth 2 is past max_depth 1"),
        "{error}"
    );
    wait_for_service_log(&spine, "lineage depth 2 is past max_depth 1").await;
    // A person pasting the same marker is depth 0: their comment is theirs.
    let pasted = on_issue(
        &spine,
        &format!("hi\n{}", nightshift::sink::texts::marker(jobs[0].id)),
        "Codertocat",
    );
    assert_eq!(spine.deliver("issue_comment", "person", &pasted).await, 202);
    let jobs = spine.wait_for_finished_jobs(3).await;
    assert_eq!(jobs[2].state, JobState::Succeeded, "{:?}", jobs[2].error);
    assert_eq!(spec_of(&mut spine, jobs[2].id).await.depth, 0);
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn duplicate_labeled_deliveries_of_a_pull_request_trigger_share_one_group() {
    let fix = (
        "fix.yml",
        "on:\n  issues:\n    types: [labeled]\nagent: reply\nprompt: fix\noutput: pull_request\n",
    );
    let mut spine = Spine::new(Auth::Token, &[fix]).await;
    spine.start().await;
    let mut p: Value = serde_json::from_slice(&spine.payload("issues/labeled.json")).unwrap();
    p["sender"]["login"] = "Codertocat".into();
    let body = serde_json::to_vec(&p).unwrap();
    for i in 0..3 {
        assert_eq!(
            spine.deliver("issues", &format!("label-{i}"), &body).await,
            202
        );
    }
    let jobs = spine.wait_for_finished_jobs(3).await;
    let mut groups = Vec::new();
    for j in &jobs {
        groups.push(spec_of(&mut spine, j.id).await.concurrency_group);
    }
    let number = p["issue"]["number"].as_u64().unwrap();
    let group = Some(format!("fix/codertocat/hello-world/{number}"));
    assert_eq!(groups, vec![group.clone(), group.clone(), group]);
    // One at a time: no job started before the one before it ended.
    for pair in jobs.windows(2) {
        let (Some(end), Some(start)) = (pair[0].finished_at, pair[1].started_at) else {
            panic!("{jobs:#?}");
        };
        assert!(start >= end, "{jobs:#?}");
    }
}
