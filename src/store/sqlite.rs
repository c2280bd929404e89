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
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};

use super::*;
use crate::now_ms;

const MIGRATIONS: &[(i64, &str, &str)] = &[
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

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
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
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*name),
                    MigrationType::Simple,
                    AssertSqlSafe(*sql).into_sql_str(),
                    WITHOUT_TRANSACTION.contains(version),
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .context("applying migrations")?;
        Ok(SqliteStore { pool })
    }
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

// Write transactions start with BEGIN IMMEDIATE: a deferred one that reads first and then writes fails at
// once with SQLITE_BUSY (no waiting) when another connection wrote in between.

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<Inserted> {
        let row = sqlx::query(
            "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, payload, received_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (delivery_id) DO NOTHING
             RETURNING id",
        )
        .bind(&d.delivery_id.0)
        .bind(&d.event)
        .bind(&d.action)
        .bind(&d.repo)
        .bind(d.installation_id)
        .bind(&d.payload)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => Inserted::New(row.try_get("id")?),
            None => Inserted::Duplicate,
        })
    }

    async fn unmatched_deliveries(&self, limit: u32) -> Result<Vec<StoredDelivery>> {
        let rows = sqlx::query(
            "SELECT id, delivery_id, event, repo FROM deliveries WHERE matched_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(StoredDelivery {
                    id: row.try_get("id")?,
                    delivery_id: DeliveryId(row.try_get("delivery_id")?),
                    event: row.try_get("event")?,
                    repo: row.try_get("repo")?,
                })
            })
            .collect()
    }

    async fn record_match(&self, delivery: i64, jobs: &[NewJob]) -> Result<usize> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = now_ms();
        let mut queued = 0;
        for job in jobs {
            let state = if job.error.is_some() {
                "failed"
            } else {
                "queued"
            };
            let exists =
                sqlx::query("SELECT 1 FROM jobs WHERE delivery_id = ? AND trigger_name = ?")
                    .bind(delivery)
                    .bind(&job.trigger)
                    .fetch_optional(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE concurrency_group = ? AND state = 'running'")
                    .bind(group)
                    .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await?;
            if job.error.is_none() {
                queued += 1;
            }
        }
        sqlx::query("UPDATE deliveries SET matched_at = ? WHERE id = ?")
            .bind(now)
            .bind(delivery)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn claim_job(&self, owner: &str, policy: ClaimPolicy) -> Result<Option<ClaimedJob>> {
        let now = now_ms();
        let hour = 3_600_000;
        // A repository past its jobs an hour: its queued jobs wait until the oldest start of the hour is an
        // hour old, and say why.
        sqlx::query(
            "UPDATE jobs
             SET next_attempt_at = (SELECT MIN(s.started_at) FROM jobs AS s
                                    WHERE s.repo = jobs.repo AND s.started_at >= ?1 - ?3) + ?3,
                 wait_reason = 'the repository started ' || ?2 || ' jobs in the last hour (max_jobs_per_hour)'
             WHERE state = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= ?1)
               AND (SELECT COUNT(*) FROM jobs AS s WHERE s.repo = jobs.repo AND s.started_at >= ?1 - ?3) >= ?2",
        )
        .bind(now)
        .bind(policy.jobs_per_hour)
        .bind(hour)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "UPDATE jobs
             SET state = CASE WHEN result IS NULL THEN 'running' ELSE 'delivering' END,
                 attempts = attempts + CASE WHEN result IS NULL THEN 1 ELSE 0 END,
                 started_at = CASE WHEN result IS NULL THEN ?3 ELSE started_at END,
                 lease_owner = ?1, lease_expires_at = ?2, next_attempt_at = NULL, wait_reason = NULL
             WHERE id = (SELECT id FROM jobs AS j
                         WHERE (j.state = 'queued'
                                AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= ?3)
                                AND (j.concurrency_group IS NULL
                                     OR NOT EXISTS (SELECT 1 FROM jobs AS r
                                                    WHERE r.concurrency_group = j.concurrency_group
                                                      AND r.state IN ('running', 'delivering'))))
                            OR (j.state = 'running' AND j.lease_expires_at < ?3)
                            OR (j.state = 'delivering'
                                AND (j.lease_owner IS NULL OR j.lease_expires_at < ?3)
                                AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= ?3))
                         ORDER BY j.id LIMIT 1)
             RETURNING id, delivery_id, trigger_name, repo, spec, attempts, retries, result, cancel_requested,
                       (SELECT d.delivery_id FROM deliveries d WHERE d.id = jobs.delivery_id) AS guid",
        )
        .bind(owner)
        .bind(now + ms(policy.lease))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
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
            })
        })
        .transpose()
    }

    async fn store_result(&self, job: JobId, owner: &str, result: &str) -> Result<bool> {
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
        let row = sqlx::query("SELECT payload FROM deliveries WHERE id = ?")
            .bind(delivery)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("payload")?)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(lease: Duration) -> ClaimPolicy {
        ClaimPolicy {
            lease,
            jobs_per_hour: 1000,
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/n.db", dir.path().display());
        let store = SqliteStore::connect(&url).await.unwrap();
        (dir, store)
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

    #[tokio::test]
    async fn a_repeated_delivery_is_stored_once() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn matching_is_recorded_once_and_jobs_are_claimed_in_order() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_each_start_counted() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn a_stored_result_is_delivered_without_running_the_agent_again() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn a_deferred_job_waits_with_its_reason_and_keeps_its_phase() {
        let (_dir, store) = store().await;
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
        sqlx::query("UPDATE jobs SET next_attempt_at = 0")
            .execute(&store.pool)
            .await
            .unwrap();
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

    #[tokio::test]
    async fn a_repository_past_its_jobs_an_hour_waits_and_says_why() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn a_concurrency_group_runs_one_job_at_a_time_and_can_cancel_the_rest() {
        let (_dir, store) = store().await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_for_each_other_instead_of_failing() {
        let (_dir, store) = store().await;
        let store = std::sync::Arc::new(store);
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

    #[tokio::test]
    async fn a_job_that_could_not_be_prepared_is_stored_failed() {
        let (_dir, store) = store().await;
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

    #[tokio::test]
    async fn logs_and_outputs_round_trip() {
        let (_dir, store) = store().await;
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
}
