//! The store's tests, run against both stores: SQLite on a temporary file, and a real Postgres server that
//! each test starts on a temporary directory (`PgServer`) and stops when it ends. A missing Postgres fails
//! the test (nothing is skipped): `scripts/test.sh` installs it, or `apt-get install postgresql`.

use std::sync::Arc;
use std::time::Duration;

use super::*;

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
    Sqlite(#[allow(dead_code)] tempfile::TempDir, sqlx::SqlitePool),
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
            Backend::Sqlite(..) => self.store.clone(),
            Backend::Postgres(server, _) => {
                Arc::new(PostgresStore::connect(&server.url()).await.unwrap())
            }
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

fn policy(lease: Duration) -> ClaimPolicy {
    ClaimPolicy {
        lease,
        jobs_per_hour: 1000,
    }
}

fn delivery(id: &str) -> NewDelivery {
    NewDelivery {
        delivery_id: DeliveryId(id.to_owned()),
        event: "issues".into(),
        action: Some("opened".into()),
        repo: Some("o/r".into()),
        installation_id: Some(7),
        payload: b"{}".to_vec(),
    }
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
    let capped = ClaimPolicy {
        lease: Duration::from_secs(60),
        jobs_per_hour: 2,
    };
    assert!(store.claim_job("w", capped).await.unwrap().is_some());
    assert!(store.claim_job("w", capped).await.unwrap().is_some());
    assert!(store.claim_job("w", capped).await.unwrap().is_none());
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
    a_repeated_delivery_is_stored_once,
    matching_is_recorded_once_and_jobs_are_claimed_in_order,
    an_expired_lease_is_taken_over_and_each_start_counted,
    a_stored_result_is_delivered_without_running_the_agent_again,
    a_deferred_job_waits_with_its_reason_and_keeps_its_phase,
    a_repository_past_its_jobs_an_hour_waits_and_says_why,
    a_concurrency_group_runs_one_job_at_a_time_and_can_cancel_the_rest,
    concurrent_writers_wait_for_each_other_instead_of_failing,
    a_job_that_could_not_be_prepared_is_stored_failed,
    logs_and_outputs_round_trip,
    replicas_claiming_at_once_take_each_job_once,
    replicas_claiming_at_once_start_one_job_of_a_group,
    text_with_nul_is_stored,
    usage_repositories_ticks_and_pushes_round_trip,
    installations_their_repositories_and_backfill_records,
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
