//! The second adversary's attacks on what reaches GitHub and what a retried job trusts, each against the
//! real service with the strict fake GitHub, waiting for events (no sleeping and hoping).

mod common;

use std::time::Duration;

use common::fake_github::TOKEN_LOGIN;
use common::{Auth, Spine};
use nightshift::store::{JobState, Store};

const REPO: &str = "Codertocat/Hello-World";

/// Waits until the `wait` agent (tests/agents/wait.sh) has started for the `n`th time.
async fn wait_for_start(spine: &Spine, n: usize) {
    let started = spine.gate.join(format!("started-{n}"));
    for _ in 0..600 {
        if started.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent never started");
}

/// A stranger pastes the hidden marker of the job working on their issue (job numbers count up, so it is
/// easy to guess) into a comment of their own. When the service dies mid-job and the job runs again, the
/// retry looks for what an earlier attempt posted: it must not take the stranger's comment for its own,
/// which would silence its answer and record the stranger's comment as the job's output.
#[tokio::test]
async fn a_pasted_marker_does_not_pass_a_strangers_comment_off_as_the_jobs_answer() {
    let waiting = (
        "triage.yml",
        "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[waiting]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "marker-1", "issues/opened.json")
        .await;
    wait_for_start(&spine, 1).await;
    spine.kill();
    let job = spine.jobs().await[0].id;
    spine.github.add_comment_by(
        REPO,
        1,
        "stranger",
        &format!("Nothing to see here.\n<!-- nightshift:job:{job} -->"),
    );
    std::fs::write(spine.gate.join("release"), "").unwrap();
    spine.start().await;

    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 2, "the job ran again after the crash");
    let comments = spine.wait_for_comments(2).await;
    let answer = comments
        .iter()
        .find(|c| c.author == TOKEN_LOGIN)
        .unwrap_or_else(|| panic!("the job's answer was not posted: {comments:#?}"));
    assert!(
        answer.body.starts_with("finished after the release"),
        "{}",
        answer.body
    );
    let output = spine
        .store()
        .await
        .find_output(job, "comment")
        .await
        .unwrap()
        .expect("the job recorded its comment");
    assert_eq!(
        output.url.as_deref(),
        Some(
            format!(
                "https://github.com/{REPO}/issues/1#issuecomment-{}",
                answer.id
            )
            .as_str()
        ),
        "the job's output is its own comment, not the stranger's"
    );
    spine.assert_no_unexpected_calls();
}
