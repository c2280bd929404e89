//! A graceful stop, through the real `nightshift` binary and real signals: on SIGTERM the service says it
//! is draining, claims nothing more, still takes webhooks, lets running jobs finish within `shutdown_grace`,
//! then stops their agents and queues the jobs again without counting their start, and exits 0.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Auth, Spine, agent_processes, append_config};
use nightshift::ids::JobId;
use nightshift::store::{JobState, Store};

const WAITING: (&str, &str) = (
    "triage.yml",
    "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: hi\n",
);

async fn wait_for_file(path: &Path) {
    for _ in 0..600 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

async fn readyz(spine: &Spine) -> (u16, String) {
    let answer = reqwest::get(format!("{}/readyz", spine.url()))
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

async fn wait_for_state(
    spine: &mut Spine,
    job: JobId,
    state: JobState,
) -> nightshift::store::JobRecord {
    for _ in 0..600 {
        let record = spine.store().await.job(job).await.unwrap().unwrap();
        if record.state == state {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} never became {state:?}: {:?}", spine.jobs().await);
}

fn stop(spine: &Spine) {
    spine
        .server
        .as_ref()
        .expect("the server is running")
        .signal(libc::SIGTERM);
}

#[tokio::test]
async fn a_short_job_finishes_during_the_drain_and_is_delivered() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    append_config(&spine, "shutdown_grace: 60s\n");
    spine.start().await;
    assert_eq!(readyz(&spine).await.0, 200);
    spine
        .deliver_example("issues", "drain-1", "issues/opened.json")
        .await;
    wait_for_file(&spine.gate.join("started-1")).await;

    stop(&spine);
    // Draining at once: not ready, yet webhooks are still taken (stored for whoever runs next).
    let mut answer = readyz(&spine).await;
    for _ in 0..100 {
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        answer = readyz(&spine).await;
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert!(answer.1.contains("draining"), "{}", answer.1);
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "drain-2", &body).await, 202);
    // A new job is not claimed while draining; the running one goes on and is delivered.
    std::fs::write(spine.gate.join("release"), "").unwrap();
    let status = spine.server.as_mut().unwrap().exited().await;
    assert!(status.success(), "{status:?}");

    let jobs = spine.jobs().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 1);
    assert_eq!(
        jobs[1].state,
        JobState::Queued,
        "the second job waits for a restart"
    );
    assert_eq!(jobs[1].attempts, 0);
    assert!(!spine.gate.join("started-2").exists());
    let comments = spine.github.comments();
    assert!(
        comments
            .iter()
            .any(|c| c.body.starts_with("finished after the release")),
        "{comments:#?}"
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_job_past_the_grace_period_is_queued_again_uncounted_and_completes_after_restart() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    append_config(&spine, "shutdown_grace: 300ms\n");
    spine.start().await;
    spine
        .deliver_example("issues", "long-1", "issues/opened.json")
        .await;
    wait_for_file(&spine.gate.join("started-1")).await;
    assert!(agent_processes(&spine.gate) > 0);

    stop(&spine);
    let status = spine.server.as_mut().unwrap().exited().await;
    assert!(status.success(), "{status:?}");
    // Its agent was stopped, and the job is back in the queue as if it had not started.
    assert_eq!(
        agent_processes(&spine.gate),
        0,
        "the agent outlived the service"
    );
    let jobs = spine.jobs().await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Queued, "{jobs:?}");
    assert_eq!(jobs[0].attempts, 0);
    let log = spine.job_log(jobs[0].id).await;
    assert!(
        log.iter()
            .any(|l| l.line == "stopped for a service restart; it will run again"),
        "{log:#?}"
    );
    // Nothing of the stopped attempt is left on disk.
    let data = spine.dir.path().join("data");
    assert!(!data.join("worktrees/job-1-1").exists());
    assert!(!data.join("jobs/1-1").exists());
    assert!(!data.join("jobs/1-1.owner").exists());

    spine.start().await;
    wait_for_file(&spine.gate.join("started-2")).await;
    std::fs::write(spine.gate.join("release"), "").unwrap();
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 1, "the stopped start is not counted");
    let comments = spine.github.comments();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn three_restarts_in_a_row_never_fail_a_job() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    append_config(&spine, "shutdown_grace: 100ms\nmax_attempts: 2\n");
    spine.start().await;
    spine
        .deliver_example("issues", "restarts-1", "issues/opened.json")
        .await;
    for start in 1..=3 {
        wait_for_file(&spine.gate.join(format!("started-{start}"))).await;
        stop(&spine);
        let status = spine.server.as_mut().unwrap().exited().await;
        assert!(status.success(), "{status:?}");
        spine.start().await;
    }
    wait_for_file(&spine.gate.join("started-4")).await;
    std::fs::write(spine.gate.join("release"), "").unwrap();
    let jobs = spine.wait_for_finished_jobs(1).await;
    assert_eq!(jobs[0].state, JobState::Succeeded, "{:?}", jobs[0].error);
    assert_eq!(jobs[0].attempts, 1);
}

#[tokio::test]
async fn a_second_signal_stops_the_running_jobs_at_once() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    append_config(&spine, "shutdown_grace: 10m\n");
    spine.start().await;
    spine
        .deliver_example("issues", "twice-1", "issues/opened.json")
        .await;
    wait_for_file(&spine.gate.join("started-1")).await;
    stop(&spine);
    let server = spine.server.as_ref().unwrap();
    for _ in 0..100 {
        if server.log().contains("draining") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.signal(libc::SIGINT);
    let status = spine.server.as_mut().unwrap().exited().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(agent_processes(&spine.gate), 0);
    let job = spine.jobs().await[0].id;
    let record = wait_for_state(&mut spine, job, JobState::Queued).await;
    assert_eq!(record.attempts, 0);
}
