//! Claims per second, store level: two stores (two connection pools, as two replicas have) × 8 tasks
//! claim pre-queued jobs and finish each at once (a no-op agent), until none is left; every job must be
//! claimed exactly once. Postgres (a server of its own on a temporary directory, Unix socket, fsync off
//! like the tests' server) and SQLite (a file on a temporary directory, as the service opens it), one after
//! the other in the same run.
//!
//! `cargo bench --bench claims` (`CLAIMS_JOBS=N` for another job count; default 10000).

#[path = "../tests/common/postgres.rs"]
mod postgres_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift::store::{
    ClaimPolicy, Ending, Inserted, NewDelivery, NewJob, PostgresStore, SqliteStore, Store,
};

const REPLICAS: usize = 2;
const WORKERS: usize = 8;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read.
    let jobs: usize = std::env::var("CLAIMS_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);

    let server = postgres_server::PgServer::start();
    let mut postgres = Vec::new();
    for _ in 0..REPLICAS {
        let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&server.url()).await.unwrap());
        postgres.push(store);
    }
    let pg = run("postgres", &postgres, jobs).await;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/claims.db", dir.path().display());
    let mut sqlite = Vec::new();
    for _ in 0..REPLICAS {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        sqlite.push(store);
    }
    let lite = run("sqlite", &sqlite, jobs).await;
    println!("postgres/sqlite: {:.2}x", pg / lite);
}

/// Queues `jobs` jobs (over enough repositories that the default hourly cap of 100 holds none back), then
/// claims and finishes them all; returns claims per second.
async fn run(name: &str, stores: &[Arc<dyn Store>], jobs: usize) -> f64 {
    let queued = Instant::now();
    let store = &stores[0];
    for i in 0..jobs {
        let repo = format!("o/r{}", i / 50);
        let delivery = NewDelivery {
            delivery_id: nightshift::ids::DeliveryId(format!("{name}-{i}")),
            event: "issues".into(),
            action: Some("opened".into()),
            repo: Some(repo.clone()),
            installation_id: None,
            payload: b"{}".to_vec(),
        };
        let Inserted::New(id) = store.insert_delivery(&delivery).await.unwrap() else {
            panic!("a fresh store")
        };
        let job = NewJob {
            trigger: "t".into(),
            repo,
            spec: "{}".into(),
            error: None,
            concurrency_group: None,
            cancel_in_progress: false,
        };
        store.record_match(id, &[job]).await.unwrap();
    }
    let queued = queued.elapsed();
    let policy = ClaimPolicy::new(Duration::from_secs(600), 100);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (r, store) in stores.iter().enumerate() {
        for w in 0..WORKERS {
            let store = store.clone();
            let policy = policy.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("r{r}-w{w}");
                let mut claimed = Vec::new();
                while let Some(job) = store.claim_job(&owner, policy.clone()).await.unwrap() {
                    assert!(
                        store
                            .finish_job(job.id, &owner, Ending::Succeeded)
                            .await
                            .unwrap()
                    );
                    claimed.push(job.id.0);
                }
                claimed
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    let claims = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        (claims, all.len()),
        (jobs, jobs),
        "{name}: every job claimed exactly once"
    );
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!(
        "{name}: {jobs} jobs claimed and finished by {REPLICAS} pools x {WORKERS} tasks in {:.2} s: {rate:.0} claims/s, none twice (queueing them took {:.2} s)",
        elapsed.as_secs_f64(),
        queued.as_secs_f64()
    );
    rate
}
