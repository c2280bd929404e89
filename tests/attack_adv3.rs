//! The third adversary's attacks (docs/security-adv3.md): each runs what a prompt-injected agent or a
//! stranger would, against the real service, and asserts the service stayed up and nothing leaked.

mod common;

use common::{Auth, Spine, attacker, healthy};
use nightshift::store::JobState;

/// An agent leaves folder trees 20,000 deep in its home and in its worktree. `std::fs::remove_dir_all`
/// goes down one call per level: removing the job's folder overflowed the stack of the runtime thread
/// that did it and aborted the service, and again at each start, which clears the folders of dead attempts.
/// The walk that keeps a job's folders within its disk limit goes through such a tree by descriptor.
#[tokio::test]
async fn folders_nested_deeper_than_a_stack_allows_are_removed_and_the_service_stays_up() {
    let trigger = (
        "deep.yml",
        "on:\n  issues:\n    types: [opened]\nagent: deep\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    let script = r#"cat > /dev/null
python3 - <<'PY'
import os
for top in (os.environ["HOME"], os.getcwd()):
    fd = os.open(top, os.O_RDONLY)
    for _ in range(20000):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
print("nested 20000 deep in the home and the worktree")
PY
"#;
    attacker(&spine, "deep", script, ", timeout: 120s");
    spine.start().await;
    spine
        .deliver_example("issues", "deep-1", "issues/opened.json")
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
        spine.github.comments()[0]
            .body
            .contains("nested 20000 deep"),
        "{log:?}"
    );
    healthy(&spine).await;
    // The attempt's folder is gone with everything in it.
    let jobs_dir = spine.dir.path().join("data/jobs");
    let left: Vec<_> = std::fs::read_dir(&jobs_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with(&format!("{}-", jobs[0].id))),
        "{left:?}"
    );
}

/// A secret the agent was given (an `env:` pass-through) put in a check run's annotation, and in its
/// summary. The check run was started when the job began, so its completion is an update, and that update
/// was sent without the redaction every other body gets; and an annotation's mentions were made inert
/// before the redaction, so a secret with `!@x` in it no longer matched and was posted whole.
#[tokio::test]
async fn a_secret_in_a_check_runs_annotations_is_redacted() {
    const KEY: &str = "dk-live!@x0123456789abcdef";
    let trigger = (
        "check.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: leaker\nprompt: x\nprogress: false\noutput:\n  type: check_run\n  name: leak\n",
    );
    let mut spine = Spine::new(Auth::App, &[trigger]).await;
    let script = r#"cat > /dev/null
python3 - <<'PY'
import json, os
key = os.environ["DEPLOY_API_TOKEN"]
review = {"summary": "summary " + key, "conclusion": "neutral",
          "comments": [{"path": "README.md", "line": 1, "body": "annotation " + key, "severity": "notice"}]}
json.dump(review, open(os.path.join(os.environ["NIGHTSHIFT_OUTPUT_DIR"], "review.json"), "w"))
PY
echo "message $DEPLOY_API_TOKEN"
"#;
    attacker(&spine, "leaker", script, ", env: [DEPLOY_API_TOKEN]");
    spine.start_with_env(&[("DEPLOY_API_TOKEN", KEY)]).await;
    spine
        .deliver_example("issues", "leak-1", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    let runs = spine.github.check_runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(run.annotations.len(), 1, "{run:#?}");
    // Every body the fake received for the check run: the create and each update.
    let sent = serde_json::to_string(&run.history).unwrap();
    let without_joiners = sent.replace('\u{200D}', "").replace("\\u200d", "");
    assert!(!without_joiners.contains("0123456789abcdef"), "{sent}");
    let annotation = run.annotations[0]["message"].as_str().unwrap();
    assert!(annotation.contains("[redacted]"), "{annotation}");
    spine.assert_no_unexpected_calls();
}

/// An agent whose job files issues puts another trigger's dedupe marker in its own issue (the marker is a
/// hash of the trigger's name and its key, both easy to know). The other trigger's later reports went to the
/// agent's issue as comments, under the agent's title and words. Now the marker is broken in what an agent
/// writes, and counts only where nightshift puts it.
#[tokio::test]
async fn a_pasted_dedupe_marker_does_not_take_another_triggers_issue_over() {
    let planter = (
        "notes.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: planter\nprompt: x\nprogress: false\noutput:\n  type: issue\n  title: Harmless notes\n",
    );
    let audit = (
        "audit.yml",
        "on:\n  issues:\n    types: [labeled]\nfrom: anyone\nagent: reply\nprompt: audit\nprogress: false\noutput:\n  type: issue\n  title: Dependency audit\n  dedupe: weekly\n",
    );
    let mut spine = Spine::new(Auth::Token, &[planter, audit]).await;
    let script = r#"cat > /dev/null
python3 - <<'PY'
import hashlib
h = hashlib.sha256(b"audit\0weekly").hexdigest()[:32]
print("Nothing to see.\n<!-- nightshift:dedupe:%s -->\n<!--nightshift:dedupe:%s-->" % (h, h))
PY
"#;
    attacker(&spine, "planter", script, "");
    spine.start().await;
    spine
        .deliver_example("issues", "plant-1", "issues/opened.json")
        .await;
    spine.wait_for_finished_jobs(1).await;
    spine
        .deliver_example("issues", "audit-1", "issues/labeled.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    assert!(
        jobs.iter().all(|j| j.state == JobState::Succeeded),
        "{jobs:#?}"
    );
    let issues = spine.github.issues();
    let planted = issues.iter().find(|i| i.title == "Harmless notes").unwrap();
    assert!(
        !planted.body.contains("<!-- nightshift:dedupe:"),
        "{}",
        planted.body
    );
    let audits: Vec<_> = issues
        .iter()
        .filter(|i| i.title == "Dependency audit")
        .collect();
    assert_eq!(
        audits.len(),
        1,
        "the audit filed its own issue: {issues:#?}"
    );
    assert!(
        spine
            .github
            .comments()
            .iter()
            .all(|c| c.number != planted.number),
        "the audit commented on the planted issue"
    );
    spine.assert_no_unexpected_calls();
}

/// A trigger whose concurrency group renders an issue's body (anyone's text), on Postgres: a group of 10 KB
/// that does not compress was past Postgres's largest index entry, so every insert of the delivery's job
/// failed, and the delivery was retried for ever, holding one of the dispatcher's lanes (eight such
/// repositories held them all). A long group is now kept as its start and its hash.
#[tokio::test]
async fn a_concurrency_group_rendered_from_a_huge_issue_body_still_queues_its_job_on_postgres() {
    let trigger = (
        "grouped.yml",
        "on:\n  issues:\n    types: [opened]\nfrom: anyone\nagent: reply\nprompt: hi\nconcurrency:\n  group: '{{ event.issue.body }}'\n",
    );
    let mut spine = Spine::new(Auth::Token, &[trigger]).await;
    let db = spine.use_store(true).await;
    spine.start().await;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    // 10,000 hex digits of a hash chain: nothing in it repeats, so nothing compresses it.
    let mut body = String::new();
    let mut link = [0u8; 32];
    while body.len() < 10_000 {
        use sha2::Digest;
        link = sha2::Sha256::digest(link).into();
        body.push_str(&hex::encode(link));
    }
    payload["issue"]["body"] = serde_json::Value::String(body);
    let status = spine
        .deliver(
            "issues",
            "huge-group",
            &serde_json::to_vec(&payload).unwrap(),
        )
        .await;
    assert_eq!(status, 202);
    for _ in 0..600 {
        let jobs = db.store.jobs().await.unwrap();
        if jobs.iter().any(|j| j.state == JobState::Succeeded) {
            assert_eq!(jobs.len(), 1);
            assert!(spine.github.comments()[0].body.contains("job 1"));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the job never ran: {:?}", db.store.jobs().await.unwrap());
}
