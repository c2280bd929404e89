//! The on-call commands against a running service: `nightshift jobs cancel ID` and `nightshift jobs retry ID`
//! (the real binary, on the store `serve` uses, SQLite and Postgres), and `nightshift prune`.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{Auth, Spine};
use nightshift::ids::JobId;
use nightshift::store::{JobRecord, JobState};

const WAITING: (&str, &str) = (
    "triage.yml",
    "on:\n  issues:\n    types: [opened]\nagent: wait\nprompt: hi\n",
);

/// Runs `nightshift --config CONFIG ARGS...`.
fn nightshift(spine: &Spine, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nightshift"))
        .arg("--config")
        .arg(&spine.config)
        .args(args)
        .env_remove("NIGHTSHIFT_STORE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn wait_for(
    db: &common::Db,
    what: &str,
    done: impl Fn(&[JobRecord]) -> bool,
) -> Vec<JobRecord> {
    for _ in 0..600 {
        let jobs = db.store.jobs().await.unwrap();
        if done(&jobs) {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {:#?}", db.store.jobs().await.unwrap());
}

async fn wait_for_file(path: &std::path::Path) {
    for _ in 0..600 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

/// A running job cancelled from the command line: the service stops its agent (it never finishes), edits
/// the progress comment to say an operator cancelled it; retried, it runs again as a new job with the same
/// spec, naming the one it retries. What makes no sense is refused with a clear error.
async fn a_running_job_is_cancelled_and_retried_from_the_command_line(postgres: bool) {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    let db = spine.use_store(postgres).await;
    spine.start().await;
    spine
        .deliver_example("issues", "ops-1", "issues/opened.json")
        .await;
    wait_for_file(&spine.gate.join("started-1")).await;
    let job = db.store.jobs().await.unwrap()[0].id;

    let cancel = nightshift(&spine, &["jobs", "cancel", &job.to_string()]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert!(
        stdout(&cancel).contains("asked to stop"),
        "{}",
        stdout(&cancel)
    );
    let jobs = wait_for(&db, "the job was not cancelled", |j| {
        j[0].state == JobState::Cancelled
    })
    .await;
    assert!(
        jobs[0].error.as_deref().unwrap().contains("an operator"),
        "{:?}",
        jobs[0].error
    );
    let comments = spine.wait_for_comments(1).await;
    for _ in 0..100 {
        if spine.github.comments()[0]
            .body
            .contains("cancelled by an operator")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let comment = &spine.github.comments()[0];
    assert_eq!(comments.len(), 1);
    assert!(
        comment
            .body
            .contains("This job was cancelled by an operator"),
        "{}",
        comment.body
    );
    assert!(comment.edits[0].before.contains("Working on it"));
    // The agent was stopped: released now, it has nothing left to finish.
    std::fs::write(spine.gate.join("release"), "").unwrap();
    assert!(!spine.gate.join("finished-1").exists());

    // Cancelling what ended, or what does not exist, is refused.
    let again = nightshift(&spine, &["jobs", "cancel", &job.to_string()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("is cancelled"),
        "{}",
        stderr(&again)
    );
    let unknown = nightshift(&spine, &["jobs", "cancel", "4242"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("there is no job 4242"));

    // Retried: a new job, same spec, runs to the end.
    let retry = nightshift(&spine, &["jobs", "retry", &job.to_string()]);
    assert!(retry.status.success(), "{}", stderr(&retry));
    let new = JobId(stdout(&retry).trim().parse().unwrap());
    assert_ne!(new, job);
    assert_eq!(db.store.retried_from(new).await.unwrap(), Some(job));
    assert_eq!(
        db.store.job_spec(new).await.unwrap(),
        db.store.job_spec(job).await.unwrap()
    );
    let jobs = wait_for(&db, "the retry did not run", |j| {
        j.iter()
            .any(|j| j.id == new && j.state == JobState::Succeeded)
    })
    .await;
    assert_eq!(jobs.len(), 2);
    assert!(spine.gate.join("started-2").exists());
    let running_again = nightshift(&spine, &["jobs", "retry", &new.to_string()]);
    assert_eq!(running_again.status.code(), Some(1));
    assert!(
        stderr(&running_again).contains("only a failed or cancelled job can be retried"),
        "{}",
        stderr(&running_again)
    );
    spine.assert_no_unexpected_calls();
}

#[tokio::test]
async fn a_running_job_is_cancelled_and_retried_on_sqlite() {
    a_running_job_is_cancelled_and_retried_from_the_command_line(false).await;
}

#[tokio::test]
async fn a_running_job_is_cancelled_and_retried_on_postgres() {
    a_running_job_is_cancelled_and_retried_from_the_command_line(true).await;
}

/// A queued job (the only worker is busy) is cancelled at once; its agent never starts.
#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_never_runs() {
    let mut spine = Spine::new(Auth::Token, &[WAITING]).await;
    let text = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(&spine.config, text.replace("workers: 2", "workers: 1")).unwrap();
    let db = spine.use_store(false).await;
    spine.start().await;
    spine
        .deliver_example("issues", "q-1", "issues/opened.json")
        .await;
    wait_for_file(&spine.gate.join("started-1")).await;
    spine
        .deliver_example("issues", "q-2", "issues/opened.json")
        .await;
    let jobs = wait_for(&db, "the second job was not queued", |j| j.len() == 2).await;
    let queued = jobs[1].id;
    assert_eq!(jobs[1].state, JobState::Queued);

    let cancel = nightshift(&spine, &["jobs", "cancel", &queued.to_string()]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert_eq!(stdout(&cancel).trim(), format!("job {queued} cancelled"));
    let record = db.store.job(queued).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled, "cancelled at once");

    std::fs::write(spine.gate.join("release"), "").unwrap();
    wait_for(&db, "the first job did not finish", |j| {
        j[0].state == JobState::Succeeded
    })
    .await;
    assert!(
        !spine.gate.join("started-2").exists(),
        "the cancelled job never ran"
    );
    assert_eq!(db.store.job(queued).await.unwrap().unwrap().attempts, 0);
}

/// `nightshift prune` on the service's store: `--dry-run` says what it would remove and removes nothing;
/// then finished jobs past `prune.jobs` are removed with their logs and job folders, recent ones kept.
#[tokio::test]
async fn prune_removes_old_finished_jobs_and_their_folders() {
    let reply = (
        "reply.yml",
        "on:\n  issues:\n    types: [opened]\nagent: reply\nprompt: hi\n",
    );
    let mut spine = Spine::new(Auth::Token, &[reply]).await;
    common::append_config(&spine, "prune:\n  jobs: 1h\n  logs: 1h\n  payloads: 1h\n");
    let db = spine.use_store(false).await;
    spine.start().await;
    spine
        .deliver_example("issues", "p-1", "issues/opened.json")
        .await;
    spine
        .deliver_example("issues", "p-2", "issues/opened.json")
        .await;
    let jobs = spine.wait_for_finished_jobs(2).await;
    spine.kill();
    let (old, recent) = (jobs[0].id, jobs[1].id);
    // The first ended two hours ago, and its worker left its folder behind.
    let url = format!(
        "sqlite://{}/state/nightshift.db",
        spine.dir.path().display()
    );
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE jobs SET finished_at = finished_at - 7200000 WHERE id = ?")
        .bind(old.0)
        .execute(&raw)
        .await
        .unwrap();
    let left = spine.dir.path().join("data/jobs").join(format!("{old}-1"));
    std::fs::create_dir_all(left.join("home")).unwrap();

    let dry = nightshift(&spine, &["prune", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).starts_with("would remove 1 finished job(s)"),
        "{}",
        stdout(&dry)
    );
    assert!(db.store.job(old).await.unwrap().is_some());
    assert!(left.exists());

    let pruned = nightshift(&spine, &["prune"]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    assert!(
        stdout(&pruned).starts_with("removed 1 finished job(s)"),
        "{}",
        stdout(&pruned)
    );
    assert!(db.store.job(old).await.unwrap().is_none());
    assert!(!left.exists(), "the pruned job's folder is removed");
    let kept = db.store.job(recent).await.unwrap().unwrap();
    assert_eq!(kept.state, JobState::Succeeded);
    assert!(!db.store.job_log(recent).await.unwrap().is_empty());
    let again = nightshift(&spine, &["prune"]);
    assert!(stdout(&again).starts_with("removed 0 finished job(s)"));
}
