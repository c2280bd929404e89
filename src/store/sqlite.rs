//! The SQLite store: WAL journal, `synchronous = FULL` so a delivery acknowledged with 202 survives a power
//! loss as well as a crash.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};

use super::*;
use crate::now_ms;

mod wal;
mod write_queue;
mod writer;

use wal::{Checkpoints, WalLimits, WalWatch};

pub(crate) use write_queue::WriteQueue;

pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "job usage",
        include_str!("../../migrations/sqlite/0002_job_usage.sql"),
    ),
    (
        3,
        "outbox",
        include_str!("../../migrations/sqlite/0003_outbox.sql"),
    ),
    (
        4,
        "replay digests",
        include_str!("../../migrations/sqlite/0004_replay.sql"),
    ),
    (
        5,
        "fair ops",
        include_str!("../../migrations/sqlite/0005_fair_ops.sql"),
    ),
    (
        6,
        "installations",
        include_str!("../../migrations/sqlite/0006_installations.sql"),
    ),
    (
        7,
        "match verdicts",
        include_str!("../../migrations/sqlite/0007_match_verdicts.sql"),
    ),
    (
        8,
        "spend by day",
        include_str!("../../migrations/sqlite/0008_spend_by_day.sql"),
    ),
    (
        9,
        "dashboard sessions",
        include_str!("../../migrations/sqlite/0009_dashboard_sessions.sql"),
    ),
    (
        10,
        "delivery payloads",
        include_str!("../../migrations/sqlite/0010_delivery_payloads.sql"),
    ),
    (
        11,
        "none",
        include_str!("../../migrations/sqlite/0011_none.sql"),
    ),
    (
        12,
        "claim lanes",
        include_str!("../../migrations/sqlite/0012_claim_lanes.sql"),
    ),
    (
        13,
        "packed payloads",
        include_str!("../../migrations/sqlite/0013_packed_payloads.sql"),
    ),
    (
        14,
        "sign-in states spent",
        include_str!("../../migrations/sqlite/0014_signins_spent.sql"),
    ),
];

/// Migrations that open their own transaction (to run with foreign keys off).
const WITHOUT_TRANSACTION: &[i64] = &[3];

/// The columns of a [`JobRecord`]; `job_record` reads a row of it.
const JOB_RECORD: &str = "SELECT j.id, d.delivery_id AS guid, j.trigger_name, j.repo, j.state, j.attempts, \
     j.retries, j.wait_reason, j.next_attempt_at, j.error, j.usage, j.created_at, j.started_at, j.finished_at \
     FROM jobs j JOIN deliveries d ON d.id = j.delivery_id";

fn job_record(row: &sqlx::sqlite::SqliteRow) -> Result<JobRecord> {
    Ok(JobRecord {
        id: JobId(row.try_get("id")?),
        delivery_id: DeliveryId(row.try_get("guid")?),
        trigger: row.try_get("trigger_name")?,
        repo: row.try_get("repo")?,
        state: JobState::parse(row.try_get("state")?)?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        retries: row.try_get::<i64, _>("retries")? as u32,
        waiting: row.try_get("wait_reason")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        error: row.try_get("error")?,
        usage: row
            .try_get::<Option<String>, _>("usage")?
            .map(|u| serde_json::from_str(&u))
            .transpose()?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn output_row(row: &sqlx::sqlite::SqliteRow) -> Result<Output> {
    Ok(Output {
        kind: row.try_get("kind")?,
        key: row.try_get("key")?,
        url: row.try_get("url")?,
        github_id: row
            .try_get::<Option<i64>, _>("github_id")?
            .map(|id| id as u64),
        pending: row.try_get::<String, _>("state")? == "pending",
    })
}

/// Stores a delivery on `conn` (alone, or in the caller's transaction).
async fn insert_delivery(conn: &mut sqlx::SqliteConnection, d: &NewDelivery) -> Result<Inserted> {
    let row = sqlx::query(
        "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, received_at)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (delivery_id) DO NOTHING
         RETURNING id",
    )
    .bind(&d.delivery_id.0)
    .bind(&d.event)
    .bind(&d.action)
    .bind(&d.repo)
    .bind(d.installation_id)
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Inserted::Duplicate);
    };
    let id: i64 = row.try_get("id")?;
    insert_payload(conn, id, d).await?;
    Ok(Inserted::New(id))
}

/// Stores the payload of `d`, the delivery `id` just inserted, packed (migration 0010: payloads have a
/// table of their own, so marking a delivery matched does not rewrite its payload; 0013: packed).
async fn insert_payload(conn: &mut sqlx::SqliteConnection, id: i64, d: &NewDelivery) -> Result<()> {
    sqlx::query("INSERT INTO delivery_payloads (delivery_id, payload, encoding) VALUES (?, ?, ?)")
        .bind(id)
        .bind(d.packed())
        .bind(payload::LZ4)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records the match of `delivery` (its jobs, its verdicts, its mark) in the caller's transaction; how many
/// jobs it queued.
async fn record_match_in(
    conn: &mut sqlx::SqliteConnection,
    delivery: i64,
    jobs: &[NewJob],
    verdicts: Option<&Verdicts>,
    now: i64,
) -> Result<usize> {
    let mut queued = 0;
    for job in jobs {
        let state = if job.error.is_some() {
            "failed"
        } else {
            "queued"
        };
        let exists = sqlx::query("SELECT 1 FROM jobs WHERE delivery_id = ? AND trigger_name = ?")
            .bind(delivery)
            .bind(&job.trigger)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if exists {
            continue;
        }
        if let (Some(group), true, None) =
            (&job.concurrency_group, job.cancel_in_progress, &job.error)
        {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = 'replaced by a newer job of its concurrency group'
                 WHERE concurrency_group = ? AND state = 'queued'",
            )
            .bind(now)
            .bind(group)
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE concurrency_group = ? AND state = 'running'")
                .bind(group)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(
            "INSERT INTO jobs (delivery_id, trigger_name, repo, spec, state, error, concurrency_group, created_at, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? = 'failed' THEN ? END)",
        )
        .bind(delivery)
        .bind(&job.trigger)
        .bind(&job.repo)
        .bind(&job.spec)
        .bind(state)
        .bind(&job.error)
        .bind(&job.concurrency_group)
        .bind(now)
        .bind(state)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if job.error.is_none() {
            queued += 1;
        }
    }
    sqlx::query("UPDATE deliveries SET matched_at = ?, verdicts = ? WHERE id = ?")
        .bind(now)
        .bind(verdicts.map(Verdicts::to_stored))
        .bind(delivery)
        .execute(&mut *conn)
        .await?;
    Ok(queued)
}

pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// One connection whose commits are not fsynced (`synchronous=NORMAL`), for writes that may be lost
    /// to a power failure without harm because they are redone: a delivery's match (matched again, it
    /// queues the same jobs, or none), a job's claim (the job is claimed again). WAL keeps the order, and
    /// the next durable commit syncs them too: nothing leaves the service before one (a GitHub output is
    /// recorded as pending in a durable commit first, `sink/once.rs`), so nothing outside ever saw what a
    /// power failure takes back. (A process crash loses nothing: the write is in the OS's page cache.)
    /// Two fsyncs fewer between an event and its agent.
    relaxed: SqlitePool,
    _checkpoints: Option<Checkpoints>,
    /// Writes the webhook deliveries' batches on a connection and thread of its own (none in memory).
    deliveries: Option<writer::DeliveryWriter>,
    /// Every write transaction takes its turn here before it begins (`write_queue`): shared by every store
    /// of this process on the same file, and by the delivery writer.
    writes: WriteQueue,
}

/// The candidates of a claim, best first: of each repository's lane (`claim_lanes`, migration 0012), its
/// oldest queued job that its limits let start (its concurrency group idle, the repository under its running
/// limit and the job's profile under its own, unless the job is being cancelled: it only ends), and the jobs
/// whose worker died or whose delivery's wait is over. Fair: the installation and then the repository with
/// the fewest running jobs first, then the repository served least recently, then the oldest job. A flood
/// from one repository takes its turn with every other repository's single job. A lane costs a few index
/// lookups, whatever the depth of its queue (the hourly cap is checked on the candidate taken: see
/// `CLAIM_TAKE`). Parameters: now, the profile limits (JSON), the repository limit, how many to read.
const CLAIM_CANDIDATES: &str = "
    WITH by_installation AS MATERIALIZED (
        SELECT l.installation_id AS inst, SUM(l.running) AS running FROM claim_lanes AS l
        WHERE l.running > 0 GROUP BY l.installation_id),
    full_profiles AS MATERIALIZED (
        SELECT p.key AS agent FROM json_each(?2) AS p
        WHERE (SELECT COUNT(*) FROM jobs AS r INDEXED BY jobs_running_by_agent
               WHERE r.agent = p.key AND r.state IN ('running', 'delivering')) >= p.value),
    heads AS MATERIALIZED (
        SELECT l.repo, l.installation_id AS inst, l.running, l.last_started,
               CASE WHEN l.running < ?3 THEN
                   (SELECT q.id FROM jobs AS q INDEXED BY jobs_queued_by_repo
                    WHERE q.state = 'queued' AND q.repo = l.repo
                      AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= ?1)
                      AND (q.concurrency_group IS NULL
                           OR NOT EXISTS (SELECT 1 FROM jobs AS g
                                          WHERE g.concurrency_group = q.concurrency_group
                                            AND g.state IN ('running', 'delivering')))
                      AND (q.cancel_requested <> 0
                           OR NOT EXISTS (SELECT 1 FROM full_profiles AS f WHERE f.agent = q.agent))
                    ORDER BY q.id LIMIT 1)
               ELSE
                   -- At its running limit: only a job being cancelled starts (to end).
                   (SELECT q.id FROM jobs AS q INDEXED BY jobs_queued_cancelling
                    WHERE q.state = 'queued' AND q.cancel_requested <> 0 AND q.repo = l.repo
                      AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= ?1)
                      AND (q.concurrency_group IS NULL
                           OR NOT EXISTS (SELECT 1 FROM jobs AS g
                                          WHERE g.concurrency_group = q.concurrency_group
                                            AND g.state IN ('running', 'delivering')))
                    ORDER BY q.id LIMIT 1)
               END AS id
        FROM claim_lanes AS l
        WHERE l.head IS NOT NULL),
    candidates AS (
        SELECT h.id, h.repo, h.inst, h.running, h.last_started FROM heads AS h WHERE h.id IS NOT NULL
        UNION ALL
        SELECT j.id, j.repo, l.installation_id, l.running, l.last_started
        FROM jobs AS j JOIN claim_lanes AS l ON l.repo = j.repo
        WHERE (j.state = 'running' AND j.lease_expires_at < ?1)
           OR (j.state = 'delivering'
               AND (j.lease_owner IS NULL OR j.lease_expires_at < ?1)
               AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= ?1)))
    SELECT c.id, c.repo FROM candidates AS c LEFT JOIN by_installation AS b ON b.inst IS c.inst
    ORDER BY COALESCE(b.running, 0), c.running, c.last_started, c.id
    LIMIT ?4";

/// How many candidates a claim reads at once: the first is taken unless its repository is at its hourly cap.
const CLAIM_CANDIDATES_READ: i64 = 8;

/// Leases a candidate (`CLAIM_CANDIDATES`), unless it is a start and its repository started its jobs of the
/// hour (counted up to the cap only): then nothing. Parameters: owner, lease end, now, the job, the cap.
const CLAIM_TAKE: &str = "
    UPDATE jobs
    SET state = CASE WHEN result IS NULL THEN 'running' ELSE 'delivering' END,
        attempts = attempts + CASE WHEN result IS NULL THEN 1 ELSE 0 END,
        started_at = CASE WHEN result IS NULL THEN ?3 ELSE started_at END,
        lease_owner = ?1, lease_expires_at = ?2, next_attempt_at = NULL, wait_reason = NULL
    WHERE id = ?4
      AND (state <> 'queued'
           OR (SELECT COUNT(*) FROM (SELECT 1 FROM jobs AS s INDEXED BY jobs_by_repo_start
                                     WHERE s.repo = jobs.repo AND s.started_at >= ?3 - 3600000
                                     LIMIT ?5)) < ?5)
    RETURNING id, delivery_id, trigger_name, repo, spec, attempts, retries, result, cancel_requested, created_at,
              started_at, (SELECT d.delivery_id FROM deliveries d WHERE d.id = jobs.delivery_id) AS guid";

/// A repository past its jobs an hour: its queued jobs wait until the oldest start of the hour is an hour
/// old (a millisecond at least: they are not candidates again in this claim), and say why. Parameters: now,
/// the cap, the repository.
const CLAIM_HOLD: &str = "
    UPDATE jobs
    SET next_attempt_at = MAX(?1 + 1,
                              (SELECT MIN(s.started_at) FROM jobs AS s INDEXED BY jobs_by_repo_start
                               WHERE s.repo = jobs.repo AND s.started_at >= ?1 - 3600000) + 3600000),
        wait_reason = 'the repository started ' || ?2 || ' jobs in the last hour (max_jobs_per_hour)'
    WHERE state = 'queued' AND repo = ?3 AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)";

/// How long a statement waits for another process's write lock (this process's writes queue: `WriteQueue`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, BUSY_TIMEOUT, WalLimits::DEFAULT).await
    }

    /// [`SqliteStore::connect`], with how long a write waits for another process's write lock (the tests
    /// use none: a write of this process that met another's would fail) and the WAL's limits (`wal.rs`).
    pub(crate) async fn connect_with(
        url: &str,
        busy_timeout: Duration,
        wal: WalLimits,
    ) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        // Checkpoints run on a connection of their own (`wal::Checkpoints`), never inside a commit.
        let options = options
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", wal.bound.to_string());
        let relaxed_options = options.clone().synchronous(SqliteSynchronous::Normal);
        let file = options.get_filename();
        if let Some(dir) = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && file != Path::new(":memory:"))
        {
            create_private_dir(dir)?;
        }
        if file != Path::new(":memory:") && !file.as_os_str().is_empty() {
            create_private_file(file)?;
        }
        let in_memory = file == Path::new(":memory:") || file.as_os_str().is_empty();
        let writes = if in_memory {
            WriteQueue::private()
        } else {
            WriteQueue::of_file(file)?
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // A COMMIT that failed (disk full, I/O error) can leave a connection inside a transaction as
            // sqlx counts it, and its rollback fails too; such a connection is closed, never handed out.
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options.clone())
            .await?;
        {
            let _turn = writes.turn().await;
            Migrator::with_migrations(migrations(i64::MAX))
                .run(&pool)
                .await
                .context("applying migrations")?;
        }
        // An in-memory database is one per connection pool: it shares the durable pool, and has no WAL.
        if in_memory {
            return Ok(SqliteStore {
                relaxed: pool.clone(),
                pool,
                _checkpoints: None,
                deliveries: None,
                writes,
            });
        }
        let relaxed = SqlitePoolOptions::new()
            .max_connections(1)
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(relaxed_options)
            .await?;
        let watch = WalWatch::new(file, wal);
        let deliveries =
            writer::DeliveryWriter::start(file, busy_timeout, writes.clone(), watch.clone())?;
        let checkpoints = Checkpoints::start(options, writes.clone(), watch).await?;
        Ok(SqliteStore {
            pool,
            relaxed,
            _checkpoints: Some(checkpoints),
            deliveries: Some(deliveries),
            writes,
        })
    }
}

/// The store's migrations up to `last` (a version), as sqlx applies them.
fn migrations(last: i64) -> Vec<Migration> {
    MIGRATIONS
        .iter()
        .filter(|(version, ..)| *version <= last)
        .map(|(version, name, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*name),
                MigrationType::Simple,
                AssertSqlSafe(*sql).into_sql_str(),
                WITHOUT_TRANSACTION.contains(version),
            )
        })
        .collect()
}

/// Creates the store's folder readable by the service's user only (a folder that exists keeps its mode).
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The store holds every payload of every repository: its file is created 0600 (SQLite gives its `-wal` and
/// `-shm` files the database file's mode), and an existing one readable by others is narrowed to 0600.
fn create_private_file(file: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("creating {}", file.display()))?;
    let mode = opened.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        opened
            .set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .with_context(|| format!("making {} private", file.display()))?;
        tracing::warn!(
            "{} was readable by other users; it is now {:o}",
            file.display(),
            mode & 0o700
        );
    }
    Ok(())
}

// Every write takes its turn in the process's write queue first (`self.writes.turn()`, `write_queue`), then
// begins, and ends its transaction (commit or rollback) before its turn ends: a transaction dropped is rolled
// back a moment later, after the next writer may have begun. (An error dropping one is the busy timeout's.) Write transactions start with BEGIN IMMEDIATE: a deferred one that reads first and then writes
// fails at once with SQLITE_BUSY (no waiting) when another process's connection wrote in between.

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// A row of `id, delivery_id, event, repo` from `deliveries`.
fn stored_delivery(row: &sqlx::sqlite::SqliteRow) -> Result<StoredDelivery> {
    Ok(StoredDelivery {
        id: row.try_get("id")?,
        delivery_id: DeliveryId(row.try_get("delivery_id")?),
        event: row.try_get("event")?,
        repo: row.try_get("repo")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<Inserted> {
        let _turn = self.writes.turn().await;
        let mut conn = self.pool.acquire().await?;
        insert_delivery(&mut conn, d).await
    }

    async fn unmatched_deliveries(&self, limit: u32) -> Result<Vec<StoredDelivery>> {
        let rows = sqlx::query(
            "SELECT id, delivery_id, event, repo FROM deliveries WHERE matched_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_delivery).collect()
    }

    async fn record_match(&self, delivery: i64, jobs: &[NewJob]) -> Result<usize> {
        self.record_match_explained(delivery, jobs, None).await
    }

    async fn record_match_explained(
        &self,
        delivery: i64,
        jobs: &[NewJob],
        verdicts: Option<&Verdicts>,
    ) -> Result<usize> {
        let _turn = self.writes.turn().await;
        if jobs.is_empty() {
            // Most deliveries fire nothing: lost to a power failure, such a mark is redone by matching the
            // delivery again, which fires nothing again. Not fsynced, so a flood of them does not hold the
            // write lock through an fsync each.
            sqlx::query("UPDATE deliveries SET matched_at = ?, verdicts = ? WHERE id = ?")
                .bind(now_ms())
                .bind(verdicts.map(Verdicts::to_stored))
                .bind(delivery)
                .execute(&self.relaxed)
                .await?;
            return Ok(0);
        }
        // Not fsynced either (see `relaxed`): the jobs' claims and outputs come after durable commits.
        let mut tx = self.relaxed.begin_with("BEGIN IMMEDIATE").await?;
        let queued = record_match_in(&mut tx, delivery, jobs, verdicts, now_ms()).await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn record_matches(&self, matches: &[Matched]) -> Result<Vec<usize>> {
        if let [one] = matches {
            return Ok(vec![
                self.record_match_explained(one.delivery, &one.jobs, Some(&one.verdicts))
                    .await?,
            ]);
        }
        let _turn = self.writes.turn().await;
        // One transaction, not fsynced (see `relaxed`): a lane's backlog is marked in one write.
        let mut tx = self.relaxed.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        // The matches that fired nothing (most) are marked in one statement: one hop to the connection's
        // thread, not one each, and the file's write lock is held that much shorter. Each that fired jobs
        // is recorded after them, in order (a later job of a concurrency group replaces an earlier one).
        let marks: Vec<(i64, String)> = matches
            .iter()
            .filter(|m| m.jobs.is_empty())
            .map(|m| (m.delivery, m.verdicts.to_stored()))
            .collect();
        if !marks.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET matched_at = ?1, verdicts = json_extract(m.value, '$[1]')
                 FROM json_each(?2) AS m WHERE deliveries.id = json_extract(m.value, '$[0]')",
            )
            .bind(now)
            .bind(serde_json::to_string(&marks)?)
            .execute(&mut *tx)
            .await?;
        }
        let mut queued = Vec::with_capacity(matches.len());
        for m in matches {
            queued.push(if m.jobs.is_empty() {
                0
            } else {
                record_match_in(&mut tx, m.delivery, &m.jobs, Some(&m.verdicts), now).await?
            });
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn claim_job(&self, owner: &str, policy: ClaimPolicy) -> Result<Option<ClaimedJob>> {
        let _turn = self.writes.turn().await;
        // On the connection that does not fsync (see `relaxed`): a claim lost to a power failure is a job
        // claimed again, and the job's first output waits for a durable commit. One transaction: the
        // candidates read are the ones taken.
        let now = now_ms();
        let limits = policy.profile_limits_json();
        let mut tx = self.relaxed.begin_with("BEGIN IMMEDIATE").await?;
        let mut tried = std::collections::HashSet::new();
        let row = 'claim: loop {
            let candidates = sqlx::query(CLAIM_CANDIDATES)
                .bind(now)
                .bind(&limits)
                .bind(policy.repo_limit())
                .bind(CLAIM_CANDIDATES_READ)
                .fetch_all(&mut *tx)
                .await?;
            let read = candidates.len();
            for candidate in candidates {
                let id: i64 = candidate.try_get("id")?;
                if !tried.insert(id) {
                    // Held back already in this claim (its repository's cap): nothing new to try.
                    break 'claim None;
                }
                let taken = sqlx::query(CLAIM_TAKE)
                    .bind(owner)
                    .bind(now + ms(policy.lease))
                    .bind(now)
                    .bind(id)
                    .bind(policy.jobs_per_hour)
                    .fetch_optional(&mut *tx)
                    .await?;
                if taken.is_some() {
                    break 'claim taken;
                }
                // Its repository started its jobs of the hour: its queued jobs wait, and say why.
                let repo: String = candidate.try_get("repo")?;
                sqlx::query(CLAIM_HOLD)
                    .bind(now)
                    .bind(policy.jobs_per_hour)
                    .bind(&repo)
                    .execute(&mut *tx)
                    .await?;
            }
            if read < CLAIM_CANDIDATES_READ as usize {
                break None;
            }
        };
        tx.commit().await?;
        row.map(|row| {
            Ok(ClaimedJob {
                id: JobId(row.try_get("id")?),
                delivery: row.try_get("delivery_id")?,
                delivery_id: DeliveryId(row.try_get("guid")?),
                trigger: row.try_get("trigger_name")?,
                repo: row.try_get("repo")?,
                spec: row.try_get("spec")?,
                attempt: row.try_get::<i64, _>("attempts")? as u32,
                retries: row.try_get::<i64, _>("retries")? as u32,
                result: row.try_get("result")?,
                cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
                queued_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
            })
        })
        .transpose()
    }

    async fn store_result(&self, job: JobId, owner: &str, result: &str) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let done = sqlx::query(
            "UPDATE jobs SET state = 'delivering', result = ?
             WHERE id = ? AND lease_owner = ? AND state IN ('running', 'delivering')",
        )
        .bind(crate::redact::redact(result).as_ref())
        .bind(job.0)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn defer_job(&self, job: JobId, owner: &str, until: i64, reason: &str) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let done = sqlx::query(
            "UPDATE jobs
             SET state = CASE WHEN result IS NULL THEN 'queued' ELSE 'delivering' END,
                 attempts = attempts - CASE WHEN result IS NULL AND attempts > 0 THEN 1 ELSE 0 END,
                 retries = retries + 1, next_attempt_at = ?, wait_reason = ?,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ? AND lease_owner = ? AND state IN ('running', 'delivering')",
        )
        .bind(until)
        .bind(crate::redact::redact(reason).as_ref())
        .bind(job.0)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew_lease(&self, job: JobId, owner: &str, lease: Duration) -> Result<Lease> {
        let _turn = self.writes.turn().await;
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ?
             WHERE id = ? AND lease_owner = ? AND state IN ('running', 'delivering')
             RETURNING cancel_requested",
        )
        .bind(now_ms() + ms(lease))
        .bind(job.0)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Lease::Lost,
            Some(row) if row.try_get::<i64, _>("cancel_requested")? != 0 => Lease::CancelRequested,
            Some(_) => Lease::Held,
        })
    }

    async fn finish_job(&self, job: JobId, owner: &str, ending: Ending<'_>) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let (state, error) = match ending {
            Ending::Succeeded => ("succeeded", None),
            Ending::Failed(e) => ("failed", Some(e)),
            Ending::Cancelled(e) => ("cancelled", Some(e)),
        };
        let result = sqlx::query(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
                    next_attempt_at = NULL, wait_reason = NULL
             WHERE id = ? AND lease_owner = ? AND state IN ('running', 'delivering')",
        )
        .bind(state)
        .bind(error.map(crate::redact::redact))
        .bind(now_ms())
        .bind(job.0)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn append_log(&self, job: JobId, stream: LogStream, lines: &[String]) -> Result<()> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        for line in lines {
            // Known secrets never reach the log (crate::redact), nor do terminal escapes.
            let line = crate::redact::redact(line);
            let line = crate::redact::printable(&line);
            sqlx::query("INSERT INTO job_logs (job_id, at, stream, line) VALUES (?, ?, ?, ?)")
                .bind(job.0)
                .bind(now)
                .bind(stream.as_str())
                .bind(line.as_ref())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn job_log(&self, job: JobId) -> Result<Vec<LogLine>> {
        let rows = sqlx::query("SELECT stream, line FROM job_logs WHERE job_id = ? ORDER BY id")
            .bind(job.0)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(LogLine {
                    stream: row.try_get("stream")?,
                    line: row.try_get("line")?,
                })
            })
            .collect()
    }

    async fn delivery_payload(&self, delivery: i64) -> Result<Vec<u8>> {
        // A delivery whose payload retention pruned has none: empty.
        let row = sqlx::query(
            "SELECT p.payload, p.encoding FROM deliveries d LEFT JOIN delivery_payloads p ON p.delivery_id = d.id
             WHERE d.id = ?",
        )
        .bind(delivery)
        .fetch_one(&self.pool)
        .await?;
        let Some(stored) = row.try_get::<Option<Vec<u8>>, _>("payload")? else {
            return Ok(Vec::new());
        };
        payload::unpack(row.try_get("encoding")?, stored)
            .with_context(|| format!("reading the payload of delivery {delivery}"))
    }

    async fn delivery_payloads(&self, deliveries: &[i64]) -> Result<Vec<Vec<u8>>> {
        let rows = sqlx::query(
            "SELECT d.id, p.payload, p.encoding FROM deliveries d
             LEFT JOIN delivery_payloads p ON p.delivery_id = d.id
             WHERE d.id IN (SELECT value FROM json_each(?))",
        )
        .bind(serde_json::to_string(deliveries)?)
        .fetch_all(&self.pool)
        .await?;
        let mut read = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let payload = match row.try_get::<Option<Vec<u8>>, _>("payload")? {
                Some(stored) => payload::unpack(row.try_get("encoding")?, stored)
                    .with_context(|| format!("reading the payload of delivery {id}"))?,
                None => Vec::new(),
            };
            read.insert(id, payload);
        }
        in_order(deliveries, read)
    }

    async fn find_output(&self, job: JobId, key: &str) -> Result<Option<Output>> {
        let row = sqlx::query(
            "SELECT kind, key, url, github_id, state FROM outputs WHERE job_id = ? AND key = ?",
        )
        .bind(job.0)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(output_row).transpose()
    }

    async fn record_output(&self, job: JobId, output: &Output) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query(
            "INSERT INTO outputs (job_id, kind, key, url, github_id, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (job_id, key) DO UPDATE
             SET kind = excluded.kind, url = excluded.url, github_id = excluded.github_id, state = excluded.state",
        )
        .bind(job.0)
        .bind(&output.kind)
        .bind(&output.key)
        .bind(&output.url)
        .bind(output.github_id.map(|id| id as i64))
        .bind(if output.pending { "pending" } else { "done" })
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_push(&self, repo: &str, branch: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT sha FROM pushes WHERE repo = ? AND branch = ?")
            .bind(repo)
            .bind(branch)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("sha")).transpose()?)
    }

    async fn record_push(&self, repo: &str, branch: &str, sha: &str, job: JobId) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query(
            "INSERT INTO pushes (repo, branch, sha, job_id, pushed_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (repo, branch) DO UPDATE
             SET sha = excluded.sha, job_id = excluded.job_id, pushed_at = excluded.pushed_at",
        )
        .bind(repo)
        .bind(branch)
        .bind(sha)
        .bind(job.0)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_output(&self, job: JobId, key: &str) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query("DELETE FROM outputs WHERE job_id = ? AND key = ?")
            .bind(job.0)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outputs(&self, job: JobId) -> Result<Vec<Output>> {
        let rows = sqlx::query(
            "SELECT kind, key, url, github_id, state FROM outputs WHERE job_id = ? ORDER BY id",
        )
        .bind(job.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(output_row).collect()
    }

    async fn jobs(&self) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!("{JOB_RECORD} ORDER BY j.id")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_record).collect()
    }

    async fn recent_jobs(&self, limit: u32) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT * FROM ({JOB_RECORD} ORDER BY j.id DESC LIMIT ?) ORDER BY id"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_record).collect()
    }

    async fn job(&self, job: JobId) -> Result<Option<JobRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("{JOB_RECORD} WHERE j.id = ?")))
            .bind(job.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_record).transpose()
    }

    async fn job_spec(&self, job: JobId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT spec FROM jobs WHERE id = ?")
            .bind(job.0)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn record_usage(&self, job: JobId, usage: &Usage) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query("UPDATE jobs SET usage = ? WHERE id = ?")
            .bind(serde_json::to_string(usage)?)
            .bind(job.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn spend_since(&self, repo: &str, since: i64) -> Result<f64> {
        let spent: Option<f64> = sqlx::query_scalar(
            "SELECT SUM(json_extract(usage, '$.cost_usd')) FROM jobs
             WHERE repo = ? AND started_at >= ? AND usage IS NOT NULL",
        )
        .bind(repo)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(spent.unwrap_or(0.0))
    }

    async fn upsert_repository(&self, repo: &KnownRepo) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query(
            "INSERT INTO repositories (full_name, installation_id, clone_url, default_branch, updated_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (full_name) DO UPDATE SET
                installation_id = COALESCE(excluded.installation_id, repositories.installation_id),
                clone_url = excluded.clone_url, default_branch = excluded.default_branch,
                updated_at = excluded.updated_at",
        )
        .bind(&repo.full_name)
        .bind(repo.installation_id)
        .bind(&repo.clone_url)
        .bind(&repo.default_branch)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn repositories(&self) -> Result<Vec<KnownRepo>> {
        let rows = sqlx::query(
            "SELECT full_name, installation_id, clone_url, default_branch FROM repositories ORDER BY full_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(KnownRepo {
                    full_name: row.try_get("full_name")?,
                    installation_id: row.try_get("installation_id")?,
                    clone_url: row.try_get("clone_url")?,
                    default_branch: row.try_get("default_branch")?,
                })
            })
            .collect()
    }

    async fn last_tick(&self, schedule: &str, repo: &str) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT last_tick FROM schedule_ticks WHERE schedule = ? AND repo = ?")
                .bind(schedule)
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| r.try_get("last_tick").map_err(Into::into))
            .transpose()
    }

    async fn set_last_tick(&self, schedule: &str, repo: &str, tick: i64) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, repo, last_tick) VALUES (?, ?, ?)
             ON CONFLICT (schedule, repo) DO UPDATE SET last_tick = MAX(last_tick, excluded.last_tick)",
        )
        .bind(schedule)
        .bind(repo)
        .bind(tick)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delivery_count(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM deliveries")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }
    async fn unmatched_heads(&self, limit: u32) -> Result<Vec<StoredDelivery>> {
        let rows = sqlx::query(
            // A skip scan of the unmatched-by-repository index: one seek per repository with deliveries
            // waiting, however long their backlogs are.
            "WITH RECURSIVE lanes(repo) AS (
                 SELECT (SELECT MIN(repo) FROM deliveries WHERE matched_at IS NULL)
                 UNION ALL
                 SELECT (SELECT MIN(d.repo) FROM deliveries d WHERE d.matched_at IS NULL AND d.repo > lanes.repo)
                 FROM lanes WHERE lanes.repo IS NOT NULL)
             SELECT id, delivery_id, event, repo FROM deliveries
             WHERE id IN (
                 SELECT (SELECT MIN(d.id) FROM deliveries d WHERE d.matched_at IS NULL AND d.repo = lanes.repo)
                 FROM lanes WHERE lanes.repo IS NOT NULL
                 UNION ALL
                 SELECT MIN(id) FROM deliveries WHERE matched_at IS NULL AND repo IS NULL)
             ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_delivery).collect()
    }

    async fn unmatched_in_lane(
        &self,
        head: &StoredDelivery,
        limit: u32,
    ) -> Result<Vec<StoredDelivery>> {
        // The unmatched-by-repository index, in order after the head (`IS`: a NULL repository is a lane too).
        let rows = sqlx::query(
            "SELECT id, delivery_id, event, repo FROM deliveries
             WHERE matched_at IS NULL AND repo IS ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(&head.repo)
        .bind(head.id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_delivery).collect()
    }

    async fn cancel_job(&self, job: JobId, reason: &str) -> Result<Cancel> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT state, (SELECT COUNT(*) FROM outputs o WHERE o.job_id = jobs.id) AS outputs
             FROM jobs WHERE id = ?",
        )
        .bind(job.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Ended here, in this writer's turn (a transaction dropped would end a moment after it).
            tx.rollback().await?;
            return Ok(Cancel::NoSuchJob);
        };
        let state = JobState::parse(row.try_get("state")?)?;
        let outputs: i64 = row.try_get("outputs")?;
        let reason = crate::redact::redact(reason);
        let done = match state {
            JobState::Queued if outputs == 0 => {
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', error = ?, finished_at = ?, next_attempt_at = NULL,
                            wait_reason = NULL
                     WHERE id = ?",
                )
                .bind(reason.as_ref())
                .bind(now_ms())
                .bind(job.0)
                .execute(&mut *tx)
                .await?;
                Cancel::Cancelled
            }
            // Running, or waiting with something already on GitHub (its progress comment): a worker stops it
            // and delivers "cancelled", now rather than when its wait ends.
            JobState::Queued | JobState::Running => {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = 1, cancel_reason = ?,
                            next_attempt_at = CASE WHEN state = 'queued' THEN NULL ELSE next_attempt_at END
                     WHERE id = ?",
                )
                .bind(reason.as_ref())
                .bind(job.0)
                .execute(&mut *tx)
                .await?;
                Cancel::Requested
            }
            other => Cancel::Refused(other),
        };
        tx.commit().await?;
        Ok(done)
    }

    async fn cancel_reason(&self, job: JobId) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, Option<String>>("SELECT cancel_reason FROM jobs WHERE id = ?")
                .bind(job.0)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    async fn retry_job(&self, job: JobId) -> Result<Retry> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT j.state, j.spec, j.trigger_name, j.repo, j.concurrency_group, j.delivery_id,
                    d.delivery_id AS guid,
                    COALESCE((SELECT length(p.payload) FROM delivery_payloads p WHERE p.delivery_id = d.id), 0)
                        AS payload_len,
                    (SELECT COUNT(*) FROM jobs r WHERE r.retried_from = j.id) AS retries_before
             FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = ?",
        )
        .bind(job.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Retry::NoSuchJob);
        };
        let state = JobState::parse(row.try_get("state")?)?;
        let spec: String = row.try_get("spec")?;
        if !matches!(state, JobState::Failed | JobState::Cancelled) {
            tx.rollback().await?;
            return Ok(Retry::Refused(state));
        }
        if !has_spec(&spec) {
            tx.rollback().await?;
            return Ok(Retry::NoSpec);
        }
        if row.try_get::<i64, _>("payload_len")? == 0 {
            tx.rollback().await?;
            return Ok(Retry::PayloadPruned);
        }
        let guid: String = row.try_get("guid")?;
        let delivery: i64 = row.try_get("delivery_id")?;
        let n = row.try_get::<i64, _>("retries_before")? + 1;
        let now = now_ms();
        // The retry's own delivery: the same event (a copy of its payload, which the job reads), matched
        // already (its spec is frozen), under an id of its own (jobs are one per delivery and trigger).
        let copy: i64 = sqlx::query_scalar(
            "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, received_at, matched_at)
             SELECT ?, event, action, repo, installation_id, ?, ? FROM deliveries WHERE id = ?
             RETURNING id",
        )
        .bind(retry_delivery_id(&guid, job, n))
        .bind(now)
        .bind(now)
        .bind(delivery)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO delivery_payloads (delivery_id, payload, encoding)
             SELECT ?, payload, encoding FROM delivery_payloads WHERE delivery_id = ?",
        )
        .bind(copy)
        .bind(delivery)
        .execute(&mut *tx)
        .await?;
        let new: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (delivery_id, trigger_name, repo, spec, state, concurrency_group, created_at, retried_from)
             SELECT ?, trigger_name, repo, spec, 'queued', concurrency_group, ?, id FROM jobs WHERE id = ?
             RETURNING id",
        )
        .bind(copy)
        .bind(now)
        .bind(job.0)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Retry::Queued(JobId(new)))
    }

    async fn retried_from(&self, job: JobId) -> Result<Option<JobId>> {
        Ok(
            sqlx::query_scalar::<_, Option<i64>>("SELECT retried_from FROM jobs WHERE id = ?")
                .bind(job.0)
                .fetch_optional(&self.pool)
                .await?
                .flatten()
                .map(JobId),
        )
    }

    async fn prune(&self, policy: PrunePolicy, dry_run: bool) -> Result<Pruned> {
        let now = now_ms();
        let cut_jobs = now - ms(policy.jobs);
        let cut_logs = now - ms(policy.logs);
        let cut_payloads = now - ms(policy.payloads);
        let mut pruned = Pruned::default();
        let old_jobs = |limit: i64| {
            sqlx::query(
                "SELECT id, repo FROM jobs
                 WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < ? ORDER BY id LIMIT ?",
            )
            .bind(cut_jobs)
            .bind(limit)
        };
        if dry_run {
            for row in old_jobs(i64::MAX).fetch_all(&self.pool).await? {
                pruned
                    .jobs
                    .push((JobId(row.try_get("id")?), row.try_get("repo")?));
            }
            pruned.log_lines = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM job_logs l JOIN jobs j ON j.id = l.job_id
                 WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < ?
                   AND j.finished_at >= ?",
            )
            .bind(cut_logs)
            .bind(cut_jobs)
            .fetch_one(&self.pool)
            .await? as u64;
            let (whole, emptied): (i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(kept = 0), 0), COALESCE(SUM(kept > 0 AND unfinished = 0 AND has_payload), 0)
                 FROM (SELECT EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.delivery_id = d.id) AS has_payload,
                              (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id
                                 AND NOT (j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < ?1)) AS kept,
                              (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id
                                 AND j.state IN ('queued', 'running', 'delivering')) AS unfinished
                       FROM deliveries d WHERE d.received_at < ?2 AND d.matched_at IS NOT NULL)",
            )
            .bind(cut_jobs)
            .bind(cut_payloads)
            .fetch_one(&self.pool)
            .await?;
            pruned.deliveries = whole as u64;
            pruned.payloads = emptied as u64;
            return Ok(pruned);
        }
        // In batches, each its own short transaction: the webhook's writes wait for one batch at most.
        loop {
            let _turn = self.writes.turn().await;
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let batch: Vec<(i64, String)> = old_jobs(PRUNE_BATCH)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((row.try_get("id")?, row.try_get("repo")?)))
                .collect::<Result<_>>()?;
            if batch.is_empty() {
                tx.rollback().await?;
                break;
            }
            let ids = serde_json::to_string(&batch.iter().map(|(id, _)| *id).collect::<Vec<_>>())?;
            for sql in [
                "DELETE FROM outputs WHERE job_id IN (SELECT value FROM json_each(?))",
                "DELETE FROM job_logs WHERE job_id IN (SELECT value FROM json_each(?))",
                "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
            ] {
                sqlx::query(sql).bind(&ids).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            pruned
                .jobs
                .extend(batch.into_iter().map(|(id, repo)| (JobId(id), repo)));
        }
        pruned.log_lines = batched(
            &self.pool,
            &self.writes,
            "DELETE FROM job_logs WHERE id IN (
                 SELECT l.id FROM job_logs l JOIN jobs j ON j.id = l.job_id
                 WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < ? LIMIT ?)",
            cut_logs,
        )
        .await?;
        pruned.deliveries = batched(
            &self.pool,
            &self.writes,
            "DELETE FROM deliveries WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.received_at < ? AND d.matched_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id) LIMIT ?)",
            cut_payloads,
        )
        .await?;
        pruned.payloads = batched(
            &self.pool,
            &self.writes,
            "DELETE FROM delivery_payloads WHERE delivery_id IN (
                 SELECT d.id FROM deliveries d JOIN delivery_payloads p ON p.delivery_id = d.id
                 WHERE d.received_at < ? AND d.matched_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id
                                   AND j.state IN ('queued', 'running', 'delivering')) LIMIT ?)",
            cut_payloads,
        )
        .await?;
        Ok(pruned)
    }

    async fn start_ticks(&self, schedule: &str, repo: &str, now: i64) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, repo, last_tick) VALUES (?, ?, ?)
             ON CONFLICT (schedule, repo) DO NOTHING",
        )
        .bind(schedule)
        .bind(repo)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn fire_tick(
        &self,
        schedule: &str,
        repo: &str,
        tick: i64,
        delivery: &NewDelivery,
    ) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let claimed = sqlx::query(
            "INSERT INTO schedule_ticks (schedule, repo, last_tick) VALUES (?1, ?2, ?3)
             ON CONFLICT (schedule, repo) DO UPDATE SET last_tick = excluded.last_tick
             WHERE schedule_ticks.last_tick < excluded.last_tick",
        )
        .bind(schedule)
        .bind(repo)
        .bind(tick)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            tx.rollback().await?;
            return Ok(false);
        }
        insert_delivery(&mut tx, delivery).await?;
        tx.commit().await?;
        Ok(true)
    }

    fn wakeups(&self) -> Option<tokio::sync::mpsc::Receiver<Wakeup>> {
        // One process owns the file: its own writes ring in-process.
        None
    }

    async fn release_job(&self, job: JobId, owner: &str) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let done = sqlx::query(
            "UPDATE jobs
             SET state = CASE WHEN result IS NULL THEN 'queued' ELSE 'delivering' END,
                 attempts = attempts - CASE WHEN result IS NULL AND attempts > 0 THEN 1 ELSE 0 END,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ? AND lease_owner = ? AND state IN ('running', 'delivering')",
        )
        .bind(job.0)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
        replay_window: Duration,
    ) -> Result<Vec<Inserted>> {
        match &self.deliveries {
            Some(writer) => writer.write(batch.to_vec(), replay_window).await,
            None => {
                let _turn = self.writes.turn().await;
                let mut conn = self.pool.acquire().await?;
                write_deliveries(&mut conn, batch, replay_window).await
            }
        }
    }

    fn packs_payloads(&self) -> bool {
        true
    }

    async fn counts(&self) -> Result<Counts> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let state: String = row.try_get("state")?;
            jobs.push((JobState::parse(&state)?, row.try_get::<i64, _>("n")?));
        }
        let unmatched_deliveries = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM deliveries WHERE matched_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            jobs,
            unmatched_deliveries,
        })
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn recent_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{DELIVERY_RECORD} WHERE (?1 IS NULL OR lower(repo) = lower(?1)) AND (?2 IS NULL OR event = ?2)
               AND (?3 IS NULL OR action = ?3) AND id < COALESCE(?5, 9223372036854775807)
               AND (NOT ?6 OR (matched_at IS NOT NULL
                               AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.delivery_id = deliveries.id)))
             ORDER BY id DESC LIMIT ?4"
        )))
        .bind(&filter.repo)
        .bind(&filter.event)
        .bind(&filter.action)
        .bind(filter.limit)
        .bind(filter.before)
        .bind(filter.fired_nothing)
        .fetch_all(&self.pool)
        .await?;
        self.delivery_records(rows).await
    }

    async fn delivery_record(&self, delivery_id: &str) -> Result<Option<DeliveryRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{DELIVERY_RECORD} WHERE delivery_id = ?"
        )))
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(self.delivery_records(rows).await?.pop())
    }

    async fn filtered_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{JOB_RECORD} WHERE (?1 IS NULL OR j.state = ?1) AND (?2 IS NULL OR lower(j.repo) = lower(?2))
               AND (?3 IS NULL OR j.trigger_name = ?3)
             ORDER BY j.id DESC LIMIT ?4"
        )))
        .bind(filter.state.map(JobState::as_str))
        .bind(&filter.repo)
        .bind(&filter.trigger)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_record).collect()
    }

    async fn job_log_after(
        &self,
        job: JobId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, LogLine)>> {
        let rows = sqlx::query(
            "SELECT id, stream, line FROM job_logs WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(job.0)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    LogLine {
                        stream: row.try_get("stream")?,
                        line: row.try_get("line")?,
                    },
                ))
            })
            .collect()
    }

    async fn upsert_installation(&self, i: &Installation) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query(
            "INSERT INTO installations (id, account, suspended, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET account = excluded.account, suspended = excluded.suspended,
                updated_at = excluded.updated_at",
        )
        .bind(i.id)
        .bind(&i.account)
        .bind(i.suspended)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_installation(&self, id: i64) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query("DELETE FROM installations WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        insert_installed_repos(&mut tx, installation, repos).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for repo in repos {
            sqlx::query(
                "DELETE FROM installation_repositories
                 WHERE installation_id = ? AND lower(full_name) = lower(?)",
            )
            .bind(installation)
            .bind(repo)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn replace_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM installation_repositories WHERE installation_id = ?")
            .bind(installation)
            .execute(&mut *tx)
            .await?;
        insert_installed_repos(&mut tx, installation, repos).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn installations(&self) -> Result<Vec<Installation>> {
        let rows = sqlx::query("SELECT id, account, suspended FROM installations ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Installation {
                    id: row.try_get("id")?,
                    account: row.try_get("account")?,
                    suspended: row.try_get("suspended")?,
                })
            })
            .collect()
    }

    async fn installed_repos(&self) -> Result<Vec<InstalledRepo>> {
        let rows = sqlx::query(
            "SELECT r.full_name, r.installation_id FROM installation_repositories r
             JOIN installations i ON i.id = r.installation_id
             WHERE NOT i.suspended ORDER BY r.full_name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(InstalledRepo {
                    full_name: row.try_get("full_name")?,
                    installation_id: row.try_get("installation_id")?,
                })
            })
            .collect()
    }

    async fn known_delivery_ids(&self, ids: &[String]) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT delivery_id FROM deliveries WHERE delivery_id IN (SELECT value FROM json_each(?))",
        )
        .bind(serde_json::to_string(ids)?)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| row.try_get("delivery_id").map_err(Into::into))
            .collect()
    }

    async fn newest_webhook_delivery_at(&self) -> Result<Option<i64>> {
        let at = sqlx::query_scalar(
            "SELECT received_at FROM deliveries WHERE event <> 'schedule' ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(at)
    }

    async fn claim_redelivery(&self, delivery_id: &str, now: i64, window: i64) -> Result<bool> {
        let _turn = self.writes.turn().await;
        // What was asked for a week ago is long out of GitHub's delivery log: forgotten, so the table stays
        // small.
        sqlx::query("DELETE FROM redeliveries WHERE asked_at < ?")
            .bind(now - REDELIVERIES_KEPT_MS)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query(
            "INSERT INTO redeliveries (delivery_id, asked_at) VALUES (?, ?)
             ON CONFLICT (delivery_id) DO UPDATE SET asked_at = excluded.asked_at
             WHERE redeliveries.asked_at <= ?",
        )
        .bind(delivery_id)
        .bind(now)
        .bind(now - window)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn try_lease(&self, name: &str, owner: &str, now: i64, until: i64) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let done = sqlx::query(
            "INSERT INTO task_leases (name, owner, expires_at) VALUES (?, ?, ?)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
             WHERE task_leases.owner = excluded.owner OR task_leases.expires_at < ?",
        )
        .bind(name)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn spend_by_day(&self, since: i64) -> Result<Vec<DaySpend>> {
        // TOTAL is a float even over no value; token sums are cast back to integers.
        let rows = sqlx::query(
            "SELECT (started_at / 86400000) * 86400000 AS day, repo, COUNT(*) AS jobs,
                    TOTAL(json_extract(usage, '$.cost_usd')) AS cost,
                    CAST(TOTAL(json_extract(usage, '$.input_tokens')) AS INTEGER) AS input,
                    CAST(TOTAL(json_extract(usage, '$.cached_input_tokens')) AS INTEGER) AS cached,
                    CAST(TOTAL(json_extract(usage, '$.output_tokens')) AS INTEGER) AS output
             FROM jobs WHERE started_at >= ? GROUP BY day, repo ORDER BY day, repo",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DaySpend {
                    day: row.try_get("day")?,
                    repo: row.try_get("repo")?,
                    jobs: row.try_get::<i64, _>("jobs")?.max(0) as u64,
                    cost_usd: row.try_get("cost")?,
                    input_tokens: row.try_get::<i64, _>("input")?.max(0) as u64,
                    cached_input_tokens: row.try_get::<i64, _>("cached")?.max(0) as u64,
                    output_tokens: row.try_get::<i64, _>("output")?.max(0) as u64,
                })
            })
            .collect()
    }

    async fn insert_delivery_batch(
        &self,
        batch: Vec<NewDelivery>,
        replay_window: Duration,
    ) -> Result<Vec<Inserted>> {
        match &self.deliveries {
            Some(writer) => writer.write(batch, replay_window).await,
            None => self.insert_deliveries(&batch, replay_window).await,
        }
    }

    async fn create_session(
        &self,
        id_hash: &str,
        session: &DashboardSession,
        now: i64,
        per_login: u32,
    ) -> Result<()> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (id_hash, login, admin, csrf, created_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id_hash)
        .bind(&session.login)
        .bind(session.admin)
        .bind(&session.csrf)
        .bind(now)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM dashboard_sessions WHERE login = ?1 AND id_hash NOT IN
               (SELECT id_hash FROM dashboard_sessions WHERE login = ?1
                ORDER BY created_at DESC, id_hash LIMIT ?2)",
        )
        .bind(&session.login)
        .bind(i64::from(per_login))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<DashboardSession>> {
        let row = sqlx::query(
            "SELECT login, admin, csrf, expires_at FROM dashboard_sessions
             WHERE id_hash = ? AND expires_at > ?",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(DashboardSession {
                login: row.try_get("login")?,
                admin: row.try_get("admin")?,
                csrf: row.try_get("csrf")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        let _turn = self.writes.turn().await;
        sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = ?")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn spend_signin(
        &self,
        state_hash: &str,
        expires_at: i64,
        now: i64,
        max: u32,
    ) -> Result<bool> {
        let _turn = self.writes.turn().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let first = sqlx::query(
            "INSERT INTO dashboard_signins_spent (state_hash, expires_at) VALUES (?, ?)
               ON CONFLICT (state_hash) DO NOTHING",
        )
        .bind(state_hash)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        sqlx::query(
            "DELETE FROM dashboard_signins_spent WHERE expires_at <= ?1 OR state_hash NOT IN
               (SELECT state_hash FROM dashboard_signins_spent ORDER BY expires_at DESC, state_hash LIMIT ?2)",
        )
        .bind(now)
        .bind(i64::from(max))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(first)
    }
}

/// The columns of a [`DeliveryRecord`] (its jobs apart); `delivery_records` reads rows of it.
const DELIVERY_RECORD: &str = "SELECT id, delivery_id, event, action, repo, received_at, matched_at, verdicts \
     FROM deliveries";

impl SqliteStore {
    /// Deliveries' rows (of [`DELIVERY_RECORD`]) with their jobs.
    async fn delivery_records(
        &self,
        rows: Vec<sqlx::sqlite::SqliteRow>,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut records = rows
            .iter()
            .map(|row| {
                Ok(DeliveryRecord {
                    id: row.try_get("id")?,
                    delivery_id: DeliveryId(row.try_get("delivery_id")?),
                    event: row.try_get("event")?,
                    action: row.try_get("action")?,
                    repo: row.try_get("repo")?,
                    received_at: row.try_get("received_at")?,
                    matched_at: row.try_get("matched_at")?,
                    jobs: Vec::new(),
                    verdicts: row
                        .try_get::<Option<String>, _>("verdicts")?
                        .map(|v| Verdicts::from_stored(&v))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if records.is_empty() {
            return Ok(records);
        }
        let ids = serde_json::to_string(&records.iter().map(|r| r.id).collect::<Vec<_>>())?;
        let jobs = sqlx::query(
            "SELECT id, delivery_id, trigger_name, state, error FROM jobs
             WHERE delivery_id IN (SELECT value FROM json_each(?)) ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        for row in jobs {
            let delivery: i64 = row.try_get("delivery_id")?;
            if let Some(record) = records.iter_mut().find(|r| r.id == delivery) {
                record.jobs.push(DeliveryJob {
                    id: JobId(row.try_get("id")?),
                    trigger: row.try_get("trigger_name")?,
                    state: JobState::parse(row.try_get("state")?)?,
                    error: row.try_get("error")?,
                });
            }
        }
        Ok(records)
    }
}

async fn write_deliveries(
    conn: &mut sqlx::SqliteConnection,
    batch: &[NewDelivery],
    replay_window: Duration,
) -> Result<Vec<Inserted>> {
    use super::batch::{Answers, ROWS_PER_STATEMENT};
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let now = now_ms();
    let mut inserted: Vec<(String, i64)> = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, received_at)
             VALUES {}
             ON CONFLICT (delivery_id) DO NOTHING
             RETURNING delivery_id, id",
            vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for d in chunk {
            query = query
                .bind(&d.delivery_id.0)
                .bind(&d.event)
                .bind(&d.action)
                .bind(&d.repo)
                .bind(d.installation_id)
                .bind(now);
        }
        for row in query.fetch_all(&mut *tx).await? {
            inserted.push((row.try_get(0)?, row.try_get(1)?));
        }
    }
    // Each new row's payload, packed (of the first of the batch's deliveries with its id: the one inserted).
    let mut first = std::collections::HashMap::new();
    for d in batch.iter().rev() {
        first.insert(d.delivery_id.0.as_str(), d);
    }
    for chunk in inserted.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO delivery_payloads (delivery_id, payload, encoding) VALUES {}",
            vec!["(?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (guid, id) in chunk {
            query = query
                .bind(*id)
                .bind(first[guid.as_str()].packed())
                .bind(payload::LZ4);
        }
        query.execute(&mut *tx).await?;
    }
    let mut answers =
        Answers::from_inserted(batch.iter().map(|d| d.delivery_id.0.as_str()), inserted);
    if !replay_window.is_zero() {
        let cutoff = now.saturating_sub(ms(replay_window));
        sqlx::query("DELETE FROM delivery_digests WHERE received_at < ?")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let (fresh, mut removed) = answers.digests(batch);
        for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
            // A digest already there (within the window: older ones were just removed) is a replay.
            let sql = format!(
                "INSERT INTO delivery_digests (body_sha256, delivery_id, received_at) VALUES {}
                 ON CONFLICT (body_sha256) DO NOTHING
                 RETURNING body_sha256",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for f in chunk {
                query = query
                    .bind(&f.digest[..])
                    .bind(&batch[f.index].delivery_id.0)
                    .bind(now);
            }
            let new: std::collections::HashSet<Vec<u8>> = query
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            for f in chunk.iter().filter(|f| !new.contains(&f.digest[..])) {
                let first: String = sqlx::query_scalar(
                    "SELECT delivery_id FROM delivery_digests WHERE body_sha256 = ?",
                )
                .bind(&f.digest[..])
                .fetch_one(&mut *tx)
                .await?;
                removed.push(f.row);
                answers.replayed(f, DeliveryId(first));
            }
        }
        for row in removed {
            sqlx::query("DELETE FROM deliveries WHERE id = ?")
                .bind(row)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(answers.into_answers())
}

/// Adds `repos` to an installation's list (those listed already stay), inside the caller's transaction.
async fn insert_installed_repos(
    conn: &mut sqlx::SqliteConnection,
    installation: i64,
    repos: &[String],
) -> Result<()> {
    for repo in repos {
        sqlx::query(
            "INSERT INTO installation_repositories (installation_id, full_name) VALUES (?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(installation)
        .bind(repo)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Rows one retention batch removes (one short write transaction each).
const PRUNE_BATCH: i64 = 500;

/// Runs a removal (`sql`, bound to a cut-off and a batch size) in batches until one removes nothing;
/// returns how many rows it removed.
async fn batched(
    pool: &SqlitePool,
    writes: &WriteQueue,
    sql: &'static str,
    cut: i64,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let _turn = writes.turn().await;
        let done = sqlx::query(sql)
            .bind(cut)
            .bind(PRUNE_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += done;
        if done == 0 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::delivery;

    /// Two stores on one file whose writes may wait for SQLite's lock for a short busy timeout only (far
    /// shorter than the service's): every kind of write at once through both succeeds, because each takes
    /// its turn in the file's queue before it begins, and only the delivery writer's batches (which take
    /// no turn) are ever met; none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_writes_queue_instead_of_waiting_for_the_lock() {
        // Long enough for one delivery batch's commit; a line of sixteen connections polling for the lock
        // (what the queue replaces) outlasted the service's ten seconds.
        const SHORT_BUSY: Duration = Duration::from_millis(500);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let a = SqliteStore::connect_with(&url, SHORT_BUSY, WalLimits::DEFAULT)
            .await
            .unwrap();
        // The same file by another path.
        let url = format!("sqlite://{}/./n.db", dir.path().display());
        let b = SqliteStore::connect_with(&url, SHORT_BUSY, WalLimits::DEFAULT)
            .await
            .unwrap();
        crate::store::tests::every_write_at_once_through_two_stores_succeeds_and_none_is_lost(
            std::sync::Arc::new(a),
            std::sync::Arc::new(b),
        )
        .await;
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/n.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.unwrap();
        (dir, store)
    }

    /// A store written before payloads had a table of their own (migration 0010) keeps every payload byte
    /// for byte, a pruned one stays pruned, and a retry of an old job still copies its event.
    #[tokio::test]
    async fn payloads_stored_before_migration_10_survive_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/old.db", dir.path().display());
        {
            let options = SqliteConnectOptions::from_str(&url)
                .unwrap()
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            Migrator::with_migrations(migrations(9))
                .run(&pool)
                .await
                .unwrap();
            let body: &[u8] = b"{\"a\":\"\0\xff\"}";
            for (guid, payload) in [("kept", body), ("pruned", &b""[..])] {
                sqlx::query(
                    "INSERT INTO deliveries (delivery_id, event, repo, payload, received_at, matched_at)
                     VALUES (?, 'issues', 'o/r', ?, 1, 1)",
                )
                .bind(guid)
                .bind(payload)
                .execute(&pool)
                .await
                .unwrap();
            }
            sqlx::query(
                "INSERT INTO jobs (delivery_id, trigger_name, repo, spec, state, created_at, finished_at)
                 VALUES (1, 't', 'o/r', '{\"x\":1}', 'failed', 1, 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::connect(&url).await.unwrap();
        assert_eq!(
            store.delivery_payload(1).await.unwrap(),
            b"{\"a\":\"\0\xff\"}"
        );
        assert!(store.delivery_payload(2).await.unwrap().is_empty());
        let Retry::Queued(retry) = store.retry_job(JobId(1)).await.unwrap() else {
            panic!("the old job's retry was refused");
        };
        let copy: i64 = sqlx::query_scalar("SELECT delivery_id FROM jobs WHERE id = ?")
            .bind(retry.0)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            store.delivery_payload(copy).await.unwrap(),
            b"{\"a\":\"\0\xff\"}"
        );
        // Removing a delivery removes its payload.
        sqlx::query("DELETE FROM jobs")
            .execute(&store.pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM deliveries")
            .execute(&store.pool)
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_payloads")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    /// `len` bytes that packing cannot shrink (LZ4 looks back 64 KiB).
    fn noise(len: usize) -> bytes::Bytes {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>()
            .into()
    }

    fn push_delivery(id: String, body: bytes::Bytes) -> NewDelivery {
        NewDelivery::new(DeliveryId(id), "push".into(), None, None, None, body)
    }

    /// A WAL grown past what is kept of it (a flood the checkpoints could not keep up with) is cut back once
    /// the writes paused and it was copied whole: the disk it took is given back, and what it held is in the
    /// database file.
    #[tokio::test]
    async fn a_grown_wal_is_cut_back_when_the_writes_pause() {
        let kept = WalLimits::DEFAULT.kept;
        let (dir, store) = store().await;
        let wal = dir.path().join("sub/n.db-wal");
        let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        // 4 MiB of noise, 24 times in one batch: a WAL of about 100 MB.
        let body = noise(4 << 20);
        let batch = (0..24)
            .map(|i| push_delivery(format!("big-{i}"), body.clone()))
            .collect();
        store
            .insert_delivery_batch(batch, Duration::ZERO)
            .await
            .unwrap();
        assert!(wal_size() > kept + (16 << 20), "{}", wal_size());
        // The checkpoint task copies it (every 250 ms), finds no write came since, and cuts it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while wal_size() > kept {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL stayed at {} bytes",
                wal_size()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store
            .insert_delivery(&push_delivery(
                "small".into(),
                bytes::Bytes::from_static(b"{}"),
            ))
            .await
            .unwrap();
        assert_eq!(
            store.delivery_payload(1).await.unwrap().len(),
            body.len(),
            "what the WAL held is in the database file"
        );
    }

    /// WAL limits small enough for a test to write past them many times.
    const SMALL_WAL: WalLimits = WalLimits {
        kept: 2 << 20,
        bound: 8 << 20,
    };

    /// A store on a file with [`SMALL_WAL`], and its WAL file's path.
    async fn store_with_a_small_wal() -> (tempfile::TempDir, SqliteStore, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = SqliteStore::connect_with(&url, BUSY_TIMEOUT, SMALL_WAL)
            .await
            .unwrap();
        let wal = dir.path().join("n.db-wal");
        (dir, store, wal)
    }

    /// Writes `batches` batches of two deliveries of `body` back to back (each sent when the one before was
    /// answered), calling `after` after each.
    async fn flood(
        store: &SqliteStore,
        batches: std::ops::Range<usize>,
        body: &bytes::Bytes,
        mut after: impl FnMut(),
    ) {
        for b in batches {
            let batch = (0..2)
                .map(|i| push_delivery(format!("d-{b}-{i}"), body.clone()))
                .collect();
            store
                .insert_delivery_batch(batch, Duration::ZERO)
                .await
                .unwrap();
            after();
        }
    }

    /// Writes that never pause (a flood of webhooks, back to back) do not grow the WAL without end: at its
    /// bound, the checkpoint task copies it whole while writes wait, and it starts over. Without the bound
    /// the WAL held every byte written (128 MiB here), since a PASSIVE checkpoint never finished before the
    /// next write. Every delivery written is read back whole afterwards.
    #[tokio::test]
    async fn writes_that_never_pause_keep_the_wal_near_its_bound() {
        let (_dir, store, wal) = store_with_a_small_wal().await;
        let body = noise(1 << 20);
        let mut largest = 0;
        flood(&store, 0..64, &body, || {
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        })
        .await;
        // Unbounded, it reaches 16 bounds; how far past the bound it gets before the restart depends on how
        // fast the disk copies (the PASSIVEs run while writes go on).
        assert!(
            largest < 8 * SMALL_WAL.bound,
            "the WAL grew to {largest} bytes under writes that never paused (bound {})",
            SMALL_WAL.bound
        );
        for id in 1..=128 {
            assert_eq!(store.delivery_payload(id).await.unwrap(), body);
        }
    }

    /// A reader that holds an old snapshot through a flood keeps the WAL from starting over: the writes all
    /// go on (no restart is forced while readers keep the checkpoints from copying, and none is tried
    /// again until the WAL grew another bound), and once the reader ends the WAL starts over and is cut
    /// back.
    #[tokio::test]
    async fn a_reader_holding_an_old_snapshot_holds_up_no_write_and_the_wal_starts_over_after_it() {
        let (_dir, store, wal) = store_with_a_small_wal().await;
        let wal_size = || std::fs::metadata(&wal).unwrap().len();
        let body = noise(1 << 20);
        let write = |from: usize| flood(&store, from..from + 32, &body, || {});
        write(0).await;
        let mut reader = store.pool.acquire().await.unwrap();
        sqlx::query("BEGIN").execute(&mut *reader).await.unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&mut *reader)
            .await
            .unwrap();
        assert_eq!(seen, 64);
        write(32).await;
        assert!(
            wal_size() > 4 * SMALL_WAL.bound,
            "the reader's snapshot kept the WAL from starting over ({} bytes)",
            wal_size()
        );
        sqlx::query("COMMIT").execute(&mut *reader).await.unwrap();
        drop(reader);
        write(64).await;
        // The checkpoint task runs beside the writes: on a busy machine it catches up after they end.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while wal_size() >= 8 * SMALL_WAL.bound && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            wal_size() < 8 * SMALL_WAL.bound,
            "the WAL started over and was cut back once the reader ended ({} bytes)",
            wal_size()
        );
        for id in 1..=192 {
            assert_eq!(store.delivery_payload(id).await.unwrap(), body);
        }
    }

    /// Payloads are written packed, by the group-commit writer and by a single insert alike, take a fraction
    /// of their size in the file, and read back byte for byte (a retry's copy too). A damaged packed row is
    /// an error that names the delivery, never a wrong body. (Rows written raw before migration 0013 read
    /// back as they were: `payloads_stored_before_migration_10_survive_it`.)
    #[tokio::test]
    async fn payloads_are_stored_packed_and_read_back_byte_for_byte() {
        let (_dir, store) = store().await;
        let body = std::fs::read("tests/fixtures/webhooks/pull_request/opened.json").unwrap();
        let new = |id: &str| {
            NewDelivery::new(
                DeliveryId(id.into()),
                "pull_request".into(),
                Some("opened".into()),
                Some("o/r".into()),
                None,
                body.clone().into(),
            )
        };
        let batch = store
            .insert_delivery_batch(vec![new("by-the-writer")], Duration::ZERO)
            .await
            .unwrap();
        let Inserted::New(written) = batch[0] else {
            panic!("{batch:?}")
        };
        let Inserted::New(single) = store.insert_delivery(&new("alone")).await.unwrap() else {
            panic!("not stored")
        };
        for row in [written, single] {
            let (size, encoding): (i64, Option<String>) = sqlx::query_as(
                "SELECT length(payload), encoding FROM delivery_payloads WHERE delivery_id = ?",
            )
            .bind(row)
            .fetch_one(&store.pool)
            .await
            .unwrap();
            assert_eq!(encoding.as_deref(), Some("lz4"));
            assert!(size * 4 < body.len() as i64, "{size} of {}", body.len());
            assert_eq!(store.delivery_payload(row).await.unwrap(), body);
        }
        // A retry's delivery gets a copy of the packed payload, which reads back the same.
        sqlx::query(
            "INSERT INTO jobs (delivery_id, trigger_name, repo, spec, state, created_at, finished_at)
             VALUES (?, 't', 'o/r', '{\"x\":1}', 'failed', 1, 1)",
        )
        .bind(written)
        .execute(&store.pool)
        .await
        .unwrap();
        let job: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE delivery_id = ?")
            .bind(written)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let Retry::Queued(retry) = store.retry_job(JobId(job)).await.unwrap() else {
            panic!("the retry was refused");
        };
        let copy: i64 = sqlx::query_scalar("SELECT delivery_id FROM jobs WHERE id = ?")
            .bind(retry.0)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.delivery_payload(copy).await.unwrap(), body);
        // A damaged row: its length says more than its block holds.
        sqlx::query(
            "UPDATE delivery_payloads SET payload = X'FFFFFF7F' || substr(payload, 5) WHERE delivery_id = ?",
        )
        .bind(single)
        .execute(&store.pool)
        .await
        .unwrap();
        let e = format!("{:#}", store.delivery_payload(single).await.unwrap_err());
        assert!(
            e.contains(&format!("delivery {single}")) && e.contains("damaged"),
            "{e}"
        );
    }

    /// A write of the process waiting for its turn gets SQLite's lock between two of the delivery writer's
    /// batches, however closely they follow each other: under a flood of webhooks the dispatcher's matches
    /// go on. (Before the lock the two share, such a write slept in SQLite's busy handler and almost never
    /// found the lock free: 20 matches a second were recorded while 7,000 deliveries a second were stored.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_in_turn_is_not_starved_by_back_to_back_delivery_batches() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        const MATCHES: usize = 20;
        let (_dir, store) = store().await;
        let store = Arc::new(store);
        let mut rows = Vec::new();
        for i in 0..MATCHES {
            let Inserted::New(row) = store
                .insert_delivery(&delivery(&format!("m{i}")))
                .await
                .unwrap()
            else {
                panic!("not stored")
            };
            rows.push(row);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let batches = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let flood = tokio::spawn({
            let (store, stop, batches, started) = (
                store.clone(),
                stop.clone(),
                batches.clone(),
                started.clone(),
            );
            async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let batch = (0..8).map(|i| delivery(&format!("f{n}-{i}"))).collect();
                    store
                        .insert_delivery_batch(batch, Duration::ZERO)
                        .await
                        .unwrap();
                    n += 1;
                    batches.store(n, Ordering::SeqCst);
                    if n == 3 {
                        started.notify_one();
                    }
                }
            }
        });
        started.notified().await;
        let at_start = batches.load(Ordering::SeqCst);
        for row in &rows {
            store.record_match_explained(*row, &[], None).await.unwrap();
        }
        let during = batches.load(Ordering::SeqCst) - at_start;
        stop.store(true, Ordering::SeqCst);
        flood.await.unwrap();
        assert!(
            during < 10 * MATCHES,
            "{MATCHES} matches waited for {during} of the delivery writer's batches"
        );
    }

    #[tokio::test]
    async fn the_store_and_its_folder_are_private_to_the_service() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = store().await;
        store.insert_delivery(&delivery("d-private")).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let sub = dir.path().join("sub");
        assert_eq!(mode(&sub), 0o700);
        for file in ["n.db", "n.db-wal", "n.db-shm"] {
            assert_eq!(mode(&sub.join(file)), 0o600, "{file}");
        }
        // A store left readable by others (created before, or by hand) is narrowed when it is opened.
        let loose = dir.path().join("loose.db");
        std::fs::write(&loose, b"").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        SqliteStore::connect(&format!("sqlite://{}", loose.display()))
            .await
            .unwrap();
        assert_eq!(mode(&loose), 0o600);
    }

    // The store's behaviour (claims, leases, the outbox, ...) is tested against SQLite and Postgres alike
    // in `store/tests.rs`.
}
