//! Leases, through the real `nightshift` binary: a worker that lost its job stops its agent, leaves the new
//! owner's files alone and posts nothing; a worker whose lease cannot be renewed stops its agent before
//! another can take the job; a job asked to stop while its worker was away is cancelled, not run again.

mod common;

use std::time::Duration;

use common::{Auth, Spine, agent_processes};
use nightshift::store::JobState;
use sqlx::Connection;

const WAITING: (&str, &str) = (
    "triage.yml",
    "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: hi\nprogress: false\n",
);

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

async fn database(spine: &Spine) -> sqlx::SqliteConnection {
    let url = format!(
        "sqlite://{}/state/nightshift.db",
        spine.dir.path().display()
    );
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn a_worker_that_lost_its_job_stops_its_agent_leaves_the_new_owners_files_and_posts_nothing()
{
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "taken-1", "issues/opened.json")
        .await;
    let gate = spine.gate.clone();
    wait_until("the agent started", || gate.join("started-1").exists()).await;
    let data = spine.dir.path().join("data");
    assert!(data.join("worktrees/job-1-1/README.md").exists());

    // Another worker takes the job over (as if this one's lease had run out) and starts its attempt.
    let new_tree = data.join("worktrees/job-1-2");
    std::fs::create_dir_all(&new_tree).unwrap();
    std::fs::write(new_tree.join("work-in-progress"), "the new owner's").unwrap();
    let new_dir = data.join("jobs/1-2/home");
    std::fs::create_dir_all(&new_dir).unwrap();
    std::fs::write(new_dir.join("state"), "the new owner's").unwrap();
    let mut db = database(&spine).await;
    sqlx::query(
        "UPDATE jobs SET lease_owner = 'elsewhere-1-w0', attempts = 2,
                lease_expires_at = (unixepoch() + 600) * 1000 WHERE id = 1",
    )
    .execute(&mut db)
    .await
    .unwrap();

    // The old worker finds out at its next renewal: its agent is stopped, its own files go.
    wait_until("the agent was stopped", || agent_processes(&gate) == 0).await;
    wait_until("the old attempt's files are gone", || {
        !data.join("worktrees/job-1-1").exists() && !data.join("jobs/1-1.owner").exists()
    })
    .await;
    assert!(
        spine
            .server
            .as_ref()
            .unwrap()
            .log()
            .contains("lost the lease on the job")
    );
    // The new owner's are untouched, and nothing was posted.
    assert_eq!(
        std::fs::read_to_string(new_tree.join("work-in-progress")).unwrap(),
        "the new owner's"
    );
    assert!(new_dir.join("state").exists());
    // Releasing the old agent's gate now changes nothing: it is gone.
    std::fs::write(gate.join("release"), "").unwrap();
    let jobs = spine.jobs().await;
    assert_eq!(jobs[0].state, JobState::Running);
    assert!(!gate.join("finished-1").exists());
    assert!(
        spine.github.comments().is_empty(),
        "{:#?}",
        spine.github.comments()
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn an_agent_is_stopped_when_its_lease_cannot_be_renewed_and_the_job_runs_again() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "stuck-1", "issues/opened.json")
        .await;
    let gate = spine.gate.clone();
    wait_until("the agent started", || gate.join("started-1").exists()).await;

    // The store takes no writes (another writer holds it): renewals wait and fail.
    let mut db = database(&spine).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut db)
        .await
        .unwrap();
    wait_until("the agent was stopped", || agent_processes(&gate) == 0).await;
    let log = spine.server.as_ref().unwrap().log();
    assert!(
        log.contains("the lease could not be renewed for two thirds of its length"),
        "{log}"
    );
    sqlx::query("ROLLBACK").execute(&mut db).await.unwrap();

    // Once the lease ran out, the job is taken again and completes.
    wait_until("the job started again", || gate.join("started-2").exists()).await;
    std::fs::write(gate.join("release"), "").unwrap();
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 2);
    assert_eq!(spine.github.comments().len(), 1);
}

#[tokio::test]
async fn a_job_asked_to_stop_while_its_worker_was_dead_is_cancelled_not_run_again() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    spine.start().await;
    spine
        .deliver_example("issues", "dead-1", "issues/opened.json")
        .await;
    let gate = spine.gate.clone();
    wait_until("the agent started", || gate.join("started-1").exists()).await;
    spine.kill();
    let data = spine.dir.path().join("data");
    assert!(
        data.join("worktrees/job-1-1").exists(),
        "the dead worker left its worktree"
    );
    let mut db = database(&spine).await;
    sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = 1")
        .execute(&mut db)
        .await
        .unwrap();

    spine.start().await;
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Cancelled, "{jobs:?}");
    assert!(!gate.join("started-2").exists(), "the agent ran again");
    // What the dead worker left (its process is gone) was cleared.
    assert!(!data.join("worktrees/job-1-1").exists());
    assert!(!data.join("jobs/1-1").exists());
}

#[tokio::test]
async fn agents_in_a_box_or_without_one_die_with_a_service_killed_9() {
    // A service killed -9 runs no cleanup: its agents must not live on, unwatched, in their worktrees.
    let loose: (&str, &str) = (
        "loose.yml",
        "on:\n  issues:\n    types: [opened]\nagent: loose\nprompt: hi\nprogress: false\n",
    );
    let spine = Spine::new(Auth::Token, &[WAITING, loose]).await;
    let gate = spine.gate.clone();
    // `wait` runs in its box (the default); `loose` is the same agent with `sandbox: none`. Both name a
    // folder under the gate on their command line, so agent_processes(gate) counts both.
    let loose_gate = gate.join("loose");
    std::fs::create_dir_all(&loose_gate).unwrap();
    spine.add_agents(&format!(
        "  loose: {{command: [{}, {}], timeout: 90s, sandbox: none}}\n",
        common::manifest_dir()
            .join("tests/agents/wait.sh")
            .display(),
        loose_gate.display()
    ));
    let mut spine = spine;
    spine.start().await;
    spine
        .deliver_example("issues", "orphan-1", "issues/opened.json")
        .await;
    wait_until("the boxed agent started", || {
        gate.join("started-1").exists()
    })
    .await;
    wait_until("the unboxed agent started", || {
        loose_gate.join("started-1").exists()
    })
    .await;
    assert!(agent_processes(&gate) >= 2);
    spine.kill();
    wait_until("every agent died with the service", || {
        agent_processes(&gate) == 0
    })
    .await;
    // Neither ran on to its end.
    assert!(!gate.join("finished-1").exists());
    assert!(!loose_gate.join("finished-1").exists());
}
