//! Claims per second, store level, with a no-op agent: workers claim pre-queued jobs and finish each at
//! once, until none is left; every job must be claimed exactly once (each ends `succeeded` after one start,
//! and the workers' claims add up to the jobs). Postgres (a server of its own on a temporary directory, Unix
//! socket, fsync off like the tests' server) in two shapes, one after the other on fresh servers:
//!
//! - `processes`: 2 processes (this binary started again as a child) × 8 tasks each, as two replicas of
//!   `nightshift serve` claim (issue 11's target: ≥ 5,000 claims/s);
//! - `pools`: 2 connection pools × 8 tasks in this process (the shape earlier versions of this bench
//!   measured, for a ratio against them);
//!
//! and SQLite (a file on a temporary directory, as the service opens it) in the `pools` shape.
//!
//! The jobs are spread as a busy deployment's are: over many repositories (20 jobs each, queued in turn) of
//! a few installations (4), so the figure is the store's and not one repository's lock. The `processes`
//! shape is measured again with every job in one repository (its hourly cap raised to the job count): the
//! claims of one repository take its advisory lock one after the other.
//!
//! `cargo bench --bench claims` (`CLAIMS_JOBS=N` for another job count; default 10000). `CLAIMS_PG_URL=URL`
//! measures only the `processes` shape, on that (empty) database: a server started with
//! `pg_stat_statements`, say, to see where the time goes. `bench/claims.sh`
//! runs it beside another build's binary for ratios measured in one run.

#[path = "../tests/common/postgres.rs"]
mod postgres_server;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift::queue::claims::Claims;
use nightshift::store::{
    ClaimPolicy, Ending, Inserted, JobState, NewDelivery, NewJob, PostgresStore, SqliteStore, Store,
};

const REPLICAS: usize = 2;
const WORKERS: usize = 8;
/// Set in a child: the store URL it claims from.
const CHILD: &str = "NIGHTSHIFT_CLAIMS_CHILD";
/// Set in a child: the hourly cap of its claims.
const CHILD_CAP: &str = "NIGHTSHIFT_CLAIMS_PER_HOUR";
/// Jobs per repository and installations in the spread shapes.
const JOBS_PER_REPO: usize = 20;
const INSTALLATIONS: usize = 4;
/// The hourly cap of the spread shapes (the service's default): no job is held back by it.
const PER_HOUR: u32 = 100;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if let Ok(url) = std::env::var(CHILD) {
        let cap = std::env::var(CHILD_CAP).unwrap().parse().unwrap();
        return child(&url, cap).await;
    }
    // `cargo bench` passes `--bench`; nothing else is read.
    let jobs: usize = std::env::var("CLAIMS_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);

    let spread = jobs.div_ceil(JOBS_PER_REPO);

    if let Ok(url) = std::env::var("CLAIMS_PG_URL") {
        let store = connect(&url).await;
        queue("postgres", &store, jobs, spread).await;
        let elapsed = processes(&url, PER_HOUR, jobs).await;
        report("postgres", "processes", &store, jobs, elapsed).await;
        return;
    }

    let server = postgres_server::PgServer::start();
    let store = connect(&server.url()).await;
    queue("postgres", &store, jobs, spread).await;
    let elapsed = processes(&server.url(), PER_HOUR, jobs).await;
    let processes_rate = report("postgres", "processes", &store, jobs, elapsed).await;
    drop(server);

    let server = postgres_server::PgServer::start();
    let stores = pools(&server.url()).await;
    queue("postgres", &stores[0], jobs, spread).await;
    let elapsed = claim_in_tasks(&stores, PER_HOUR).await;
    let pg = report("postgres", "pools", &stores[0], jobs, elapsed).await;
    drop(server);

    let server = postgres_server::PgServer::start();
    let store = connect(&server.url()).await;
    queue("postgres", &store, jobs, 1).await;
    let elapsed = processes(&server.url(), jobs as u32, jobs).await;
    report(
        "postgres",
        "processes, one repository",
        &store,
        jobs,
        elapsed,
    )
    .await;
    drop(server);

    // One pool first, on a database of its own (one process, as SQLite is deployed); then two pools on
    // one database, two processes' worth of connections competing for SQLite's write lock.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/one.db", dir.path().display());
    let stores = vec![connect(&url).await];
    queue("sqlite", &stores[0], jobs, spread).await;
    let elapsed = claim_in_tasks(&stores, PER_HOUR).await;
    let records = stores[0].jobs().await.unwrap();
    assert!(
        records
            .iter()
            .all(|r| (r.state, r.attempts) == (JobState::Succeeded, 1))
    );
    println!(
        "sqlite (one pool): {jobs} jobs claimed and finished by 1 pool x {WORKERS} tasks in {:.2} s: {:.0} claims/s, none twice",
        elapsed.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
    let url = format!("sqlite://{}/claims.db", dir.path().display());
    let stores = pools(&url).await;
    queue("sqlite", &stores[0], jobs, spread).await;
    let elapsed = claim_in_tasks(&stores, PER_HOUR).await;
    let lite = report("sqlite", "pools", &stores[0], jobs, elapsed).await;
    println!(
        "postgres/sqlite (pools): {:.2}x; postgres processes/pools: {:.2}x",
        pg / lite,
        processes_rate / pg
    );
}

async fn connect(url: &str) -> Arc<dyn Store> {
    if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::connect(url).await.unwrap())
    } else {
        Arc::new(PostgresStore::connect(url).await.unwrap())
    }
}

async fn pools(url: &str) -> Vec<Arc<dyn Store>> {
    let mut stores = Vec::new();
    for _ in 0..REPLICAS {
        stores.push(connect(url).await);
    }
    stores
}

/// Queues `jobs` jobs over `repos` repositories in turn (of INSTALLATIONS installations).
async fn queue(name: &str, store: &Arc<dyn Store>, jobs: usize, repos: usize) {
    queue_from(name, store, 0, jobs, repos).await
}

/// Queues `jobs` jobs numbered from `first` (delivery ids are unique per store).
async fn queue_from(name: &str, store: &Arc<dyn Store>, first: usize, jobs: usize, repos: usize) {
    let queued = Instant::now();
    for i in first..first + jobs {
        let r = i % repos;
        let installation = (r % INSTALLATIONS) as i64 + 1;
        let repo = format!("o{installation}/r{r}");
        let delivery = NewDelivery::new(
            nightshift::ids::DeliveryId(format!("{name}-{i}")),
            "issues".into(),
            Some("opened".into()),
            Some(repo.clone()),
            Some(installation),
            b"{}".to_vec().into(),
        );
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
    println!(
        "{name}: queued {jobs} jobs in {:.2} s",
        queued.elapsed().as_secs_f64()
    );
}

/// Claims and finishes jobs with WORKERS tasks on `store` until none is left; the jobs each task claimed.
/// The tasks claim together, as one process's workers do (`queue::claims`).
async fn workers(
    store: Arc<dyn Store>,
    name: &str,
    per_hour: u32,
) -> Vec<tokio::task::JoinHandle<usize>> {
    let policy = ClaimPolicy::new(Duration::from_secs(600), per_hour);
    let claims = Arc::new(Claims::new(store.clone(), policy));
    (0..WORKERS)
        .map(|w| {
            let store = store.clone();
            let claims = claims.clone();
            let owner = format!("{name}-w{w}");
            tokio::spawn(async move {
                let mut claimed = 0;
                loop {
                    let Some(job) = claims.next(&owner).await.unwrap() else {
                        // None may start now: the others hold the rest, or there is no rest. A service's
                        // worker would wait for a wake-up; here, the task ends when nothing is queued.
                        if queued(&store).await == 0 {
                            break;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    };
                    assert!(
                        store
                            .finish_job(job.id, &owner, Ending::Succeeded)
                            .await
                            .unwrap()
                    );
                    claimed += 1;
                }
                claimed
            })
        })
        .collect()
}

/// Jobs queued in `store` now.
async fn queued(store: &Arc<dyn Store>) -> i64 {
    let counts = store.counts().await.unwrap();
    counts
        .jobs
        .iter()
        .filter(|(state, _)| *state == JobState::Queued)
        .map(|(_, n)| n)
        .sum()
}

async fn claim_in_tasks(stores: &[Arc<dyn Store>], per_hour: u32) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (r, store) in stores.iter().enumerate() {
        tasks.extend(workers(store.clone(), &format!("r{r}"), per_hour).await);
    }
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

/// A child: connects, says `ready`, waits for a line on stdin, claims until none is left, prints how many.
async fn child(url: &str, per_hour: u32) {
    let store = connect(url).await;
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();
    let mut claimed = 0;
    for task in workers(store, &format!("p{}", std::process::id()), per_hour).await {
        claimed += task.await.unwrap();
    }
    println!("{claimed}");
}

/// Starts REPLICAS children on `url`, times them from the moment all are connected until all are done, and
/// says the CPU spent meanwhile per job: by the children (their claims and finishes over the wire) and by
/// the Postgres server when it runs on this machine (where the 5,000/s target's time goes).
async fn processes(url: &str, per_hour: u32, jobs: usize) -> Duration {
    let mut children = Vec::new();
    for _ in 0..REPLICAS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, url)
            .env(CHILD_CAP, per_hour.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "a child connects first");
        children.push((child, out));
    }
    let server = server_pid(url);
    let server_before = server.map(server_ticks);
    let children_before = children_ticks();
    let start = Instant::now();
    for (child, _) in &mut children {
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let children = tokio::task::spawn_blocking(move || {
        let mut counts = Vec::new();
        for (mut child, mut out) in children {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(child.wait().unwrap().success());
            counts.push(line.trim().parse::<usize>().unwrap());
        }
        counts
    })
    .await
    .unwrap();
    let elapsed = start.elapsed();
    println!("claims per process: {children:?}");
    // The children were waited for: their CPU is counted in this process's children's time.
    let per_job = |ticks: u64| ticks as f64 / clock_ticks() / jobs as f64 * 1e6;
    let mut cpu = format!(
        "CPU per job: the {REPLICAS} processes {:.0} us",
        per_job(children_ticks() - children_before)
    );
    if let (Some(pid), Some(before)) = (server, server_before) {
        cpu += &format!(
            ", the Postgres server {:.0} us",
            per_job(server_ticks(pid) - before)
        );
    }
    println!("{cpu}");
    elapsed
}

/// Clock ticks per second, the unit of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (user + system, reaped children's user + system) CPU ticks of a process, from /proc.
fn proc_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<u64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some((fields[0] + fields[1], fields[2] + fields[3]))
}

/// CPU ticks of this process's children that ended and were waited for.
fn children_ticks() -> u64 {
    proc_ticks("self").map_or(0, |(_, reaped)| reaped)
}

/// The postmaster of a server on this machine whose socket directory `url` names (`host=DIR`, the data
/// directory in `DIR/data`, as tests/common/postgres.rs starts it).
fn server_pid(url: &str) -> Option<u32> {
    let dir = url.split("host=").nth(1)?.split('&').next()?;
    let pid = std::fs::read_to_string(format!("{dir}/data/postmaster.pid")).ok()?;
    pid.lines().next()?.trim().parse().ok()
}

/// A Postgres server's CPU ticks: the postmaster's own and its reaped children's, and its live children's.
fn server_ticks(postmaster: u32) -> u64 {
    let Some((own, reaped)) = proc_ticks(&postmaster.to_string()) else {
        return 0;
    };
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(postmaster) {
            total += proc_ticks(pid).map_or(0, |(ticks, _)| ticks);
        }
    }
    total
}

/// Checks that every job ran once and ended, prints the rate and returns it.
async fn report(
    name: &str,
    shape: &str,
    store: &Arc<dyn Store>,
    jobs: usize,
    elapsed: Duration,
) -> f64 {
    let records = store.jobs().await.unwrap();
    assert_eq!(records.len(), jobs, "{name}: every job is there");
    for record in &records {
        assert_eq!(
            (record.state, record.attempts),
            (JobState::Succeeded, 1),
            "{name}: job {} claimed exactly once",
            record.id.0
        );
    }
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!(
        "{name} ({shape}): {jobs} jobs claimed and finished by {REPLICAS} {shape} x {WORKERS} tasks in {:.2} s: {rate:.0} claims/s, none twice",
        elapsed.as_secs_f64()
    );
    rate
}
