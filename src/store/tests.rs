//! The store's tests, run against both stores: SQLite on a temporary file, and a real Postgres server that
//! each test starts on a temporary directory (`PgServer`) and stops when it ends. A missing Postgres fails
//! the test (nothing is skipped): `scripts/test.sh` installs it, or `apt-get install postgresql`.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::now_ms;

// The same server the integration tests start, from one file.
#[path = "../../tests/common/postgres.rs"]
mod postgres_server;
use postgres_server::PgServer;

/// A store under test, and what it needs to live (its file, or its server).
pub(crate) struct TestDb {
    store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Sqlite(tempfile::TempDir, sqlx::SqlitePool),
    Postgres(PgServer, sqlx::PgPool),
}

impl TestDb {
    pub(crate) async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/n.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let pool = store.pool.clone();
        TestDb {
            store: Arc::new(store),
            backend: Backend::Sqlite(dir, pool),
        }
    }

    pub(crate) async fn postgres() -> TestDb {
        let server = PgServer::start();
        let store = PostgresStore::connect(&server.url()).await.unwrap();
        let pool = store.pool.clone();
        TestDb {
            store: Arc::new(store),
            backend: Backend::Postgres(server, pool),
        }
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Another connection pool on the same database: a second replica, for Postgres.
    pub(crate) async fn replica(&self) -> Arc<dyn Store> {
        match &self.backend {
            // A second store (its own pools and delivery writer) on the same file.
            Backend::Sqlite(dir, _) => Arc::new(
                SqliteStore::connect(&format!("sqlite://{}/sub/n.db", dir.path().display()))
                    .await
                    .unwrap(),
            ),
            Backend::Postgres(server, _) => {
                Arc::new(PostgresStore::connect(&server.url()).await.unwrap())
            }
        }
    }

    /// The Postgres server's pool, for a test that holds a lock the store's calls take.
    pub(crate) fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(_, pool) => Some(pool),
            Backend::Sqlite(..) => None,
        }
    }

    /// Runs SQL the store has no call for (moving time forward for a test).
    pub(crate) async fn exec(&self, sql: &'static str) {
        match &self.backend {
            Backend::Sqlite(_, pool) => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
            Backend::Postgres(_, pool) => {
                sqlx::query(sql).execute(pool).await.unwrap();
            }
        }
    }
}

pub(crate) fn policy(lease: Duration) -> ClaimPolicy {
    ClaimPolicy::new(lease, 1000)
}

pub(crate) fn delivery(id: &str) -> NewDelivery {
    delivery_with_body(id, bytes::Bytes::from_static(b"{}"))
}

fn delivery_with_body(id: &str, body: impl Into<bytes::Bytes>) -> NewDelivery {
    NewDelivery::new(
        DeliveryId(id.to_owned()),
        "issues".into(),
        Some("opened".into()),
        Some("o/r".into()),
        Some(7),
        body.into(),
    )
}

fn job(trigger: &str) -> NewJob {
    NewJob {
        trigger: trigger.into(),
        repo: "o/r".into(),
        spec: "{}".into(),
        error: None,
        concurrency_group: None,
        cancel_in_progress: false,
    }
}

async fn a_repeated_delivery_is_stored_once(db: &TestDb) {
    let store = db.store();
    assert!(matches!(
        store.insert_delivery(&delivery("a")).await.unwrap(),
        Inserted::New(_)
    ));
    assert_eq!(
        store.insert_delivery(&delivery("a")).await.unwrap(),
        Inserted::Duplicate
    );
    assert_eq!(store.delivery_count().await.unwrap(), 1);
}

async fn matching_is_recorded_once_and_jobs_are_claimed_in_order(db: &TestDb) {
    let store = db.store();
    let Inserted::New(d) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    assert_eq!(store.unmatched_deliveries(10).await.unwrap().len(), 1);
    assert_eq!(
        store
            .record_match(d, &[job("first"), job("second")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store.record_match(d, &[job("first")]).await.unwrap(),
        0,
        "matching twice adds no job"
    );
    assert!(store.unmatched_deliveries(10).await.unwrap().is_empty());

    let lease = Duration::from_secs(60);
    let a = store.claim_job("w1", policy(lease)).await.unwrap().unwrap();
    let b = store.claim_job("w2", policy(lease)).await.unwrap().unwrap();
    assert_eq!(
        (a.trigger.as_str(), b.trigger.as_str()),
        ("first", "second")
    );
    assert_eq!(a.delivery_id.0, "a");
    assert!(
        store
            .claim_job("w3", policy(lease))
            .await
            .unwrap()
            .is_none(),
        "leased jobs are not claimed twice"
    );

    assert!(
        !store
            .finish_job(a.id, "w2", Ending::Succeeded)
            .await
            .unwrap(),
        "only the lease owner finishes a job"
    );
    assert!(
        store
            .finish_job(a.id, "w1", Ending::Succeeded)
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_job(b.id, "w2", Ending::Failed("boom"))
            .await
            .unwrap()
    );
    let jobs = store.jobs().await.unwrap();
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(
        (jobs[1].state, jobs[1].error.as_deref()),
        (JobState::Failed, Some("boom"))
    );
}

async fn an_expired_lease_is_taken_over_and_each_start_counted(db: &TestDb) {
    let store = db.store();
    let Inserted::New(d) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    store.record_match(d, &[job("t")]).await.unwrap();
    let short = Duration::from_millis(0);
    let first = store
        .claim_job("dead", policy(short))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = store
        .claim_job("alive", policy(short))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.id, first.attempt, second.attempt), (second.id, 1, 2));
    assert_eq!(
        store.renew_lease(first.id, "dead", short).await.unwrap(),
        Lease::Lost,
        "the dead worker lost its lease"
    );
    assert!(
        !store
            .finish_job(first.id, "dead", Ending::Succeeded)
            .await
            .unwrap(),
        "a stale worker ends nothing"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The worker judges the attempts (and says so where the job came from).
    let third = store
        .claim_job("third", policy(short))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(third.attempt, 3);
}

async fn a_stored_result_is_delivered_without_running_the_agent_again(db: &TestDb) {
    let store = db.store();
    let Inserted::New(d) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    store.record_match(d, &[job("t")]).await.unwrap();
    let short = Duration::from_millis(0);
    let j = store.claim_job("w1", policy(short)).await.unwrap().unwrap();
    assert_eq!((j.attempt, j.result.as_deref()), (1, None));
    assert!(
        store
            .store_result(j.id, "w1", "{\"done\":1}")
            .await
            .unwrap()
    );
    assert!(
        !store.store_result(j.id, "stale", "{}").await.unwrap(),
        "only the lease holder stores a result"
    );
    assert_eq!(
        store.job(j.id).await.unwrap().unwrap().state,
        JobState::Delivering
    );
    // Its worker died while delivering: the next one gets the result, and the agent's starts stay 1.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.claim_job("w2", policy(short)).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (j.id, 1));
    assert_eq!(again.result.as_deref(), Some("{\"done\":1}"));
    assert_eq!(
        store.job(j.id).await.unwrap().unwrap().state,
        JobState::Delivering
    );
    assert!(
        store
            .finish_job(j.id, "w2", Ending::Succeeded)
            .await
            .unwrap()
    );
}

async fn a_deferred_job_waits_with_its_reason_and_keeps_its_phase(db: &TestDb) {
    let store = db.store();
    for id in ["a", "b"] {
        let Inserted::New(d) = store.insert_delivery(&delivery(id)).await.unwrap() else {
            panic!()
        };
        store.record_match(d, &[job("t")]).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let a = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let b = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    // `a` could not fetch: back to the queue, its start not counted. `b` ran: it waits to deliver.
    let later = crate::now_ms() + 60_000;
    assert!(
        store
            .defer_job(a.id, "w", later, "git fetch failed")
            .await
            .unwrap()
    );
    assert!(store.store_result(b.id, "w", "{}").await.unwrap());
    assert!(
        store
            .defer_job(b.id, "w", later, "GitHub answered 502")
            .await
            .unwrap()
    );
    let jobs = store.jobs().await.unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| (j.state, j.attempts, j.retries, j.waiting.clone().unwrap()))
            .collect::<Vec<_>>(),
        [
            (JobState::Queued, 0, 1, "git fetch failed".to_owned()),
            (JobState::Delivering, 1, 1, "GitHub answered 502".to_owned())
        ]
    );
    assert!(
        store.claim_job("w", policy(lease)).await.unwrap().is_none(),
        "both wait"
    );
    // Their time comes.
    db.exec("UPDATE jobs SET next_attempt_at = 0").await;
    let a2 = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let b2 = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert_eq!(
        (a2.id, a2.attempt, a2.retries, a2.result),
        (a.id, 1, 1, None)
    );
    assert_eq!(
        (b2.id, b2.attempt, b2.result.as_deref()),
        (b.id, 1, Some("{}"))
    );
    assert!(store.job(a.id).await.unwrap().unwrap().waiting.is_none());
}

async fn a_repository_past_its_jobs_an_hour_waits_and_says_why(db: &TestDb) {
    let store = db.store();
    for id in ["a", "b", "c"] {
        let Inserted::New(d) = store.insert_delivery(&delivery(id)).await.unwrap() else {
            panic!()
        };
        store.record_match(d, &[job("t")]).await.unwrap();
    }
    let capped = ClaimPolicy::new(Duration::from_secs(60), 2);
    assert!(
        store
            .claim_job("w", capped.clone())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .claim_job("w", capped.clone())
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .claim_job("w", capped.clone())
            .await
            .unwrap()
            .is_none()
    );
    let third = &store.jobs().await.unwrap()[2];
    assert_eq!(third.state, JobState::Queued);
    assert!(
        third
            .waiting
            .as_deref()
            .unwrap()
            .contains("2 jobs in the last hour"),
        "{third:?}"
    );
    let wait = third.next_attempt_at.unwrap() - crate::now_ms();
    assert!((3_500_000..=3_600_000).contains(&wait), "{wait}");
}

async fn a_concurrency_group_runs_one_job_at_a_time_and_can_cancel_the_rest(db: &TestDb) {
    let store = db.store();
    let lease = Duration::from_secs(60);
    let grouped = |trigger: &str, cancel: bool| NewJob {
        concurrency_group: Some("pr-1".into()),
        cancel_in_progress: cancel,
        ..job(trigger)
    };
    let Inserted::New(d1) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    store
        .record_match(d1, &[grouped("one", false), job("free")])
        .await
        .unwrap();
    let Inserted::New(d2) = store.insert_delivery(&delivery("b")).await.unwrap() else {
        panic!()
    };
    store
        .record_match(d2, &[grouped("two", false)])
        .await
        .unwrap();

    let one = store.claim_job("w1", policy(lease)).await.unwrap().unwrap();
    let free = store.claim_job("w2", policy(lease)).await.unwrap().unwrap();
    assert_eq!(
        (one.trigger.as_str(), free.trigger.as_str()),
        ("one", "free")
    );
    assert!(
        store
            .claim_job("w3", policy(lease))
            .await
            .unwrap()
            .is_none(),
        "`two` waits for `one`"
    );
    store
        .finish_job(one.id, "w1", Ending::Succeeded)
        .await
        .unwrap();
    let two = store.claim_job("w3", policy(lease)).await.unwrap().unwrap();
    assert_eq!(two.trigger, "two");

    // A job that cancels in progress: the queued one is cancelled, the running one asked to stop.
    let Inserted::New(d3) = store.insert_delivery(&delivery("c")).await.unwrap() else {
        panic!()
    };
    store
        .record_match(d3, &[grouped("three", false)])
        .await
        .unwrap();
    let Inserted::New(d4) = store.insert_delivery(&delivery("d")).await.unwrap() else {
        panic!()
    };
    store
        .record_match(d4, &[grouped("four", true)])
        .await
        .unwrap();
    assert_eq!(
        store.renew_lease(two.id, "w3", lease).await.unwrap(),
        Lease::CancelRequested
    );
    store
        .finish_job(two.id, "w3", Ending::Cancelled("replaced"))
        .await
        .unwrap();
    let four = store.claim_job("w1", policy(lease)).await.unwrap().unwrap();
    assert_eq!(four.trigger, "four");
    let states: Vec<(String, JobState)> = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.trigger, j.state))
        .collect();
    assert!(
        states.contains(&("three".into(), JobState::Cancelled)),
        "{states:?}"
    );
    assert!(
        states.contains(&("two".into(), JobState::Cancelled)),
        "{states:?}"
    );
}

async fn concurrent_writers_wait_for_each_other_instead_of_failing(db: &TestDb) {
    let store = db.store();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let id = format!("{t}-{i}");
                let Inserted::New(d) = store.insert_delivery(&delivery(&id)).await? else {
                    anyhow::bail!("duplicate")
                };
                store.record_match(d, &[job("a"), job("b")]).await?;
                if let Some(j) = store
                    .claim_job(&id, policy(Duration::from_secs(60)))
                    .await?
                {
                    store
                        .append_log(j.id, LogStream::Nightshift, &["x".into()])
                        .await?;
                    store.finish_job(j.id, &id, Ending::Succeeded).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.delivery_count().await.unwrap(), 160);
}

/// Every kind of write at once, through two stores on one database (two pools of one process on SQLite's
/// file, two replicas on Postgres): each succeeds (on SQLite none fails with "database is locked", and, run
/// by `sqlite_writes_queue_instead_of_waiting_for_the_lock` on stores that never wait for the lock, none
/// even meets another's), and none is lost.
pub(crate) async fn every_write_at_once_through_two_stores_succeeds_and_none_is_lost(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 6;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let lease = Duration::from_secs(60);
            for i in 0..ROUNDS {
                let id = format!("{t}-{i}");
                let owner = format!("w{t}");
                // Ingest: one delivery alone, a batch of two (the group-commit path), one that fires nothing.
                let Inserted::New(d) = store.insert_delivery(&delivery(&id)).await? else {
                    anyhow::bail!("{id} stored twice")
                };
                let batch = [delivery(&format!("{id}-b1")), delivery(&format!("{id}-b2"))];
                let stored = store.insert_deliveries(&batch, Duration::ZERO).await?;
                anyhow::ensure!(
                    stored.iter().all(|s| matches!(s, Inserted::New(_))),
                    "{stored:?}"
                );
                let Inserted::New(quiet) = stored[0] else {
                    unreachable!()
                };
                store.record_match(quiet, &[]).await?;
                store.record_match(d, &[job("a"), job("b")]).await?;
                // A worker's writes, through to a success and a failure.
                for ending in [Ending::Succeeded, Ending::Failed("boom")] {
                    let Some(j) = store.claim_job(&owner, policy(lease)).await? else {
                        continue;
                    };
                    store.renew_lease(j.id, &owner, lease).await?;
                    store
                        .append_log(j.id, LogStream::Nightshift, &[format!("{id} line")])
                        .await?;
                    let output = Output {
                        kind: "comment".into(),
                        key: format!("k{id}"),
                        url: None,
                        github_id: None,
                        pending: true,
                    };
                    store.record_output(j.id, &output).await?;
                    store.record_usage(j.id, &Usage::default()).await?;
                    store.store_result(j.id, &owner, "{}").await?;
                    store
                        .record_push(&format!("o/{id}"), "main", "abc", j.id)
                        .await?;
                    anyhow::ensure!(
                        store.finish_job(j.id, &owner, ending).await?,
                        "{id}: the job was taken from its worker"
                    );
                    if matches!(ending, Ending::Failed(_)) {
                        store.retry_job(j.id).await?;
                    }
                }
                // The scheduler's, the installations', the dashboard's and the operators' writes.
                store
                    .upsert_repository(&KnownRepo {
                        full_name: format!("o/{id}"),
                        installation_id: Some(7),
                        clone_url: "https://github.com/o/r.git".into(),
                        default_branch: "main".into(),
                    })
                    .await?;
                store.set_last_tick("s", &id, 1).await?;
                store.try_lease("pruner", &owner, 0, 1).await?;
                store.claim_redelivery(&id, now_ms(), 1).await?;
                store
                    .upsert_installation(&Installation {
                        id: t as i64,
                        account: "o".into(),
                        suspended: false,
                    })
                    .await?;
                store
                    .add_installed_repos(t as i64, std::slice::from_ref(&id))
                    .await?;
                let session = DashboardSession {
                    login: format!("u{t}"),
                    admin: false,
                    csrf: "c".into(),
                    expires_at: now_ms() + 60_000,
                };
                store
                    .create_session(&format!("h{id}"), &session, now_ms(), 100)
                    .await?;
                anyhow::ensure!(
                    store
                        .spend_signin(&format!("s{id}"), now_ms() + 60_000, now_ms(), 1000)
                        .await?
                );
                store.cancel_job(JobId(1_000_000), "nothing").await?;
                store
                    .prune(
                        PrunePolicy {
                            payloads: Duration::from_secs(3600),
                            logs: Duration::from_secs(3600),
                            jobs: Duration::from_secs(3600),
                        },
                        false,
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Nothing lost: every delivery (3 a round, and a retry's copy for each failed job), every log line,
    // every repository, installation and session.
    let rounds = TASKS * ROUNDS;
    let jobs = a.jobs().await.unwrap();
    let retries = jobs
        .iter()
        .filter(|j| j.delivery_id.0.contains("retry"))
        .count();
    assert_eq!(
        a.delivery_count().await.unwrap() as usize,
        3 * rounds + retries,
        "{jobs:?}"
    );
    assert_eq!(
        b.repositories().await.unwrap().len(),
        rounds,
        "every repository"
    );
    assert_eq!(b.installations().await.unwrap().len(), TASKS);
    assert_eq!(b.installed_repos().await.unwrap().len(), rounds);
    let logged: usize = {
        let mut n = 0;
        for j in &jobs {
            n += a.job_log(j.id).await.unwrap().len();
        }
        n
    };
    let ran = jobs.iter().filter(|j| j.started_at.is_some()).count();
    assert_eq!(logged, ran, "one log line for each job run");
    for t in 0..TASKS {
        for i in 0..ROUNDS {
            assert!(
                b.session(&format!("h{t}-{i}"), now_ms())
                    .await
                    .unwrap()
                    .is_some(),
                "the session of {t}-{i}"
            );
        }
    }
}

async fn every_write_at_once_through_two_stores(db: &TestDb) {
    every_write_at_once_through_two_stores_succeeds_and_none_is_lost(
        db.store(),
        db.replica().await,
    )
    .await;
}

async fn a_job_that_could_not_be_prepared_is_stored_failed(db: &TestDb) {
    let store = db.store();
    let Inserted::New(d) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    let mut bad = job("t");
    bad.error = Some("undefined value".into());
    assert_eq!(store.record_match(d, &[bad]).await.unwrap(), 0);
    assert!(
        store
            .claim_job("w", policy(Duration::from_secs(1)))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.jobs().await.unwrap()[0].state, JobState::Failed);
}

async fn logs_and_outputs_round_trip(db: &TestDb) {
    let store = db.store();
    let Inserted::New(d) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    store.record_match(d, &[job("t")]).await.unwrap();
    let j = store
        .claim_job("w", policy(Duration::from_secs(9)))
        .await
        .unwrap()
        .unwrap();
    store
        .append_log(j.id, LogStream::Stderr, &["one".into(), "two".into()])
        .await
        .unwrap();
    let log = store.job_log(j.id).await.unwrap();
    assert_eq!(
        log.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert!(store.find_output(j.id, "comment").await.unwrap().is_none());
    let mut out = Output {
        kind: "comment".into(),
        key: "comment".into(),
        url: None,
        github_id: None,
        pending: true,
    };
    store.record_output(j.id, &out).await.unwrap();
    assert_eq!(
        store.find_output(j.id, "comment").await.unwrap(),
        Some(out.clone())
    );
    out.url = Some("u".into());
    out.github_id = Some(7);
    out.pending = false;
    store.record_output(j.id, &out).await.unwrap();
    assert_eq!(
        store.find_output(j.id, "comment").await.unwrap(),
        Some(out.clone())
    );
    assert_eq!(store.outputs(j.id).await.unwrap(), [out]);
    assert_eq!(store.delivery_payload(d).await.unwrap(), b"{}");
}
/// Replicas claiming at once never take one job twice.
async fn replicas_claiming_at_once_take_each_job_once(db: &TestDb) {
    let store = db.store();
    for i in 0..40 {
        let Inserted::New(d) = store
            .insert_delivery(&delivery(&format!("d{i}")))
            .await
            .unwrap()
        else {
            panic!()
        };
        store.record_match(d, &[job("a"), job("b")]).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let mut tasks = Vec::new();
    for r in 0..8 {
        let replica = db.replica().await;
        tasks.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(j) = replica.claim_job(&format!("r{r}"), policy(lease)).await? {
                claimed.push(j.id.0);
            }
            anyhow::Ok(claimed)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap().unwrap());
    }
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!((claimed, all.len()), (80, 80), "each job claimed once");
}

/// Replicas claiming at the same moment start one job of a concurrency group, not one each.
async fn replicas_claiming_at_once_start_one_job_of_a_group(db: &TestDb) {
    let store = db.store();
    let lease = Duration::from_secs(60);
    let mut replicas = Vec::new();
    for _ in 0..6 {
        replicas.push(db.replica().await);
    }
    for round in 0..10 {
        for i in 0..6 {
            let Inserted::New(d) = store
                .insert_delivery(&delivery(&format!("d{round}-{i}")))
                .await
                .unwrap()
            else {
                panic!()
            };
            let grouped = NewJob {
                concurrency_group: Some(format!("g{round}")),
                ..job("t")
            };
            store.record_match(d, &[grouped]).await.unwrap();
        }
        let start = Arc::new(tokio::sync::Barrier::new(replicas.len()));
        let mut tasks = Vec::new();
        for (r, replica) in replicas.iter().enumerate() {
            let (replica, start) = (replica.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                replica.claim_job(&format!("r{r}"), policy(lease)).await
            }));
        }
        let mut started = Vec::new();
        for task in tasks {
            started.extend(task.await.unwrap().unwrap());
        }
        assert_eq!(
            started.len(),
            1,
            "round {round}: {:?}",
            started.iter().map(|j| j.id).collect::<Vec<_>>()
        );
    }
}

/// Text from payloads and agents may hold NUL (SQLite keeps it, Postgres refuses it): it never fails the
/// write, and the rest of the text is kept.
async fn text_with_nul_is_stored(db: &TestDb) {
    let store = db.store();
    let mut hostile = delivery("nul\0id");
    hostile.repo = Some("o/r\0".into());
    let Inserted::New(d) = store.insert_delivery(&hostile).await.unwrap() else {
        panic!()
    };
    store.record_match(d, &[job("t")]).await.unwrap();
    let j = store
        .claim_job("w", policy(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    store
        .append_log(j.id, LogStream::Stdout, &["before\0after".into()])
        .await
        .unwrap();
    let log = store.job_log(j.id).await.unwrap();
    assert!(
        log[0].line.starts_with("before") && log[0].line.ends_with("after"),
        "{log:?}"
    );
    assert!(
        store
            .store_result(j.id, "w", "{\"x\":\"a\0b\"}")
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_job(j.id, "w", Ending::Failed("bad\0error"))
            .await
            .unwrap()
    );
    let record = store.job(j.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Failed);
    assert!(record.error.unwrap().starts_with("bad"));
}

/// What the SQLite store's own tests did not reach: usage and spend, repositories, schedule ticks, pushes,
/// recent jobs, specs, forgotten outputs.
async fn usage_repositories_ticks_and_pushes_round_trip(db: &TestDb) {
    let store = db.store();
    for id in ["a", "b", "c"] {
        let Inserted::New(d) = store.insert_delivery(&delivery(id)).await.unwrap() else {
            panic!()
        };
        store.record_match(d, &[job("t")]).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let a = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let b = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let spent = |cost| Usage {
        cost_usd: cost,
        turns: Some(3),
        ..Usage::default()
    };
    store.record_usage(a.id, &spent(Some(0.25))).await.unwrap();
    store.record_usage(b.id, &spent(None)).await.unwrap();
    assert_eq!(store.spend_since("o/r", 0).await.unwrap(), 0.25);
    assert_eq!(store.spend_since("other/repo", 0).await.unwrap(), 0.0);
    assert_eq!(
        store.job(a.id).await.unwrap().unwrap().usage,
        Some(spent(Some(0.25)))
    );
    assert_eq!(store.job_spec(a.id).await.unwrap().as_deref(), Some("{}"));
    assert_eq!(store.job_spec(JobId(999_999)).await.unwrap(), None);
    let recent: Vec<_> = store
        .recent_jobs(2)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.delivery_id.0)
        .collect();
    assert_eq!(recent, ["b", "c"], "the newest two, oldest first");

    let repo = |name: &str, installation| KnownRepo {
        full_name: name.into(),
        installation_id: installation,
        clone_url: format!("https://github.com/{name}.git"),
        default_branch: "main".into(),
    };
    store
        .upsert_repository(&repo("o/z", Some(1)))
        .await
        .unwrap();
    store
        .upsert_repository(&repo("o/a", Some(2)))
        .await
        .unwrap();
    let mut renamed = repo("o/z", None);
    renamed.default_branch = "trunk".into();
    store.upsert_repository(&renamed).await.unwrap();
    let repos = store.repositories().await.unwrap();
    assert_eq!(
        repos
            .iter()
            .map(|r| (
                r.full_name.as_str(),
                r.installation_id,
                r.default_branch.as_str()
            ))
            .collect::<Vec<_>>(),
        [("o/a", Some(2), "main"), ("o/z", Some(1), "trunk")],
        "a delivery without an installation keeps the known one"
    );

    assert_eq!(store.last_tick("0 * * * *@UTC", "o/r").await.unwrap(), None);
    store
        .set_last_tick("0 * * * *@UTC", "o/r", 2_000)
        .await
        .unwrap();
    store
        .set_last_tick("0 * * * *@UTC", "o/r", 1_000)
        .await
        .unwrap();
    assert_eq!(
        store.last_tick("0 * * * *@UTC", "o/r").await.unwrap(),
        Some(2_000),
        "a tick only moves forward"
    );

    assert_eq!(store.last_push("o/r", "fix").await.unwrap(), None);
    store.record_push("o/r", "fix", "aaa", a.id).await.unwrap();
    store.record_push("o/r", "fix", "bbb", b.id).await.unwrap();
    assert_eq!(
        store.last_push("o/r", "fix").await.unwrap().as_deref(),
        Some("bbb")
    );

    let out = Output {
        kind: "comment".into(),
        key: "k".into(),
        url: None,
        github_id: None,
        pending: true,
    };
    store.record_output(a.id, &out).await.unwrap();
    store.delete_output(a.id, "k").await.unwrap();
    assert!(store.outputs(a.id).await.unwrap().is_empty());
}

/// A job of `repo` running agent profile `agent`, with a spec a worker could run.
pub(crate) fn job_of(trigger: &str, repo: &str, agent: &str) -> NewJob {
    NewJob {
        repo: repo.into(),
        // Hostile text in the spec (an escaped NUL) must not keep the job from being stored or claimed.
        spec: serde_json::json!({"agent": agent, "prompt": "a\u{0}b", "repo": repo}).to_string(),
        ..job(trigger)
    }
}

/// Stores a delivery of `repo` and queues `jobs` for it.
pub(crate) async fn queue(store: &Arc<dyn Store>, id: &str, repo: &str, jobs: &[NewJob]) -> i64 {
    let mut d = delivery(id);
    d.repo = Some(repo.into());
    let Inserted::New(d) = store.insert_delivery(&d).await.unwrap() else {
        panic!()
    };
    store.record_match(d, jobs).await.unwrap();
    d
}

/// One claim for several workers leases each at most one job, each to its own worker, in the order asked,
/// and holds every limit across the batch as separate claims would: one job of a concurrency group, one of
/// a profile at its limit; a repository's second job only once every other repository's first is taken.
async fn a_claim_for_several_workers_leases_each_its_own_job_within_the_limits(db: &TestDb) {
    let store = db.store();
    let a = queue(
        &store,
        "a",
        "o/a",
        &[job_of("t1", "o/a", "x"), job_of("t2", "o/a", "x")],
    )
    .await;
    let grouped = |trigger: &str, repo: &str| NewJob {
        concurrency_group: Some("g".into()),
        ..job_of(trigger, repo, "x")
    };
    queue(&store, "b", "o/b", &[grouped("t", "o/b")]).await;
    queue(&store, "c", "o/c", &[grouped("t", "o/c")]).await;
    queue(&store, "d", "o/d", &[job_of("t", "o/d", "y")]).await;
    queue(&store, "e", "o/e", &[job_of("t", "o/e", "y")]).await;
    let mut policy = policy(Duration::from_secs(600));
    policy.max_concurrent = Arc::new([("y".to_owned(), 1)].into_iter().collect());
    let owners: Vec<String> = (0..6).map(|n| format!("w{n}")).collect();

    let jobs = store.claim_jobs(&owners, policy.clone()).await.unwrap();
    let repos: Vec<&str> = jobs.iter().map(|j| j.repo.as_str()).collect();
    // a's first job, one of b and c (their group), one of d and e (profile y at 1), then a's second.
    assert_eq!(jobs.len(), 4, "{repos:?}");
    assert_eq!(
        repos.iter().filter(|r| **r == "o/a").count(),
        2,
        "{repos:?}"
    );
    assert_eq!(
        repos.iter().filter(|r| ["o/b", "o/c"].contains(r)).count(),
        1,
        "{repos:?}"
    );
    assert_eq!(
        repos.iter().filter(|r| ["o/d", "o/e"].contains(r)).count(),
        1,
        "{repos:?}"
    );
    assert_eq!(
        repos.iter().rposition(|r| *r == "o/a"),
        Some(3),
        "a's second job comes after every other repository's first: {repos:?}"
    );
    assert_eq!(jobs[0].delivery, a, "the oldest job first");
    let mut ids: Vec<i64> = jobs.iter().map(|j| j.id.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "no job twice");
    // Each job is leased to the owner at its place, and to no other.
    for (job, owner) in jobs.iter().zip(&owners) {
        assert_eq!(
            store
                .renew_lease(job.id, owner, Duration::from_secs(600))
                .await
                .unwrap(),
            Lease::Held,
            "job {} is {owner}'s",
            job.id.0
        );
        assert_eq!(job.attempt, 1);
        for other in owners.iter().filter(|o| *o != owner) {
            assert!(
                !store
                    .finish_job(job.id, other, Ending::Succeeded)
                    .await
                    .unwrap()
            );
        }
    }
    // Nothing else may start while they run; once they end, the other of each limited pair does.
    assert!(
        store
            .claim_jobs(&owners, policy.clone())
            .await
            .unwrap()
            .is_empty()
    );
    for (job, owner) in jobs.iter().zip(&owners) {
        assert!(
            store
                .finish_job(job.id, owner, Ending::Succeeded)
                .await
                .unwrap()
        );
    }
    let rest = store.claim_jobs(&owners, policy.clone()).await.unwrap();
    let mut repos: Vec<&str> = rest.iter().map(|j| j.repo.as_str()).collect();
    repos.sort();
    assert_eq!(repos.len(), 2, "{repos:?}");
    assert!(
        ["o/b", "o/c"].contains(&repos[0]) && ["o/d", "o/e"].contains(&repos[1]),
        "{repos:?}"
    );
    // No owner asked for, no claim.
    assert!(store.claim_jobs(&[], policy).await.unwrap().is_empty());
}

/// A flood of jobs from one repository, queued first, does not starve another repository's one job: the
/// other repository's job is claimed next, running or not, and the dispatcher's look at unmatched
/// deliveries shows every repository's oldest.
async fn a_flood_from_one_repository_does_not_starve_another(db: &TestDb) {
    let store = db.store();
    for n in 0..30 {
        queue(
            &store,
            &format!("a{n}"),
            "o/flood",
            &[job_of("t", "o/flood", "x")],
        )
        .await;
    }
    queue(&store, "b", "o/quiet", &[job_of("t", "o/quiet", "x")]).await;
    let lease = Duration::from_secs(60);
    // One worker: the flood's first job, then the quiet repository's (served least recently), then the flood.
    let first = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert_eq!(first.repo, "o/flood");
    assert!(
        store
            .finish_job(first.id, "w", Ending::Succeeded)
            .await
            .unwrap()
    );
    let second = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert_eq!(
        second.repo, "o/quiet",
        "the quiet repository's job waits behind no flood"
    );
    assert!(
        store
            .finish_job(second.id, "w", Ending::Succeeded)
            .await
            .unwrap()
    );
    let third = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert_eq!(third.repo, "o/flood");

    // Deliveries: one per repository, oldest first, however long one repository's backlog.
    for n in 0..30 {
        let mut d = delivery(&format!("u-a{n}"));
        d.repo = Some("o/flood".into());
        store.insert_delivery(&d).await.unwrap();
    }
    let mut d = delivery("u-b");
    d.repo = Some("o/quiet".into());
    let Inserted::New(quiet) = store.insert_delivery(&d).await.unwrap() else {
        panic!()
    };
    // Deliveries about no repository (an installation event) form a lane of their own.
    for n in 0..3 {
        let mut d = delivery(&format!("u-none{n}"));
        d.repo = None;
        store.insert_delivery(&d).await.unwrap();
    }
    let mut d = delivery("u-c");
    d.repo = Some("o/another".into());
    store.insert_delivery(&d).await.unwrap();
    let heads = |limit| {
        let store = store.clone();
        async move {
            store
                .unmatched_heads(limit)
                .await
                .unwrap()
                .into_iter()
                .map(|h| h.delivery_id.0)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(heads(10).await, ["u-a0", "u-b", "u-none0", "u-c"]);
    assert_eq!(heads(2).await, ["u-a0", "u-b"]);
    // A matched head gives way to nothing in its repository: the quiet one has no other.
    store.record_match(quiet, &[]).await.unwrap();
    assert_eq!(heads(10).await, ["u-a0", "u-none0", "u-c"]);
}

/// Fair across installations: a repository of an installation with a job running gives way to a repository
/// of another installation with none, though it is older and its repository runs nothing; a job whose
/// claim is refused by a limit under the claim's locks (here the hourly cap) holds no other back.
async fn an_installation_running_jobs_gives_way_to_another(db: &TestDb) {
    let store = db.store();
    let of = |id: &str, repo: &str, installation: i64| {
        let mut d = delivery(id);
        d.repo = Some(repo.into());
        d.installation_id = Some(installation);
        d
    };
    for (id, repo, installation) in [
        ("a1", "busy/one", 1),
        ("a2", "busy/two", 1),
        ("b1", "quiet/one", 2),
    ] {
        let Inserted::New(d) = store
            .insert_delivery(&of(id, repo, installation))
            .await
            .unwrap()
        else {
            panic!()
        };
        store
            .record_match(d, &[job_of("t", repo, "x")])
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let first = store.claim_job("w1", policy(lease)).await.unwrap().unwrap();
    assert_eq!(first.repo, "busy/one", "the oldest job first");
    let second = store.claim_job("w2", policy(lease)).await.unwrap().unwrap();
    assert_eq!(
        second.repo, "quiet/one",
        "the installation with nothing running goes before the one with a job running"
    );
    let third = store.claim_job("w3", policy(lease)).await.unwrap().unwrap();
    assert_eq!(third.repo, "busy/two");
    for (job, owner) in [(&first, "w1"), (&second, "w2"), (&third, "w3")] {
        assert!(
            store
                .finish_job(job.id, owner, Ending::Succeeded)
                .await
                .unwrap()
        );
    }

    // capped/r has started two jobs this hour, open/r one since: at a cap of 2, capped/r (served least
    // recently) is looked at first, its job waits (with the reason), and the same claim goes on to open/r's.
    let run_one = |id: &'static str, repo: &'static str| {
        let store = store.clone();
        async move {
            let Inserted::New(d) = store.insert_delivery(&of(id, repo, 3)).await.unwrap() else {
                panic!()
            };
            store
                .record_match(d, &[job_of("t", repo, "x")])
                .await
                .unwrap();
            let job = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
            assert_eq!(job.repo, repo);
            assert!(
                store
                    .finish_job(job.id, "w", Ending::Succeeded)
                    .await
                    .unwrap()
            );
        }
    };
    run_one("c1", "capped/r").await;
    run_one("c2", "capped/r").await;
    run_one("o1", "open/r").await;
    for (id, repo) in [("c3", "capped/r"), ("o2", "open/r")] {
        let Inserted::New(d) = store.insert_delivery(&of(id, repo, 3)).await.unwrap() else {
            panic!()
        };
        store
            .record_match(d, &[job_of("t", repo, "x")])
            .await
            .unwrap();
    }
    let capped = ClaimPolicy::new(lease, 2);
    let next = store
        .claim_job("w4", capped.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.repo, "open/r",
        "the capped repository holds no other back"
    );
    assert!(store.claim_job("w5", capped).await.unwrap().is_none());
    let waiting = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.repo == "capped/r" && j.state == JobState::Queued)
        .unwrap();
    assert!(
        waiting.waiting.unwrap().contains("max_jobs_per_hour"),
        "the capped job says why it waits"
    );
}

/// Per-profile and per-repository limits: never more of a profile's (or a repository's) jobs running than
/// its limit, across replicas claiming at once; the other jobs still run.
async fn concurrency_limits_hold_per_profile_and_repository(db: &TestDb) {
    let store = db.store();
    for n in 0..6 {
        let repo = format!("o/r{}", n % 3);
        queue(
            &store,
            &format!("c{n}"),
            &repo,
            &[job_of("t", &repo, "claude")],
        )
        .await;
    }
    queue(&store, "x", "o/r0", &[job_of("t", "o/r0", "codex")]).await;
    let mut limited = policy(Duration::from_secs(60));
    limited.max_concurrent = Arc::new([("claude".to_owned(), 1)].into_iter().collect());
    // Replicas claiming at once (on SQLite: the same store).
    let mut claims = Vec::new();
    for n in 0..6 {
        let replica = db.replica().await;
        let limited = limited.clone();
        claims.push(tokio::spawn(async move {
            replica.claim_job(&format!("w{n}"), limited).await.unwrap()
        }));
    }
    let mut claimed = Vec::new();
    for c in claims {
        claimed.extend(c.await.unwrap());
    }
    let agents: Vec<String> = claimed
        .iter()
        .map(|j| serde_json::from_str::<serde_json::Value>(&j.spec).unwrap()["agent"].to_string())
        .collect();
    assert_eq!(
        agents.iter().filter(|a| a.contains("claude")).count(),
        1,
        "one claude job at a time: {agents:?}"
    );
    assert!(agents.iter().any(|a| a.contains("codex")), "{agents:?}");
    assert_eq!(claimed.len(), 2);
    // Ending it lets the next one start.
    assert!(
        store
            .claim_job("late", limited.clone())
            .await
            .unwrap()
            .is_none()
    );
    db.exec("UPDATE jobs SET state = 'succeeded', lease_owner = NULL WHERE agent = 'claude' AND state = 'running'")
        .await;
    let next = store
        .claim_job("late", limited.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(next.spec.contains("claude"));

    // A repository cap of 1: the repository with a running job waits, the others start.
    let mut per_repo = policy(Duration::from_secs(60));
    per_repo.max_concurrent_per_repo = Some(1);
    let running_repos: Vec<String> = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.state == JobState::Running)
        .map(|j| j.repo)
        .collect();
    let mut started = Vec::new();
    while let Some(j) = store.claim_job("r", per_repo.clone()).await.unwrap() {
        started.push(j.repo);
    }
    let mut all: Vec<String> = running_repos.into_iter().chain(started).collect();
    let before = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        before,
        "two jobs of one repository running: {all:?}"
    );
}

/// `nightshift jobs cancel` and `retry`: a queued job is cancelled at once, a running one is asked to stop
/// (its worker learns it at the next renewal, with the operator's reason); a failed or cancelled job is
/// queued again as a new job with the same spec, naming the one it retries; what makes no sense is refused.
async fn jobs_are_cancelled_and_retried_for_an_operator(db: &TestDb) {
    let store = db.store();
    queue(
        &store,
        "k",
        "o/r",
        &[job_of("run", "o/r", "x"), job_of("wait", "o/r", "x")],
    )
    .await;
    let lease = Duration::from_secs(60);
    let running = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let queued = store.jobs().await.unwrap()[1].id;

    assert_eq!(
        store.cancel_job(queued, "by hand").await.unwrap(),
        Cancel::Cancelled
    );
    let record = store.job(queued).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.error.as_deref()),
        (JobState::Cancelled, Some("by hand"))
    );
    assert!(
        store
            .claim_job("w2", policy(lease))
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(
        store.cancel_job(running.id, "stop it").await.unwrap(),
        Cancel::Requested
    );
    assert_eq!(
        store.renew_lease(running.id, "w", lease).await.unwrap(),
        Lease::CancelRequested
    );
    assert_eq!(
        store.cancel_reason(running.id).await.unwrap().as_deref(),
        Some("stop it")
    );
    assert!(store.store_result(running.id, "w", "{}").await.unwrap());
    assert_eq!(
        store.cancel_job(running.id, "again").await.unwrap(),
        Cancel::Refused(JobState::Delivering)
    );
    assert!(
        store
            .finish_job(running.id, "w", Ending::Failed("boom"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.cancel_job(JobId(9999), "x").await.unwrap(),
        Cancel::NoSuchJob
    );

    // Retries: of the failed one and of the cancelled one, each a new job with the same spec.
    let Retry::Queued(again) = store.retry_job(running.id).await.unwrap() else {
        panic!("a failed job is retried")
    };
    assert_ne!(again, running.id);
    assert_eq!(
        store.job_spec(again).await.unwrap(),
        store.job_spec(running.id).await.unwrap()
    );
    assert_eq!(store.retried_from(again).await.unwrap(), Some(running.id));
    assert!(matches!(
        store.retry_job(queued).await.unwrap(),
        Retry::Queued(_)
    ));
    let Retry::Queued(twice) = store.retry_job(running.id).await.unwrap() else {
        panic!("a job can be retried more than once")
    };
    assert_ne!(twice, again);
    assert_eq!(
        store.retry_job(again).await.unwrap(),
        Retry::Refused(JobState::Queued)
    );
    assert_eq!(
        store.retry_job(JobId(9999)).await.unwrap(),
        Retry::NoSuchJob
    );
    // The retry runs like any job, with its event's payload.
    let claimed = store.claim_job("w3", policy(lease)).await.unwrap().unwrap();
    assert_eq!(claimed.id, again);
    assert_eq!(claimed.trigger, "run");
    assert_eq!(
        store.delivery_payload(claimed.delivery).await.unwrap(),
        b"{}".to_vec()
    );
    // A job that could not be prepared has nothing to run again.
    let mut unprepared = job("broken");
    unprepared.error = Some("bad template".into());
    queue(&store, "u", "o/r", &[unprepared]).await;
    let broken = store.jobs().await.unwrap().last().unwrap().id;
    assert_eq!(store.retry_job(broken).await.unwrap(), Retry::NoSpec);
}

/// A retry the store refuses (the job is still queued) leaves the job as it was: the next claim takes it,
/// the oldest, not a younger job behind it. (A refusal that kept the job's row locked until its connection
/// was next used made claims skip the job meanwhile.)
async fn a_refused_retry_holds_no_job_back(db: &TestDb) {
    let store = db.store();
    let lease = Duration::from_secs(60);
    for n in 0..20 {
        queue(
            &store,
            &format!("d{n}"),
            "o/r",
            &[job_of("first", "o/r", "x"), job_of("second", "o/r", "x")],
        )
        .await;
        let jobs = store.jobs().await.unwrap();
        let first = jobs[jobs.len() - 2].id;
        assert_eq!(
            store.retry_job(first).await.unwrap(),
            Retry::Refused(JobState::Queued)
        );
        let claimed = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
        assert_eq!((claimed.id, n), (first, n), "the oldest queued job first");
        let second = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
        for job in [claimed.id, second.id] {
            assert!(store.finish_job(job, "w", Ending::Succeeded).await.unwrap());
        }
    }
}

/// Retention removes finished jobs (with logs and outputs), older logs and payloads, and never what a
/// queued job or an unmatched delivery needs; a dry run says the same and removes nothing; a second run
/// removes nothing more.
async fn prune_removes_what_ended_long_ago_and_nothing_a_job_needs(db: &TestDb) {
    let store = db.store();
    let lease = Duration::from_secs(60);
    queue(&store, "old", "o/r", &[job_of("old", "o/r", "x")]).await;
    queue(&store, "mid", "o/r", &[job_of("mid", "o/r", "x")]).await;
    for _ in 0..2 {
        let j = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
        store
            .append_log(j.id, LogStream::Stdout, &["one".into(), "two".into()])
            .await
            .unwrap();
        let out = Output {
            kind: "comment".into(),
            key: "k".into(),
            url: None,
            github_id: Some(1),
            pending: false,
        };
        store.record_output(j.id, &out).await.unwrap();
        assert!(
            store
                .finish_job(j.id, "w", Ending::Failed("x"))
                .await
                .unwrap()
        );
    }
    queue(&store, "waiting", "o/r", &[job_of("waiting", "o/r", "x")]).await;
    let mut unmatched = delivery("unmatched");
    unmatched.payload = bytes::Bytes::from_static(b"{\"keep\":1}");
    store.insert_delivery(&unmatched).await.unwrap();
    // Everything arrived 100 days ago; `old` ended 100 days ago, `mid` 40.
    db.exec("UPDATE deliveries SET received_at = received_at - 8640000000")
        .await;
    db.exec("UPDATE jobs SET finished_at = finished_at - 8640000000 WHERE trigger_name = 'old'")
        .await;
    db.exec("UPDATE jobs SET finished_at = finished_at - 3456000000 WHERE trigger_name = 'mid'")
        .await;
    let jobs = store.jobs().await.unwrap();
    let (old, mid, waiting) = (jobs[0].id, jobs[1].id, jobs[2].id);

    let keep = crate::config::DEFAULT_PRUNE;
    let dry = store.prune(keep, true).await.unwrap();
    assert_eq!(
        store.jobs().await.unwrap().len(),
        3,
        "a dry run removes nothing"
    );
    let pruned = store.prune(keep, false).await.unwrap();
    assert_eq!(dry, pruned);
    assert_eq!(pruned.jobs, vec![(old, "o/r".to_owned())]);
    assert_eq!(
        (pruned.log_lines, pruned.deliveries, pruned.payloads),
        (2, 1, 1)
    );

    assert!(store.job(old).await.unwrap().is_none());
    assert!(store.outputs(old).await.unwrap().is_empty());
    assert!(
        store.job_log(mid).await.unwrap().is_empty(),
        "a month-old log is removed"
    );
    assert_eq!(
        store.outputs(mid).await.unwrap().len(),
        1,
        "a kept job keeps its outputs"
    );
    assert_eq!(store.retry_job(mid).await.unwrap(), Retry::PayloadPruned);
    // The queued job's payload and the unmatched delivery are kept, however old.
    let claimed = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert_eq!(claimed.id, waiting);
    assert_eq!(
        store.delivery_payload(claimed.delivery).await.unwrap(),
        b"{}".to_vec()
    );
    let heads = store.unmatched_heads(10).await.unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        store.delivery_payload(heads[0].id).await.unwrap(),
        b"{\"keep\":1}".to_vec()
    );
    assert_eq!(store.prune(keep, false).await.unwrap(), Pruned::default());
}

/// The dispatcher's lane: a repository's unmatched deliveries after the head, oldest first, at most the
/// limit, none of another repository's (events about none are a lane of their own). A lane's matches are
/// recorded together and in order: a later `cancel_in_progress` job replaces an earlier one of the same
/// batch, every delivery is marked, and recording them again adds nothing.
async fn a_lanes_backlog_is_read_in_order_and_its_matches_recorded_together(db: &TestDb) {
    let store = db.store();
    let mut ids = Vec::new();
    let repos = [
        Some("o/r"),
        Some("o/other"),
        Some("o/r"),
        None,
        Some("o/r"),
        Some("o/r"),
        None,
    ];
    for (i, repo) in repos.iter().enumerate() {
        let d = NewDelivery::new(
            DeliveryId(format!("lane-{i}")),
            "issues".into(),
            Some("opened".into()),
            repo.map(str::to_owned),
            None,
            bytes::Bytes::from_static(b"{}"),
        );
        let Inserted::New(id) = store.insert_delivery(&d).await.unwrap() else {
            panic!("not stored")
        };
        ids.push(id);
    }
    let heads = store.unmatched_heads(10).await.unwrap();
    let head = heads
        .iter()
        .find(|h| h.repo.as_deref() == Some("o/r"))
        .unwrap();
    assert_eq!(head.id, ids[0]);
    let lane = |v: Vec<StoredDelivery>| v.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        lane(store.unmatched_in_lane(head, 10).await.unwrap()),
        [ids[2], ids[4], ids[5]]
    );
    assert_eq!(
        lane(store.unmatched_in_lane(head, 2).await.unwrap()),
        [ids[2], ids[4]]
    );
    let about_none = heads.iter().find(|h| h.repo.is_none()).unwrap();
    assert_eq!(
        lane(store.unmatched_in_lane(about_none, 10).await.unwrap()),
        [ids[6]]
    );

    let grouped = |trigger: &str| NewJob {
        concurrency_group: Some("g".into()),
        cancel_in_progress: true,
        ..job(trigger)
    };
    let matched = |delivery: i64, jobs: Vec<NewJob>| Matched {
        delivery,
        jobs,
        verdicts: Verdicts::default(),
    };
    let skipped = |delivery: i64, why: &str| {
        let mut verdicts = Verdicts::default();
        verdicts.skip("a trigger", why);
        Matched {
            delivery,
            jobs: vec![],
            verdicts,
        }
    };
    let queued = store
        .record_matches(&[
            skipped(ids[0], "not 'closed'"),
            matched(ids[2], vec![grouped("first")]),
            skipped(ids[1], "not 'o/other'"),
            matched(ids[4], vec![grouped("second")]),
        ])
        .await
        .unwrap();
    assert_eq!(queued, [0, 1, 0, 1]);
    for (i, why) in [(0, "not 'closed'"), (1, "not 'o/other'")] {
        let record = store
            .delivery_record(&format!("lane-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert!(record.matched_at.is_some());
        let verdicts = record.verdicts.expect("its verdicts are stored");
        assert_eq!(
            verdicts
                .skipped
                .iter()
                .map(|s| s.reason.as_str())
                .collect::<Vec<_>>(),
            [why],
            "each delivery marked together keeps its own verdicts"
        );
    }
    assert_eq!(
        lane(store.unmatched_heads(10).await.unwrap())
            .into_iter()
            .filter(|id| [ids[0], ids[2], ids[4], ids[5]].contains(id))
            .collect::<Vec<_>>(),
        [ids[5]],
        "the lane's matched deliveries are marked"
    );
    let lease = Duration::from_secs(60);
    let claimed = store.claim_job("w1", policy(lease)).await.unwrap().unwrap();
    assert_eq!(
        claimed.trigger, "second",
        "the later job of the group replaced the earlier one"
    );
    assert!(
        store
            .claim_job("w2", policy(lease))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .record_matches(&[matched(ids[2], vec![grouped("first")])])
            .await
            .unwrap(),
        [0],
        "matched again (after a crash), a delivery adds no job"
    );
}

/// A lane's payloads are read together, each delivery's own, in the order asked; a delivery that is not
/// there is an error, never another's payload.
async fn payloads_are_read_together_in_the_order_asked(db: &TestDb) {
    let store = db.store();
    let mut ids = Vec::new();
    for body in ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"] {
        let Inserted::New(id) = store
            .insert_delivery(&delivery_with_body(body, body.as_bytes().to_vec()))
            .await
            .unwrap()
        else {
            panic!("not stored")
        };
        ids.push(id);
    }
    assert_eq!(
        store
            .delivery_payloads(&[ids[2], ids[0], ids[1]])
            .await
            .unwrap(),
        [&b"{\"n\":3}"[..], b"{\"n\":1}", b"{\"n\":2}"]
    );
    let e = store
        .delivery_payloads(&[ids[0], ids[2] + 100])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no delivery"), "{e}");
}

fn tick_delivery(tick: i64) -> NewDelivery {
    NewDelivery::new(
        DeliveryId(format!("schedule:o/r:* * * * *@UTC:{tick}")),
        "schedule".into(),
        None,
        Some("o/r".into()),
        None,
        bytes::Bytes::from_static(b"{}"),
    )
}

/// Replicas that see a schedule's tick at once fire it once: one claims it and stores its delivery, the
/// others store nothing; an older tick (a replica whose clock lags) is refused.
async fn replicas_racing_on_one_tick_fire_it_once(db: &TestDb) {
    let store = db.store();
    const KEY: &str = "* * * * *@UTC";
    // The first replica to see a new schedule starts it; a later start does not move it.
    store.start_ticks(KEY, "o/r", 1_000).await.unwrap();
    db.replica()
        .await
        .start_ticks(KEY, "o/r", 2_000)
        .await
        .unwrap();
    assert_eq!(store.last_tick(KEY, "o/r").await.unwrap(), Some(1_000));

    let mut replicas = Vec::new();
    for _ in 0..6 {
        replicas.push(db.replica().await);
    }
    for (round, tick) in [60_000, 120_000, 180_000].into_iter().enumerate() {
        let start = Arc::new(tokio::sync::Barrier::new(replicas.len()));
        let mut tasks = Vec::new();
        for replica in &replicas {
            let (replica, start) = (replica.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                replica
                    .fire_tick(KEY, "o/r", tick, &tick_delivery(tick))
                    .await
            }));
        }
        let mut fired = 0;
        for task in tasks {
            fired += usize::from(task.await.unwrap().unwrap());
        }
        assert_eq!(fired, 1, "tick {tick}: one replica fires it");
        assert_eq!(store.delivery_count().await.unwrap(), round as u64 + 1);
        assert_eq!(store.last_tick(KEY, "o/r").await.unwrap(), Some(tick));
    }
    // A lagging replica's older tick, or the same tick again: refused, nothing stored.
    for tick in [120_000, 180_000] {
        assert!(
            !store
                .fire_tick(KEY, "o/r", tick, &tick_delivery(tick + 1))
                .await
                .unwrap()
        );
    }
    assert_eq!(store.delivery_count().await.unwrap(), 3);
    assert_eq!(store.last_tick(KEY, "o/r").await.unwrap(), Some(180_000));
    // Another repository's ticks are its own.
    assert!(
        store
            .fire_tick(KEY, "o/other", 60_000, &delivery("other-tick"))
            .await
            .unwrap()
    );
}

/// Replicas claiming at once at a repository's hourly cap start exactly the cap, not one more each; the
/// rest wait with the reason, and another repository is not held up.
async fn replicas_racing_at_the_hourly_cap_start_exactly_the_cap(db: &TestDb) {
    let store = db.store();
    for i in 0..16 {
        let mut d = delivery(&format!("d{i}"));
        let repo = if i < 12 { "o/busy" } else { "o/quiet" };
        d.repo = Some(repo.into());
        let Inserted::New(d) = store.insert_delivery(&d).await.unwrap() else {
            panic!()
        };
        let j = NewJob {
            repo: repo.into(),
            ..job("t")
        };
        store.record_match(d, &[j]).await.unwrap();
    }
    let capped = ClaimPolicy::new(Duration::from_secs(60), 5);
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for r in 0..8 {
        let (replica, start, capped) = (db.replica().await, start.clone(), capped.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut claimed = Vec::new();
            while let Some(j) = replica.claim_job(&format!("r{r}"), capped.clone()).await? {
                claimed.push(j.repo);
            }
            anyhow::Ok(claimed)
        }));
    }
    let mut started = Vec::new();
    for task in tasks {
        started.extend(task.await.unwrap().unwrap());
    }
    let busy = started.iter().filter(|r| *r == "o/busy").count();
    let quiet = started.iter().filter(|r| *r == "o/quiet").count();
    assert_eq!((busy, quiet), (5, 4), "{started:?}");
    let waiting: Vec<JobRecord> = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.state == JobState::Queued)
        .collect();
    assert_eq!(waiting.len(), 7);
    for job in &waiting {
        assert!(
            job.waiting
                .as_deref()
                .is_some_and(|w| w.contains("5 jobs in the last hour")),
            "{job:?}"
        );
    }
}

async fn a_released_job_runs_again_without_counting_its_start(db: &TestDb) {
    let store = db.store();
    for id in ["a", "b"] {
        let Inserted::New(d) = store.insert_delivery(&delivery(id)).await.unwrap() else {
            panic!()
        };
        store.record_match(d, &[job("t")]).await.unwrap();
    }
    let lease = Duration::from_secs(60);
    let a = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let b = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert!(store.store_result(b.id, "w", "{}").await.unwrap());
    // Only the holder gives a job back.
    assert!(!store.release_job(a.id, "another").await.unwrap());
    assert!(store.release_job(a.id, "w").await.unwrap());
    assert!(store.release_job(b.id, "w").await.unwrap());
    assert!(
        !store.release_job(a.id, "w").await.unwrap(),
        "released once"
    );
    let jobs = store.jobs().await.unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| (j.state, j.attempts, j.retries))
            .collect::<Vec<_>>(),
        [(JobState::Queued, 0, 0), (JobState::Delivering, 1, 0)]
    );
    // Both can be taken at once, without waiting for a lease to run out; the first starts as its first
    // attempt again, the second only delivers.
    let again = store.claim_job("w2", policy(lease)).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (a.id, 1));
    let deliver = store.claim_job("w2", policy(lease)).await.unwrap().unwrap();
    assert_eq!(deliver.id, b.id);
    assert!(deliver.result.is_some());
    assert!(
        !store.release_job(a.id, "w").await.unwrap(),
        "the old holder cannot give back what another took"
    );
}

/// Group commit: a batch is one transaction; a delivery id repeated (also inside the batch) is stored once;
/// the same body under a new id within the replay window is a replay; past the window it is stored.
async fn a_batch_is_stored_once_with_duplicates_and_replays_answered(db: &TestDb) {
    let store = db.store();
    let with_body = |id: &str, body: &[u8]| delivery_with_body(id, body.to_vec());
    let window = Duration::from_secs(3600);
    let answers = store
        .insert_deliveries(
            &[
                with_body("a", b"{\"n\":1}"),
                with_body("b", b"{\"n\":2}"),
                with_body("a", b"{\"n\":1}"),
                with_body("c", b"{\"n\":1}"),
            ],
            window,
        )
        .await
        .unwrap();
    assert!(matches!(answers[0], Inserted::New(_)), "{answers:?}");
    assert!(matches!(answers[1], Inserted::New(_)), "{answers:?}");
    assert_eq!(answers[2], Inserted::Duplicate);
    assert_eq!(
        answers[3],
        Inserted::Replayed {
            first: DeliveryId("a".into())
        }
    );
    assert_eq!(store.delivery_count().await.unwrap(), 2);
    // A later batch: a replay of b under a new id, and a redelivery of a.
    let answers = store
        .insert_deliveries(
            &[with_body("d", b"{\"n\":2}"), with_body("a", b"{\"n\":1}")],
            window,
        )
        .await
        .unwrap();
    assert!(
        matches!(answers[0], Inserted::Replayed { .. }),
        "{answers:?}"
    );
    assert_eq!(answers[1], Inserted::Duplicate);
    assert_eq!(store.delivery_count().await.unwrap(), 2);
    // Past the window (moved back in time), the same body under a new id is stored.
    db.exec("UPDATE delivery_digests SET received_at = received_at - 7200000")
        .await;
    let answers = store
        .insert_deliveries(&[with_body("e", b"{\"n\":2}")], window)
        .await
        .unwrap();
    assert!(matches!(answers[0], Inserted::New(_)), "{answers:?}");
    // A zero window does not look at bodies.
    let answers = store
        .insert_deliveries(&[with_body("f", b"{\"n\":2}")], Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(answers[0], Inserted::New(_)), "{answers:?}");
    assert_eq!(store.delivery_count().await.unwrap(), 4);
    let unmatched = store.unmatched_deliveries(10).await.unwrap();
    let ids: Vec<_> = unmatched.iter().map(|d| d.delivery_id.0.as_str()).collect();
    assert_eq!(ids, ["a", "b", "e", "f"]);
    // A batch larger than one statement takes: an id and a body repeated far apart are still caught.
    let mut big: Vec<NewDelivery> = (0..150)
        .map(|n| with_body(&format!("big{n}"), format!("{{\"big\":{n}}}").as_bytes()))
        .collect();
    big.push(with_body("big3", b"{\"other\":1}"));
    big.push(with_body("late", b"{\"big\":5}"));
    let answers = store.insert_deliveries(&big, window).await.unwrap();
    assert!(answers[..150].iter().all(|a| matches!(a, Inserted::New(_))));
    assert_eq!(answers[150], Inserted::Duplicate);
    assert_eq!(
        answers[151],
        Inserted::Replayed {
            first: DeliveryId("big5".into())
        }
    );
    assert_eq!(store.delivery_count().await.unwrap(), 154);
}

/// `/metrics` reads jobs by state and the deliveries not matched yet; a claim says when its job was queued
/// and started (the queue wait).
async fn counts_by_state_and_claim_times_for_metrics(db: &TestDb) {
    let store = db.store();
    store.ping().await.unwrap();
    assert_eq!(store.counts().await.unwrap(), Counts::default());
    let Inserted::New(d) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    store.insert_delivery(&delivery("b")).await.unwrap();
    store
        .record_match(d, &[job("one"), job("two"), job("three")])
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let a = store.claim_job("w1", policy(lease)).await.unwrap().unwrap();
    assert!(a.queued_at > 0);
    let started = a.started_at.expect("a claimed job has started");
    assert!(started >= a.queued_at, "{a:?}");
    let b = store.claim_job("w2", policy(lease)).await.unwrap().unwrap();
    store
        .finish_job(b.id, "w2", Ending::Failed("boom"))
        .await
        .unwrap();
    let mut counts = store.counts().await.unwrap();
    counts.jobs.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        Counts {
            jobs: vec![
                (JobState::Failed, 1),
                (JobState::Queued, 1),
                (JobState::Running, 1),
            ],
            unmatched_deliveries: 1,
        }
    );
}

async fn installations_their_repositories_and_backfill_records(db: &TestDb) {
    let store = db.store();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    store
        .upsert_installation(&Installation {
            id: 7,
            account: "Octo-Org".into(),
            suspended: false,
        })
        .await
        .unwrap();
    store
        .add_installed_repos(7, &names(&["Octo-Org/One", "Octo-Org/Two"]))
        .await
        .unwrap();
    store
        .upsert_installation(&Installation {
            id: 8,
            account: "someone".into(),
            suspended: false,
        })
        .await
        .unwrap();
    store
        .replace_installed_repos(8, &names(&["someone/x"]))
        .await
        .unwrap();
    let installed = |store: Arc<dyn Store>| async move {
        store
            .installed_repos()
            .await
            .unwrap()
            .into_iter()
            .map(|r| format!("{}={}", r.full_name, r.installation_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        installed(store.clone()).await,
        ["Octo-Org/One=7", "Octo-Org/Two=7", "someone/x=8"],
        "names kept as GitHub spells them"
    );
    // Removed without regard to case (events and the configuration may spell it differently).
    store
        .remove_installed_repos(7, &names(&["octo-org/two"]))
        .await
        .unwrap();
    // Listing replaces the whole list; adding twice is harmless.
    store
        .replace_installed_repos(8, &names(&["someone/y", "someone/y"]))
        .await
        .unwrap();
    assert_eq!(
        installed(store.clone()).await,
        ["Octo-Org/One=7", "someone/y=8"]
    );
    // A suspended installation's repositories cannot be acted on.
    store
        .upsert_installation(&Installation {
            id: 8,
            account: "someone".into(),
            suspended: true,
        })
        .await
        .unwrap();
    assert_eq!(installed(store.clone()).await, ["Octo-Org/One=7"]);
    assert_eq!(store.installations().await.unwrap().len(), 2);
    store.delete_installation(7).await.unwrap();
    assert!(installed(store.clone()).await.is_empty());
    assert_eq!(store.installations().await.unwrap().len(), 1);

    // Which deliveries the store has; when the newest from GitHub came (schedule ticks do not count).
    assert_eq!(store.newest_webhook_delivery_at().await.unwrap(), None);
    store.insert_delivery(&delivery("g-1")).await.unwrap();
    let mut tick = delivery("schedule:a/b:x");
    tick.event = "schedule".into();
    store.insert_delivery(&tick).await.unwrap();
    let newest = store.newest_webhook_delivery_at().await.unwrap().unwrap();
    assert!((crate::now_ms() - newest).abs() < 60_000);
    assert_eq!(
        store
            .known_delivery_ids(&names(&["g-0", "g-1", "g-2\0"]))
            .await
            .unwrap(),
        ["g-1"]
    );
    assert!(store.known_delivery_ids(&[]).await.unwrap().is_empty());

    // A redelivery is asked once within its window, by one replica.
    let other = db.replica().await;
    assert!(store.claim_redelivery("g-0", 1_000, 500).await.unwrap());
    assert!(!other.claim_redelivery("g-0", 1_200, 500).await.unwrap());
    assert!(other.claim_redelivery("g-0", 1_600, 500).await.unwrap());
    // A record older than a week is forgotten (the table does not grow for ever): even with a window that
    // would still cover it, the delivery is recorded anew.
    let week = 7 * 24 * 60 * 60 * 1000;
    assert!(
        !other
            .claim_redelivery("g-0", 1_600 + week, 2 * week)
            .await
            .unwrap(),
        "kept for a week"
    );
    assert!(
        other
            .claim_redelivery("g-0", 1_601 + week, 2 * week)
            .await
            .unwrap(),
        "forgotten after a week"
    );

    // A lease is held by one owner until it expires.
    assert!(
        store
            .try_lease("backfill", "a", 1_000, 2_000)
            .await
            .unwrap()
    );
    assert!(
        !other
            .try_lease("backfill", "b", 1_500, 2_500)
            .await
            .unwrap()
    );
    assert!(
        store
            .try_lease("backfill", "a", 1_500, 2_500)
            .await
            .unwrap()
    );
    assert!(
        other
            .try_lease("backfill", "b", 2_600, 3_600)
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_lease("backfill", "a", 2_700, 3_700)
            .await
            .unwrap()
    );
}

/// The dashboard's spend per repository and UTC day: a job's spend counts on the day it started, either
/// side of midnight to the millisecond; repositories apart; a job that reported no usage counts as a job
/// that spent nothing; a job not started, or started before `since`, not at all. The same sums as
/// `spend_since`, which the daily budget is enforced with.
async fn spend_is_summed_per_repository_and_utc_day(db: &TestDb) {
    let store = db.store();
    for (n, repo) in ["o/a", "o/a", "o/a", "o/b", "o/b", "o/b", "o/a"]
        .into_iter()
        .enumerate()
    {
        queue(&store, &format!("d{n}"), repo, &[job_of("t", repo, "a")]).await;
    }
    let mut ids: Vec<JobId> = store.jobs().await.unwrap().iter().map(|j| j.id).collect();
    ids.sort_by_key(|id| id.0);
    assert_eq!(ids.len(), 7);
    // Day 20000 since the epoch starts at 1_728_000_000_000 ms (2024-10-04T00:00:00Z).
    let midnight: i64 = 20_000 * DAY_MS;
    assert_eq!(midnight, 1_728_000_000_000);
    db.exec(
        "UPDATE jobs SET started_at = CASE id - (SELECT MIN(id) FROM jobs)
            WHEN 0 THEN 1727999999999
            WHEN 1 THEN 1728000000000
            WHEN 2 THEN 1728086399999
            WHEN 3 THEN 1728000000005
            WHEN 4 THEN 1728050000000
            WHEN 5 THEN NULL
            ELSE 1727900000000 END",
    )
    .await;
    let usage = |cost: f64, input: u64, cached: u64, output: u64| Usage {
        cost_usd: Some(cost),
        input_tokens: Some(input),
        cached_input_tokens: Some(cached),
        output_tokens: Some(output),
        ..Usage::default()
    };
    store
        .record_usage(ids[0], &usage(0.5, 100, 0, 10))
        .await
        .unwrap();
    store
        .record_usage(ids[1], &usage(0.25, 200, 50, 20))
        .await
        .unwrap();
    store
        .record_usage(ids[2], &usage(1.0, 1000, 0, 100))
        .await
        .unwrap();
    store
        .record_usage(ids[3], &usage(2.0, 7, 0, 3))
        .await
        .unwrap();
    // ids[4] reported nothing (a command agent); ids[5] never started; ids[6] started before `since`.
    store
        .record_usage(ids[5], &usage(4.0, 1, 1, 1))
        .await
        .unwrap();
    store
        .record_usage(ids[6], &usage(8.0, 1, 1, 1))
        .await
        .unwrap();

    let days = store.spend_by_day(midnight - DAY_MS).await.unwrap();
    let day =
        |day, repo: &str, jobs, cost_usd, input_tokens, cached_input_tokens, output_tokens| {
            DaySpend {
                day,
                repo: repo.into(),
                jobs,
                cost_usd,
                input_tokens,
                cached_input_tokens,
                output_tokens,
            }
        };
    assert_eq!(
        days,
        [
            day(midnight - DAY_MS, "o/a", 1, 0.5, 100, 0, 10),
            day(midnight, "o/a", 2, 1.25, 1200, 50, 120),
            day(midnight, "o/b", 2, 2.0, 7, 0, 3),
        ]
    );
    assert_eq!(store.spend_since("o/a", midnight).await.unwrap(), 1.25);
    assert!(
        store
            .spend_by_day(midnight + DAY_MS)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The dashboard's deliveries list: pages by row id (`before`), and "fired nothing" keeps the deliveries
/// that were matched and fired no trigger (not those that fired, nor those still waiting), with the other
/// filters.
async fn deliveries_are_paged_and_filtered_to_those_that_fired_nothing(db: &TestDb) {
    let store = db.store();
    let fired = queue(&store, "fired", "o/a", &[job("t")]).await;
    let nothing = queue(&store, "nothing", "o/a", &[]).await;
    let other = queue(&store, "other", "o/b", &[]).await;
    let mut waiting = delivery("waiting");
    waiting.repo = Some("o/a".into());
    store.insert_delivery(&waiting).await.unwrap();
    let list = |filter: DeliveryFilter| {
        let store = store.clone();
        async move {
            store
                .recent_deliveries(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.delivery_id.0)
                .collect::<Vec<_>>()
        }
    };
    let all = DeliveryFilter {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        list(all.clone()).await,
        ["waiting", "other", "nothing", "fired"]
    );
    let page = DeliveryFilter {
        limit: 2,
        before: Some(other + 1),
        ..Default::default()
    };
    assert_eq!(list(page).await, ["other", "nothing"]);
    let page = DeliveryFilter {
        before: Some(nothing),
        ..all.clone()
    };
    assert_eq!(list(page).await, ["fired"]);
    let page = DeliveryFilter {
        before: Some(fired),
        ..all.clone()
    };
    assert!(list(page).await.is_empty());
    let quiet = DeliveryFilter {
        fired_nothing: true,
        ..all.clone()
    };
    assert_eq!(list(quiet.clone()).await, ["other", "nothing"]);
    let quiet_a = DeliveryFilter {
        repo: Some("O/A".into()),
        ..quiet
    };
    assert_eq!(list(quiet_a).await, ["nothing"]);
    let records = store.recent_deliveries(&all).await.unwrap();
    let by = |id: &str| records.iter().find(|d| d.delivery_id.0 == id).unwrap();
    assert!(by("nothing").fired_nothing() && !by("fired").fired_nothing());
    assert!(!by("waiting").fired_nothing());
    assert_eq!(
        (by("waiting").state(), by("fired").state()),
        ("waiting", "matched")
    );
}

/// A batch handed over whole (`insert_delivery_batch`, the webhook writer's call; SQLite writes it on a
/// connection of its own) stores every field as sent: hostile ids and texts are values, never SQL; absent
/// fields stay absent; payload bytes (NULs, invalid UTF-8, a megabyte) come back exactly. Batches sent at
/// once from many tasks are each answered with their own rows.
async fn a_batch_handed_over_stores_every_field_as_sent(db: &TestDb) {
    let store = db.store();
    let hostile = "x'); DROP TABLE deliveries; --";
    let mut big = vec![0u8; 1 << 20];
    big.iter_mut()
        .enumerate()
        .for_each(|(n, b)| *b = (n * 7 % 256) as u8);
    let batch = vec![
        NewDelivery::new(
            DeliveryId(hostile.into()),
            "issue_comment\"".into(),
            Some("créé ✓".into()),
            Some("O/R".into()),
            Some(i64::MAX),
            b"{\"a\":\"\0\xff\xfe\"}".to_vec().into(),
        ),
        NewDelivery::new(
            DeliveryId("bare".into()),
            "ping".into(),
            None,
            None,
            None,
            big.clone().into(),
        ),
        delivery_with_body("empty", bytes::Bytes::new()),
    ];
    let answers = store
        .insert_delivery_batch(batch, Duration::from_secs(3600))
        .await
        .unwrap();
    let rows: Vec<i64> = answers
        .iter()
        .map(|a| match a {
            Inserted::New(row) => *row,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        store.delivery_payload(rows[0]).await.unwrap(),
        b"{\"a\":\"\0\xff\xfe\"}"
    );
    assert_eq!(store.delivery_payload(rows[1]).await.unwrap(), big);
    assert!(store.delivery_payload(rows[2]).await.unwrap().is_empty());
    let first = store.delivery_record(hostile).await.unwrap().unwrap();
    assert_eq!(
        (
            first.event.as_str(),
            first.action.as_deref(),
            first.repo.as_deref()
        ),
        ("issue_comment\"", Some("créé ✓"), Some("O/R"))
    );
    let bare = store.delivery_record("bare").await.unwrap().unwrap();
    assert_eq!((bare.action, bare.repo), (None, None));
    assert_eq!(store.delivery_count().await.unwrap(), 3);

    // Many batches at once: each answer is its own delivery's row.
    let sent = (0..16).map(|task| {
        let store = store.clone();
        tokio::spawn(async move {
            let batch: Vec<NewDelivery> = (0..8)
                .map(|n| {
                    delivery_with_body(
                        &format!("t{task}-{n}"),
                        format!("{{\"task\":{task},\"n\":{n}}}").into_bytes(),
                    )
                })
                .collect();
            let answers = store
                .insert_delivery_batch(batch, Duration::from_secs(3600))
                .await
                .unwrap();
            (task, answers)
        })
    });
    for handle in sent.collect::<Vec<_>>() {
        let (task, answers) = handle.await.unwrap();
        for (n, answer) in answers.into_iter().enumerate() {
            let Inserted::New(row) = answer else {
                panic!("{answer:?}")
            };
            assert_eq!(
                store.delivery_payload(row).await.unwrap(),
                format!("{{\"task\":{task},\"n\":{n}}}").into_bytes()
            );
        }
    }
    assert_eq!(store.delivery_count().await.unwrap(), 3 + 16 * 8);
}

/// Dashboard sessions and sign-ins under way: by hash, expiring, bounded per login, a sign-in taken once
/// even by replicas racing for it.
async fn dashboard_sessions_and_sign_ins_are_shared_expire_and_are_taken_once(db: &TestDb) {
    let store = db.store();
    let other = db.replica().await;
    let session = |login: &str, expires_at: i64| DashboardSession {
        login: login.into(),
        admin: login == "admin",
        csrf: format!("csrf-{login}"),
        expires_at,
    };
    store
        .create_session("h-admin", &session("admin", 10_000), 1_000, 3)
        .await
        .unwrap();
    store
        .create_session("h-reader", &session("reader", 2_000), 1_000, 3)
        .await
        .unwrap();
    // Made on one replica, known on the other; by its whole hash only.
    assert_eq!(
        other.session("h-admin", 1_500).await.unwrap(),
        Some(session("admin", 10_000))
    );
    assert!(other.session("h-admi", 1_500).await.unwrap().is_none());
    assert!(
        !other
            .session("h-reader", 1_500)
            .await
            .unwrap()
            .unwrap()
            .admin
    );
    // Expired: ignored, then deleted when another session is made.
    assert!(store.session("h-reader", 2_000).await.unwrap().is_none());
    store
        .create_session("h-admin-2", &session("admin", 10_000), 3_000, 3)
        .await
        .unwrap();
    assert!(
        store.session("h-reader", 0).await.unwrap().is_none(),
        "pruned"
    );
    // Past 3 sessions of one login, its oldest go (a signed-in user hammering sign-in grows nothing).
    for n in 3..10 {
        store
            .create_session(
                &format!("h-admin-{n}"),
                &session("admin", 10_000),
                3_000 + n,
                3,
            )
            .await
            .unwrap();
    }
    let mut alive = Vec::new();
    for hash in [
        "h-admin",
        "h-admin-2",
        "h-admin-7",
        "h-admin-8",
        "h-admin-9",
    ] {
        if store.session(hash, 4_000).await.unwrap().is_some() {
            alive.push(hash);
        }
    }
    assert_eq!(alive, ["h-admin-7", "h-admin-8", "h-admin-9"]);
    // Signing out on one replica ends the session on the other at once.
    other.delete_session("h-admin-9").await.unwrap();
    assert!(store.session("h-admin-9", 4_000).await.unwrap().is_none());
    other.delete_session("h-admin-9").await.unwrap();

    // A sign-in's state: spent once, on whichever replica.
    assert!(other.spend_signin("s1", 5_000, 1_000, 100).await.unwrap());
    assert!(
        !store.spend_signin("s1", 5_000, 1_100, 100).await.unwrap(),
        "once"
    );
    assert!(
        !other.spend_signin("s1", 5_000, 1_200, 100).await.unwrap(),
        "once"
    );
    // Expired ones are forgotten (a state that old is refused before the store is asked).
    assert!(store.spend_signin("s2", 6_000, 5_000, 100).await.unwrap());
    assert!(
        store.spend_signin("s1", 5_000, 5_000, 100).await.unwrap(),
        "forgotten"
    );
    // At most `max` remembered: the oldest go first.
    for n in 0..5 {
        assert!(
            store
                .spend_signin(&format!("m{n}"), 7_000 + n, 1_000, 3)
                .await
                .unwrap()
        );
    }
    let mut remembered = Vec::new();
    for n in (0..5).rev() {
        if !store
            .spend_signin(&format!("m{n}"), 7_000 + n, 1_000, 3)
            .await
            .unwrap()
        {
            remembered.push(n);
        }
    }
    assert_eq!(remembered, [4, 3, 2]);

    // Replicas racing for one state (a replayed callback): exactly one wins, each round.
    let mut replicas = Vec::new();
    for _ in 0..6 {
        replicas.push(db.replica().await);
    }
    for round in 0..10 {
        let state = format!("race-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(replicas.len()));
        let mut tasks = Vec::new();
        for replica in &replicas {
            let (replica, start, state) = (replica.clone(), start.clone(), state.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                replica.spend_signin(&state, 9_000, 1_100, 100).await
            }));
        }
        let mut won = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() {
                won += 1;
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

/// A repository's oldest queued job that cannot start (its concurrency group busy elsewhere, its profile
/// at its limit) does not hold the repository's next job back, and a deep queue in one repository does not
/// hide another repository's one job. A claim that looked at each repository's oldest job only would start
/// nothing here.
async fn a_repository_whose_oldest_job_cannot_start_starts_its_next(db: &TestDb) {
    let store = db.store();
    let lease = Duration::from_secs(60);
    let grouped = |trigger: &str, repo: &str| NewJob {
        concurrency_group: Some("deploy".into()),
        ..job_of(trigger, repo, "codex")
    };
    queue(&store, "busy", "o/busy", &[grouped("holder", "o/busy")]).await;
    let holder = store.claim_job("w0", policy(lease)).await.unwrap().unwrap();
    assert_eq!(holder.trigger, "holder");
    // o/deep: its oldest job waits for the group, then a claude job (the profile will be at its limit),
    // then a codex job; behind them, 40 more.
    queue(
        &store,
        "deep",
        "o/deep",
        &[
            grouped("grouped", "o/deep"),
            job_of("claude", "o/deep", "claude"),
            job_of("codex", "o/deep", "codex"),
        ],
    )
    .await;
    for n in 0..40 {
        let trigger = format!("more-{n}");
        queue(
            &store,
            &format!("deep-{n}"),
            "o/deep",
            &[job_of(&trigger, "o/deep", "codex")],
        )
        .await;
    }
    queue(
        &store,
        "claude",
        "o/other",
        &[job_of("busy-claude", "o/other", "claude")],
    )
    .await;
    queue(
        &store,
        "single",
        "o/single",
        &[job_of("single", "o/single", "codex")],
    )
    .await;
    let mut limited = policy(lease);
    limited.max_concurrent = Arc::new([("claude".to_owned(), 1)].into_iter().collect());
    // o/deep's claude job first (past its group's; the oldest startable): claude is then full, and
    // o/other's only job waits for it.
    let mut claimed = Vec::new();
    for owner in ["w1", "w2", "w3"] {
        let job = store
            .claim_job(owner, limited.clone())
            .await
            .unwrap()
            .unwrap();
        claimed.push((job.repo, job.trigger));
    }
    let repo_of = |trigger: &str| claimed.iter().find(|c| c.1 == trigger).map(|c| c.0.clone());
    assert_eq!(
        repo_of("codex").as_deref(),
        Some("o/deep"),
        "o/deep's third job starts past its first two: {claimed:?}"
    );
    assert_eq!(
        repo_of("single").as_deref(),
        Some("o/single"),
        "the deep queue hides no other repository: {claimed:?}"
    );
    assert!(
        repo_of("grouped").is_none()
            && claimed.iter().filter(|c| c.1.contains("claude")).count() == 1,
        "the group's job and a second claude job wait: {claimed:?}"
    );
    // The group's holder ends: o/deep's oldest job starts before its later ones.
    assert!(
        store
            .finish_job(holder.id, "w0", Ending::Succeeded)
            .await
            .unwrap()
    );
    let next = store
        .claim_job("w4", limited.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.trigger, "grouped");
}

/// More repositories at their hourly cap than a claim reads at once, all served before another: the claim
/// walks past every one of them to the repository that may start, and each capped repository's queued jobs
/// say why they wait. A claim that gave up after its first candidates would start nothing.
async fn repositories_at_their_hourly_cap_are_walked_past_and_each_says_why(db: &TestDb) {
    let store = db.store();
    let lease = Duration::from_secs(60);
    let mut repos: Vec<String> = (0..12).map(|r| format!("capped/r{r:02}")).collect();
    repos.push("open/r".into());
    // In this order (the open repository served last, so most recently), each capped repository starts
    // two jobs and the open one one.
    for (n, repo) in repos.iter().enumerate() {
        let starts = if repo.starts_with("capped") { 2 } else { 1 };
        for k in 0..starts {
            queue(
                &store,
                &format!("s{n}-{k}"),
                repo,
                &[job_of("t", repo, "x")],
            )
            .await;
            let job = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
            assert_eq!(&job.repo, repo);
            assert!(
                store
                    .finish_job(job.id, "w", Ending::Succeeded)
                    .await
                    .unwrap()
            );
        }
    }
    for (n, repo) in repos.iter().enumerate() {
        queue(&store, &format!("q{n}"), repo, &[job_of("t", repo, "x")]).await;
    }
    let capped = ClaimPolicy::new(lease, 2);
    let next = store.claim_job("w", capped.clone()).await.unwrap();
    assert_eq!(next.map(|j| j.repo).as_deref(), Some("open/r"));
    assert!(store.claim_job("w", capped).await.unwrap().is_none());
    let waiting: Vec<_> = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.state == JobState::Queued)
        .collect();
    assert_eq!(waiting.len(), 12, "{waiting:?}");
    for job in waiting {
        assert!(
            job.waiting
                .as_deref()
                .is_some_and(|w| w.contains("max_jobs_per_hour")),
            "{job:?}"
        );
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::sqlite().await;
                    super::$name(&db).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}

on_both_stores!(
    dashboard_sessions_and_sign_ins_are_shared_expire_and_are_taken_once,
    a_claim_for_several_workers_leases_each_its_own_job_within_the_limits,
    a_repeated_delivery_is_stored_once,
    matching_is_recorded_once_and_jobs_are_claimed_in_order,
    an_expired_lease_is_taken_over_and_each_start_counted,
    a_stored_result_is_delivered_without_running_the_agent_again,
    a_deferred_job_waits_with_its_reason_and_keeps_its_phase,
    a_repository_past_its_jobs_an_hour_waits_and_says_why,
    a_concurrency_group_runs_one_job_at_a_time_and_can_cancel_the_rest,
    concurrent_writers_wait_for_each_other_instead_of_failing,
    every_write_at_once_through_two_stores,
    a_job_that_could_not_be_prepared_is_stored_failed,
    logs_and_outputs_round_trip,
    replicas_claiming_at_once_take_each_job_once,
    replicas_claiming_at_once_start_one_job_of_a_group,
    text_with_nul_is_stored,
    usage_repositories_ticks_and_pushes_round_trip,
    a_batch_is_stored_once_with_duplicates_and_replays_answered,
    a_released_job_runs_again_without_counting_its_start,
    replicas_racing_on_one_tick_fire_it_once,
    replicas_racing_at_the_hourly_cap_start_exactly_the_cap,
    a_flood_from_one_repository_does_not_starve_another,
    concurrency_limits_hold_per_profile_and_repository,
    jobs_are_cancelled_and_retried_for_an_operator,
    a_refused_retry_holds_no_job_back,
    prune_removes_what_ended_long_ago_and_nothing_a_job_needs,
    counts_by_state_and_claim_times_for_metrics,
    deliveries_are_listed_with_their_jobs_and_why_other_triggers_did_not_fire,
    jobs_are_filtered_and_their_log_read_on_from_a_line,
    installations_their_repositories_and_backfill_records,
    spend_is_summed_per_repository_and_utc_day,
    deliveries_are_paged_and_filtered_to_those_that_fired_nothing,
    a_batch_handed_over_stores_every_field_as_sent,
    an_installation_running_jobs_gives_way_to_another,
    claim_lanes_agree_with_the_jobs_after_every_change,
    a_repository_whose_oldest_job_cannot_start_starts_its_next,
    repositories_at_their_hourly_cap_are_walked_past_and_each_says_why,
    a_lanes_backlog_is_read_in_order_and_its_matches_recorded_together,
    payloads_are_read_together_in_the_order_asked,
);

#[test]
fn a_store_url_is_logged_without_its_password() {
    for (url, shown) in [
        (
            "postgres://ns:s3cret@db.internal:5432/nightshift",
            "postgres://ns:***@db.internal:5432/nightshift",
        ),
        (
            "postgresql://ns:p@ss@w0rd@db/n?sslmode=require",
            "postgresql://ns:***@db/n?sslmode=require",
        ),
        (
            "postgres://ns@db/n?sslmode=require&password=s3cret",
            "postgres://ns@db/n?***",
        ),
        ("postgres://ns@db/n", "postgres://ns@db/n"),
        ("sqlite:///var/lib/n.db", "sqlite:///var/lib/n.db"),
    ] {
        assert_eq!(super::without_password(url), shown);
    }
}

#[tokio::test]
async fn a_postgres_url_that_cannot_be_reached_names_no_password() {
    let error = match open(
        "postgres://ns:s3cret@localhost/n?host=/nonexistent-nightshift-socket-dir",
    )
    .await
    {
        Ok(_) => panic!("no server has that socket"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!error.contains("s3cret"), "{error}");
    assert!(
        error.contains("opening the store postgres://ns:***@"),
        "{error}"
    );
}

/// A write on one replica wakes the others: a stored delivery rings `Deliveries` (not on the replica that
/// stored it), a queued job and a freed concurrency group ring `Jobs`; SQLite (one process) has nothing to
/// listen to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replicas_writes_wake_this_one() {
    assert!(TestDb::sqlite().await.store().wakeups().is_none());

    let db = TestDb::postgres().await;
    let here = db.store();
    let there = db.replica().await;
    let mut wakeups = here.wakeups().unwrap();
    // Listening starts by ringing both (what was written before it listened is found by looking).
    let mut first = vec![next(&mut wakeups).await, next(&mut wakeups).await];
    first.sort_by_key(|w| *w as u8);
    assert_eq!(first, [Wakeup::Deliveries, Wakeup::Jobs]);

    // A delivery this store stored rings nothing here (its process rang already); the other replica's
    // does. Heard, this store's own would come first, and the next one below would not be `Jobs`.
    here.insert_delivery(&delivery("mine")).await.unwrap();
    let Inserted::New(d) = there.insert_delivery(&delivery("d1")).await.unwrap() else {
        panic!()
    };
    assert_eq!(next(&mut wakeups).await, Wakeup::Deliveries);
    // A repeated delivery stores nothing and rings nothing; matching queues a job.
    assert_eq!(
        there.insert_delivery(&delivery("d1")).await.unwrap(),
        Inserted::Duplicate
    );
    let grouped = NewJob {
        concurrency_group: Some("g".into()),
        ..job("t")
    };
    there.record_match(d, &[grouped]).await.unwrap();
    assert_eq!(next(&mut wakeups).await, Wakeup::Jobs);
    // Claiming rings nothing; ending a job of a group frees the group: its next job can start.
    let claimed = there
        .claim_job("r", policy(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    there
        .finish_job(claimed.id, "r", Ending::Succeeded)
        .await
        .unwrap();
    assert_eq!(next(&mut wakeups).await, Wakeup::Jobs);
    assert!(wakeups.try_recv().is_err(), "one wakeup per write");

    // The listening connection dies (a restart, a proxy's idle cut): it listens again and rings both, and
    // what is written afterwards still wakes it.
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .await;
    let mut woken = Vec::new();
    while woken.len() < 2 {
        let w = next(&mut wakeups).await;
        if !woken.contains(&w) {
            woken.push(w);
        }
    }
    // Listening again: the next write rings as before.
    there.insert_delivery(&delivery("d2")).await.unwrap();
    assert_eq!(next(&mut wakeups).await, Wakeup::Deliveries);
}

async fn next(wakeups: &mut tokio::sync::mpsc::Receiver<Wakeup>) -> Wakeup {
    tokio::time::timeout(Duration::from_secs(30), wakeups.recv())
        .await
        .expect("a wakeup within 30 s")
        .expect("the listener runs")
}

/// What `nightshift deliveries` shows: each delivery (newest first, filtered by repository any case, event,
/// action), the jobs it fired and why each other trigger did not, recorded with the match (hostile text
/// with a NUL too); a delivery matched without verdicts says so (`None`); a pruned delivery takes its
/// verdicts with it.
async fn deliveries_are_listed_with_their_jobs_and_why_other_triggers_did_not_fire(db: &TestDb) {
    let store = db.store();
    let Inserted::New(a) = store.insert_delivery(&delivery("a")).await.unwrap() else {
        panic!()
    };
    let mut push = delivery("b");
    push.event = "push".into();
    push.action = None;
    push.repo = Some("o/x".into());
    let Inserted::New(b) = store.insert_delivery(&push).await.unwrap() else {
        panic!()
    };
    let mut labeled = delivery("c");
    labeled.action = Some("labeled".into());
    store.insert_delivery(&labeled).await.unwrap();

    let mut verdicts = Verdicts::default();
    verdicts.skip("quiet", "type `opened` is not one of types [labeled]");
    verdicts.skip("loud", "type `opened` is not one of types [labeled]");
    verdicts.skip("evil\u{0}\x1b[2J", "labels [x\u{0}] include none of [bug]");
    verdicts.others = 3;
    let queued = store
        .record_match_explained(a, &[job("fires")], Some(&verdicts))
        .await
        .unwrap();
    assert_eq!(queued, 1);
    store.record_match(b, &[]).await.unwrap();

    let all = store
        .recent_deliveries(&DeliveryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = all.iter().map(|d| d.delivery_id.0.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"]);
    let (c_, b_, a_) = (&all[0], &all[1], &all[2]);
    assert!(c_.matched_at.is_none() && c_.verdicts.is_none() && c_.jobs.is_empty());
    assert_eq!(c_.action.as_deref(), Some("labeled"));
    assert!(b_.matched_at.is_some() && b_.verdicts.is_none());
    assert_eq!(a_.jobs.len(), 1);
    assert_eq!(a_.jobs[0].trigger, "fires");
    assert_eq!(a_.jobs[0].state, JobState::Queued);
    let got = a_.verdicts.as_ref().unwrap();
    assert_eq!(got.others, 3);
    assert_eq!(got.skipped.len(), 3);
    assert_eq!(got.skipped[..2], verdicts.skipped[..2]);
    // Hostile text (a NUL, an escape) is kept as it came: the stored JSON escapes it.
    assert!(got.skipped[2].trigger.starts_with("evil"));
    assert!(got.skipped[2].trigger.ends_with("\x1b[2J"));

    let only =
        |repo: Option<&str>, event: Option<&str>, action: Option<&str>, limit| DeliveryFilter {
            repo: repo.map(Into::into),
            event: event.map(Into::into),
            action: action.map(Into::into),
            limit,
            ..Default::default()
        };
    let ids = |list: Vec<DeliveryRecord>| {
        list.into_iter()
            .map(|d| d.delivery_id.0)
            .collect::<Vec<_>>()
    };
    let by = |f: DeliveryFilter| {
        let store = store.clone();
        async move { ids(store.recent_deliveries(&f).await.unwrap()) }
    };
    assert_eq!(by(only(Some("O/R"), None, None, 10)).await, ["c", "a"]);
    assert_eq!(by(only(None, Some("push"), None, 10)).await, ["b"]);
    assert_eq!(
        by(only(None, Some("issues"), Some("opened"), 10)).await,
        ["a"]
    );
    assert_eq!(by(only(None, None, None, 1)).await, ["c"]);
    assert!(by(only(Some("o/none"), None, None, 10)).await.is_empty());

    let one = store.delivery_record("a").await.unwrap().unwrap();
    assert_eq!(one.verdicts, a_.verdicts);
    assert!(store.delivery_record("nope").await.unwrap().is_none());

    // Retention removes a matched delivery with no job left, and what was recorded of its match with it.
    let mut old = delivery("old");
    old.repo = Some("o/old".into());
    let Inserted::New(o) = store.insert_delivery(&old).await.unwrap() else {
        panic!()
    };
    store
        .record_match_explained(o, &[], Some(&verdicts))
        .await
        .unwrap();
    db.exec(
        "UPDATE deliveries SET received_at = received_at - 8640000000 WHERE delivery_id = 'old'",
    )
    .await;
    store
        .prune(crate::config::DEFAULT_PRUNE, false)
        .await
        .unwrap();
    assert!(store.delivery_record("old").await.unwrap().is_none());
    assert!(store.delivery_record("a").await.unwrap().is_some());
}

/// `nightshift jobs --state/--repo/--trigger/--limit`, newest first; and `--follow` reading a job's log on
/// from the last line it printed.
async fn jobs_are_filtered_and_their_log_read_on_from_a_line(db: &TestDb) {
    let store = db.store();
    queue(&store, "d1", "o/a", &[job_of("triage", "o/a", "x")]).await;
    queue(&store, "d2", "o/b", &[job_of("triage", "o/b", "x")]).await;
    queue(&store, "d3", "o/a", &[job_of("review", "o/a", "x")]).await;
    let first = store
        .claim_job("w", policy(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .finish_job(first.id, "w", Ending::Failed("no"))
            .await
            .unwrap()
    );
    let filtered = |state, repo: Option<&str>, trigger: Option<&str>, limit| {
        let store = store.clone();
        let filter = JobFilter {
            state,
            repo: repo.map(Into::into),
            trigger: trigger.map(Into::into),
            limit,
        };
        async move {
            store
                .filtered_jobs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|j| (j.trigger, j.repo))
                .collect::<Vec<_>>()
        }
    };
    let pair = |t: &str, r: &str| (t.to_owned(), r.to_owned());
    assert_eq!(
        filtered(None, None, None, 10).await,
        [
            pair("review", "o/a"),
            pair("triage", "o/b"),
            pair("triage", "o/a")
        ]
    );
    assert_eq!(
        filtered(Some(JobState::Failed), None, None, 10).await,
        [pair("triage", "o/a")]
    );
    assert_eq!(
        filtered(Some(JobState::Queued), Some("O/A"), None, 10).await,
        [pair("review", "o/a")]
    );
    assert_eq!(
        filtered(None, None, Some("triage"), 1).await,
        [pair("triage", "o/b")]
    );
    assert!(filtered(None, None, Some("tri"), 10).await.is_empty());

    let lines: Vec<String> = ["one", "two", "three"].map(String::from).to_vec();
    store
        .append_log(first.id, LogStream::Stdout, &lines)
        .await
        .unwrap();
    let head = store.job_log_after(first.id, 0, 2).await.unwrap();
    assert_eq!(head.len(), 2);
    assert_eq!(head[1].1.line, "two");
    let rest = store.job_log_after(first.id, head[1].0, 2).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1.line, "three");
    assert_eq!(rest[0].1.stream, "stdout");
    assert!(
        store
            .job_log_after(first.id, rest[0].0, 2)
            .await
            .unwrap()
            .is_empty()
    );
}

#[test]
fn verdicts_are_stored_compactly_and_bounded() {
    let mut v = Verdicts::default();
    let long = "x".repeat(5000);
    for n in 0..Verdicts::MAX_SKIPPED + 5 {
        v.skip(
            &format!("t{n}"),
            if n % 2 == 0 { "same reason" } else { &long },
        );
    }
    v.note("n");
    assert_eq!(v.skipped.len(), Verdicts::MAX_SKIPPED);
    assert_eq!(v.omitted, 5);
    assert_eq!(v.skipped[1].reason.chars().count(), Verdicts::MAX_REASON);
    assert!(v.skipped[1].reason.ends_with('…'));
    let stored = v.to_stored();
    // Each distinct reason once: a thousand triggers stopped by two reasons cost two reasons' bytes.
    assert_eq!(stored.matches("same reason").count(), 1);
    assert!(stored.len() < 20_000, "{}", stored.len());
    assert_eq!(Verdicts::from_stored(&stored).unwrap(), v);
    assert!(Verdicts::from_stored(r#"{"r":[],"s":[["t",3]]}"#).is_err());
}

/// The claim lanes (Postgres, migration 0007: one row per repository with a job queued or running, which
/// claims read instead of every queued job) agree with the jobs after every kind of change: queueing,
/// claims, a finish, a deferral, a stored result, a release, a cancel, a retry, a concurrency group's
/// replacement, retention; a repository with nothing left has no lane. A lane that drifted would hide a
/// repository's jobs from claims, or order repositories unfairly.
async fn claim_lanes_agree_with_the_jobs_after_every_change(db: &TestDb) {
    type Lane = (String, i64, i64, i64, Option<i64>);
    const LANES: &str =
        "SELECT repo, queued, running, last_started, head FROM claim_lanes ORDER BY repo";
    const OF_THE_JOBS: &str = "
        SELECT repo, COUNT(*) FILTER (WHERE state = 'queued'),
               COUNT(*) FILTER (WHERE state IN ('running', 'delivering')),
               COALESCE((SELECT MAX(s.started_at) FROM jobs s WHERE s.repo = j.repo), 0),
               MIN(id) FILTER (WHERE state = 'queued')
        FROM jobs j WHERE state IN ('queued', 'running', 'delivering')
        GROUP BY repo ORDER BY repo";
    let store = db.store();
    let check = async |when: &str| {
        let (lanes, jobs): (Vec<Lane>, Vec<Lane>) = match &db.backend {
            Backend::Sqlite(_, pool) => (
                sqlx::query_as(LANES).fetch_all(pool).await.unwrap(),
                sqlx::query_as(OF_THE_JOBS).fetch_all(pool).await.unwrap(),
            ),
            Backend::Postgres(_, pool) => (
                sqlx::query_as(LANES).fetch_all(pool).await.unwrap(),
                sqlx::query_as(OF_THE_JOBS).fetch_all(pool).await.unwrap(),
            ),
        };
        assert_eq!(lanes, jobs, "after {when}");
        lanes.len()
    };
    let lease = Duration::from_secs(60);
    let quoted = "o/it's";
    queue(
        &store,
        "a",
        "o/a",
        &[
            job_of("1", "o/a", "x"),
            job_of("2", "o/a", "x"),
            job_of("3", "o/a", "x"),
        ],
    )
    .await;
    let grouped = |trigger: &str, cancel_in_progress| NewJob {
        concurrency_group: Some("g".into()),
        cancel_in_progress,
        ..job_of(trigger, quoted, "x")
    };
    queue(
        &store,
        "b",
        quoted,
        &[grouped("1", false), grouped("2", false)],
    )
    .await;
    assert_eq!(check("queueing").await, 2);

    let first = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    let second = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    check("two claims").await;
    assert!(
        store
            .finish_job(first.id, "w", Ending::Succeeded)
            .await
            .unwrap()
    );
    check("a finish").await;
    assert!(
        store
            .defer_job(second.id, "w", crate::now_ms() + 60_000, "later")
            .await
            .unwrap()
    );
    check("a deferral").await;

    let third = store.claim_job("w", policy(lease)).await.unwrap().unwrap();
    assert!(store.store_result(third.id, "w", "{}").await.unwrap());
    check("a stored result").await;
    assert!(store.release_job(third.id, "w").await.unwrap());
    check("a release").await;

    let queued = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.state == JobState::Queued && j.next_attempt_at.is_none())
        .unwrap()
        .id;
    assert_eq!(
        store.cancel_job(queued, "by hand").await.unwrap(),
        Cancel::Cancelled
    );
    check("a cancel").await;
    assert!(matches!(
        store.retry_job(queued).await.unwrap(),
        Retry::Queued(_)
    ));
    check("a retry").await;
    queue(&store, "c", quoted, &[grouped("3", true)]).await;
    check("a concurrency group's replacement").await;

    // Everything claimable runs and ends; deferred jobs wait and keep their lanes.
    while let Some(job) = store.claim_job("w", policy(lease)).await.unwrap() {
        assert!(
            store
                .finish_job(job.id, "w", Ending::Failed("boom"))
                .await
                .unwrap()
        );
        check("a failure").await;
    }
    db.exec("UPDATE jobs SET next_attempt_at = NULL WHERE state = 'queued'")
        .await;
    while let Some(job) = store.claim_job("w", policy(lease)).await.unwrap() {
        assert!(
            store
                .finish_job(job.id, "w", Ending::Succeeded)
                .await
                .unwrap()
        );
    }
    assert_eq!(check("every job ended").await, 0, "no lane is left");
    let keep = PrunePolicy {
        payloads: Duration::ZERO,
        logs: Duration::ZERO,
        jobs: Duration::ZERO,
    };
    store.prune(keep, false).await.unwrap();
    assert_eq!(check("retention").await, 0);
    // A new job opens its repository's lane again, with the repository's last start.
    queue(&store, "d", "o/a", &[job_of("4", "o/a", "x")]).await;
    assert_eq!(check("a new job").await, 1);
}

/// The fair order of 0010 (the installation's running jobs summed over every lane, every lane sorted, the
/// first 16 looked into), kept here as the reference the claim's pick by index (migration 0011) must agree
/// with: its first candidate, or none.
const FULL_SORT_PICK: &str = "
    WITH lanes AS (
        SELECT l.repo, l.running, l.last_started, l.head, l.queued,
               SUM(l.running) OVER (PARTITION BY l.installation_id) AS inst_running
        FROM claim_lanes l),
    heads AS (
        SELECT h.id, l.inst_running, l.running, l.last_started
        FROM (SELECT * FROM lanes WHERE lanes.queued > 0
              ORDER BY inst_running, running, last_started, head) AS l
        CROSS JOIN LATERAL (
            SELECT j.id FROM jobs j
            WHERE j.repo = l.repo AND j.state = 'queued'
              AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= $1)
              AND (j.concurrency_group IS NULL
                   OR NOT EXISTS (SELECT 1 FROM jobs g
                                  WHERE g.concurrency_group = j.concurrency_group
                                    AND g.state IN ('running', 'delivering')))
              AND (j.cancel_requested
                   OR CASE WHEN ($2::jsonb ->> j.agent) IS NULL THEN TRUE
                           ELSE (SELECT COUNT(*) FROM jobs a
                                 WHERE a.agent = j.agent AND a.state IN ('running', 'delivering'))
                                < ($2::jsonb ->> j.agent)::bigint END)
            ORDER BY j.id
            LIMIT 1) AS h
        LIMIT 16),
    expired AS (
        SELECT j.id, COALESCE(l.inst_running, 0) AS inst_running, COALESCE(l.running, 0) AS running,
               COALESCE(l.last_started, 0) AS last_started
        FROM jobs j LEFT JOIN lanes l ON l.repo = j.repo
        WHERE (j.state = 'running' AND j.lease_expires_at < $1)
           OR (j.state = 'delivering' AND (j.lease_owner IS NULL OR j.lease_expires_at < $1)
               AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= $1)))
    SELECT x.id FROM (SELECT * FROM heads UNION ALL SELECT * FROM expired) AS x
    ORDER BY x.inst_running, x.running, x.last_started, x.id
    LIMIT 1";

/// Claims over many lanes (more than the 16 the pick reads of each installation) of several installations
/// (and deliveries of none), tied on every count at first, follow the full fair order exactly, claim after
/// claim: lanes whose jobs all wait come first and are walked past, a profile at its limit leaves its jobs
/// for other profiles' jobs of the same repositories, a busy concurrency group holds its other jobs back,
/// a job whose worker died is taken over in its place, and jobs left running change the order as they
/// pile up. A pick that read fewer lanes than it must would start a job out of turn, or none while one may
/// start.
/// A delivery that fires nothing is marked matched with a commit that does not wait for the WAL flush; that
/// setting ends with its own statement: every other commit on the same connections (a job queued, a webhook
/// acknowledged) still waits for its flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_a_delivery_that_fired_nothing_leaves_every_connection_durable() {
    let db = TestDb::postgres().await;
    let Backend::Postgres(server, _) = &db.backend else {
        unreachable!()
    };
    // The test server's default is `off` (for speed); these sessions start `on`, as a durable server's do.
    let durable = PostgresStore::connect(&format!(
        "{}&options=-c%20synchronous_commit%3Don",
        server.url()
    ))
    .await
    .unwrap();
    let pool = durable.pool.clone();
    let store: Arc<dyn Store> = Arc::new(durable);
    let mut marks = Vec::new();
    for i in 0..40 {
        let Inserted::New(d) = store
            .insert_delivery(&delivery(&format!("quiet{i}")))
            .await
            .unwrap()
        else {
            panic!()
        };
        let store = store.clone();
        marks.push(tokio::spawn(async move {
            store.record_match_explained(d, &[], None).await.unwrap()
        }));
    }
    for mark in marks {
        assert_eq!(mark.await.unwrap(), 0);
    }
    assert!(store.unmatched_heads(100).await.unwrap().is_empty());
    // Every connection the marks used, held at once so none is handed out twice.
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        held.push(pool.acquire().await.unwrap());
    }
    assert!(held.len() > 1, "the marks ran on several connections");
    for conn in &mut held {
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(setting, "on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_follow_the_fair_order_across_many_lanes_and_installations() {
    let db = TestDb::postgres().await;
    let Backend::Postgres(_, pool) = &db.backend else {
        unreachable!()
    };
    let store = db.store();
    let installations = [Some(1), Some(2), Some(3), None];
    // 20 repositories whose jobs all wait (queued first: the oldest heads), then 72 others.
    let mut n = 0;
    for r in 0..92 {
        let repo = if r < 20 {
            format!("wait/r{r}")
        } else {
            format!("o{}/r{r}", r % 4)
        };
        let mut d = delivery(&format!("d{r}"));
        d.repo = Some(repo.clone());
        d.installation_id = installations[r % 4];
        let Inserted::New(d) = store.insert_delivery(&d).await.unwrap() else {
            panic!()
        };
        let jobs: Vec<NewJob> = (0..1 + r % 3)
            .map(|k| {
                n += 1;
                let agent = if (r + k) % 3 == 0 { "y" } else { "x" };
                NewJob {
                    concurrency_group: (r % 10 == 5 && k == 0).then(|| "g".to_owned()),
                    ..job_of(&format!("t{k}"), &repo, agent)
                }
            })
            .collect();
        store.record_match(d, &jobs).await.unwrap();
    }
    db.exec(
        "UPDATE jobs SET next_attempt_at = (EXTRACT(EPOCH FROM now()) * 1000)::bigint + 3600000,
                         wait_reason = 'later'
         WHERE repo LIKE 'wait/%'",
    )
    .await;
    let mut policy = policy(Duration::from_secs(600));
    policy.max_concurrent = Arc::new([("y".to_owned(), 3)].into_iter().collect());
    let limits = policy.profile_limits_json();
    let mut claimed = 0;
    let mut running: Vec<ClaimedJob> = Vec::new();
    loop {
        let expected: Option<i64> = sqlx::query_scalar(FULL_SORT_PICK)
            .bind(now_ms())
            .bind(&limits)
            .fetch_optional(pool)
            .await
            .unwrap();
        let job = store.claim_job("w", policy.clone()).await.unwrap();
        assert_eq!(
            job.as_ref().map(|j| j.id.0),
            expected,
            "claim {claimed}: the job the full fair order starts"
        );
        let Some(job) = job else {
            if running.is_empty() {
                break;
            }
            // What is left may wait for the jobs left running (their profile, their group).
            for job in running.drain(..) {
                assert!(
                    store
                        .finish_job(job.id, "w", Ending::Succeeded)
                        .await
                        .unwrap()
                );
            }
            continue;
        };
        claimed += 1;
        match claimed % 4 {
            // Left running: its installation and repository count it (a y job holds its profile's room).
            0 => running.push(job),
            // Its worker died: the lease ran out, and the next claim takes it over in its place.
            1 if claimed % 12 == 1 => {
                sqlx::query("UPDATE jobs SET lease_expires_at = 1 WHERE id = $1")
                    .bind(job.id.0)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            _ => assert!(
                store
                    .finish_job(job.id, "w", Ending::Succeeded)
                    .await
                    .unwrap()
            ),
        }
        // The y jobs left running end now and then, so y's other jobs start again.
        if claimed % 10 == 0 {
            for job in running.drain(..) {
                assert!(
                    store
                        .finish_job(job.id, "w", Ending::Succeeded)
                        .await
                        .unwrap()
                );
            }
        }
    }
    let (started, waiting): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE started_at IS NOT NULL),
                COUNT(*) FILTER (WHERE state = 'queued' AND repo LIKE 'wait/%')
         FROM jobs",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(claimed > 100, "{claimed} claims");
    assert_eq!(
        started + waiting,
        n as i64,
        "every job started but the waiting repositories' ({waiting} of {n})"
    );
    assert!(waiting > 30);
}
