//! The Postgres store, for several replicas on one database. Same semantics as the SQLite store
//! (`sqlite.rs`); jobs are claimed with `FOR UPDATE SKIP LOCKED`, and a concurrency group is held across
//! replicas by a transaction-scoped advisory lock on the group taken before its running jobs are counted.
//!
//! Not yet here (issue 11, item 3, later work): waking workers and dispatchers with LISTEN/NOTIFY (they
//! poll), and schedules that fire once per tick across replicas (`set_last_tick` only moves forward, but two
//! replicas can both read the old tick and both fire).

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};

use super::*;
use crate::now_ms;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        7,
        "installations",
        include_str!("../../migrations/postgres/0007_installations.sql"),
    ),
];

/// The columns of a [`JobRecord`]; `job_record` reads a row of it.
const JOB_RECORD: &str = "SELECT j.id, d.delivery_id AS guid, j.trigger_name, j.repo, j.state, j.attempts, \
     j.retries, j.wait_reason, j.next_attempt_at, j.error, j.usage, j.created_at, j.started_at, j.finished_at \
     FROM jobs j JOIN deliveries d ON d.id = j.delivery_id";

/// Postgres refuses a NUL character in TEXT (SQLite stores it). Every text written here can come from a
/// hostile payload or agent, so a NUL becomes U+FFFD instead of failing the write (and with it the job).
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn opt_text(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(text)
}

fn job_record(row: &PgRow) -> Result<JobRecord> {
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

fn output_row(row: &PgRow) -> Result<Output> {
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

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// Advisory-lock keys of concurrency groups live in their own space (the first key of the two-key form).
const GROUP_LOCK_SPACE: i32 = 0x6e73; // "ns"

pub struct PostgresStore {
    pub(super) pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://...` or `postgresql://...` and applies the migrations (sqlx takes an advisory
    /// lock, so replicas starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
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
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .context("applying migrations")?;
        Ok(PostgresStore { pool })
    }

    /// The cap on jobs a repository starts in an hour: its queued jobs past it wait, with the reason.
    async fn apply_hourly_cap(&self, now: i64, jobs_per_hour: u32) -> Result<()> {
        let hour: i64 = 3_600_000;
        let reason = format!(
            "the repository started {jobs_per_hour} jobs in the last hour (max_jobs_per_hour)"
        );
        // Rows are locked in id order (SKIP LOCKED: a row another claim holds is left for the next pass), so
        // two replicas doing this at once neither deadlock nor wait.
        sqlx::query(
            "WITH capped AS (
                 SELECT j.id FROM jobs j
                 WHERE j.state = 'queued' AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= $1)
                   AND (SELECT COUNT(*) FROM jobs s WHERE s.repo = j.repo AND s.started_at >= $1 - $3) >= $2
                 ORDER BY j.id
                 FOR UPDATE SKIP LOCKED)
             UPDATE jobs
             SET next_attempt_at = (SELECT MIN(s.started_at) FROM jobs s
                                    WHERE s.repo = jobs.repo AND s.started_at >= $1 - $3) + $3,
                 wait_reason = $4
             FROM capped WHERE jobs.id = capped.id",
        )
        .bind(now)
        .bind(i64::from(jobs_per_hour))
        .bind(hour)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<Inserted> {
        let row = sqlx::query(
            "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, payload, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (delivery_id) DO NOTHING
             RETURNING id",
        )
        .bind(text(&d.delivery_id.0))
        .bind(text(&d.event))
        .bind(opt_text(&d.action))
        .bind(opt_text(&d.repo))
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
            "SELECT id, delivery_id, event, repo FROM deliveries WHERE matched_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
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
        let mut tx = self.pool.begin().await?;
        // Two dispatchers matching the same delivery: the second waits here, then finds it matched.
        sqlx::query("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE")
            .bind(delivery)
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        let mut queued = 0;
        for job in jobs {
            let state = if job.error.is_some() {
                "failed"
            } else {
                "queued"
            };
            let exists =
                sqlx::query("SELECT 1 FROM jobs WHERE delivery_id = $1 AND trigger_name = $2")
                    .bind(delivery)
                    .bind(text(&job.trigger))
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
                    "UPDATE jobs SET state = 'cancelled', finished_at = $1,
                            error = 'replaced by a newer job of its concurrency group'
                     WHERE concurrency_group = $2 AND state = 'queued'",
                )
                .bind(now)
                .bind(text(group))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = TRUE WHERE concurrency_group = $1 AND state = 'running'",
                )
                .bind(text(group))
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO jobs (delivery_id, trigger_name, repo, spec, state, error, concurrency_group,
                                   created_at, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $5 = 'failed' THEN $8 END)
                 ON CONFLICT (delivery_id, trigger_name) DO NOTHING",
            )
            .bind(delivery)
            .bind(text(&job.trigger))
            .bind(text(&job.repo))
            .bind(text(&job.spec))
            .bind(state)
            .bind(opt_text(&job.error))
            .bind(opt_text(&job.concurrency_group))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if job.error.is_none() {
                queued += 1;
            }
        }
        sqlx::query("UPDATE deliveries SET matched_at = $1 WHERE id = $2")
            .bind(now)
            .bind(delivery)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn claim_job(&self, owner: &str, policy: ClaimPolicy) -> Result<Option<ClaimedJob>> {
        let now = now_ms();
        self.apply_hourly_cap(now, policy.jobs_per_hour).await?;
        // Candidates another claim found busy (its group started meanwhile) are passed over.
        let mut passed: Vec<i64> = Vec::new();
        loop {
            let mut tx = self.pool.begin().await?;
            let candidate = sqlx::query(
                "SELECT j.id, j.concurrency_group, j.state FROM jobs j
                 WHERE ((j.state = 'queued'
                         AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= $1)
                         AND (j.concurrency_group IS NULL
                              OR NOT EXISTS (SELECT 1 FROM jobs r
                                             WHERE r.concurrency_group = j.concurrency_group
                                               AND r.state IN ('running', 'delivering'))))
                        OR (j.state = 'running' AND j.lease_expires_at < $1)
                        OR (j.state = 'delivering'
                            AND (j.lease_owner IS NULL OR j.lease_expires_at < $1)
                            AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= $1)))
                   AND j.id <> ALL($2)
                 ORDER BY j.id LIMIT 1
                 FOR UPDATE OF j SKIP LOCKED",
            )
            .bind(now)
            .bind(&passed)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(candidate) = candidate else {
                return Ok(None);
            };
            let id: i64 = candidate.try_get("id")?;
            let group: Option<String> = candidate.try_get("concurrency_group")?;
            let state: String = candidate.try_get("state")?;
            if let (Some(group), "queued") = (&group, state.as_str()) {
                // Another replica may be claiming a job of the same group right now: the advisory lock orders
                // the two, and the count below (a new snapshot) sees what the first one committed.
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(GROUP_LOCK_SPACE)
                    .bind(group)
                    .execute(&mut *tx)
                    .await?;
                let busy: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE concurrency_group = $1
                                    AND state IN ('running', 'delivering'))",
                )
                .bind(group)
                .fetch_one(&mut *tx)
                .await?;
                if busy {
                    tx.rollback().await?;
                    passed.push(id);
                    continue;
                }
            }
            let row = sqlx::query(
                "UPDATE jobs
                 SET state = CASE WHEN result IS NULL THEN 'running' ELSE 'delivering' END,
                     attempts = attempts + CASE WHEN result IS NULL THEN 1 ELSE 0 END,
                     started_at = CASE WHEN result IS NULL THEN $3 ELSE started_at END,
                     lease_owner = $1, lease_expires_at = $2, next_attempt_at = NULL, wait_reason = NULL
                 WHERE id = $4
                 RETURNING id, delivery_id, trigger_name, repo, spec, attempts, retries, result, cancel_requested,
                           (SELECT d.delivery_id FROM deliveries d WHERE d.id = jobs.delivery_id) AS guid",
            )
            .bind(text(owner))
            .bind(now + ms(policy.lease))
            .bind(now)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let claimed = ClaimedJob {
                id: JobId(row.try_get("id")?),
                delivery: row.try_get("delivery_id")?,
                delivery_id: DeliveryId(row.try_get("guid")?),
                trigger: row.try_get("trigger_name")?,
                repo: row.try_get("repo")?,
                spec: row.try_get("spec")?,
                attempt: row.try_get::<i64, _>("attempts")? as u32,
                retries: row.try_get::<i64, _>("retries")? as u32,
                result: row.try_get("result")?,
                cancel_requested: row.try_get("cancel_requested")?,
            };
            tx.commit().await?;
            return Ok(Some(claimed));
        }
    }

    async fn store_result(&self, job: JobId, owner: &str, result: &str) -> Result<bool> {
        let redacted = crate::redact::redact(result);
        let done = sqlx::query(
            "UPDATE jobs SET state = 'delivering', result = $1
             WHERE id = $2 AND lease_owner = $3 AND state IN ('running', 'delivering')",
        )
        .bind(text(&redacted))
        .bind(job.0)
        .bind(text(owner))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn defer_job(&self, job: JobId, owner: &str, until: i64, reason: &str) -> Result<bool> {
        let redacted = crate::redact::redact(reason);
        let done = sqlx::query(
            "UPDATE jobs
             SET state = CASE WHEN result IS NULL THEN 'queued' ELSE 'delivering' END,
                 attempts = attempts - CASE WHEN result IS NULL AND attempts > 0 THEN 1 ELSE 0 END,
                 retries = retries + 1, next_attempt_at = $1, wait_reason = $2,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $3 AND lease_owner = $4 AND state IN ('running', 'delivering')",
        )
        .bind(until)
        .bind(text(&redacted))
        .bind(job.0)
        .bind(text(owner))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew_lease(&self, job: JobId, owner: &str, lease: Duration) -> Result<Lease> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1
             WHERE id = $2 AND lease_owner = $3 AND state IN ('running', 'delivering')
             RETURNING cancel_requested",
        )
        .bind(now_ms() + ms(lease))
        .bind(job.0)
        .bind(text(owner))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => Lease::Lost,
            Some(row) if row.try_get::<bool, _>("cancel_requested")? => Lease::CancelRequested,
            Some(_) => Lease::Held,
        })
    }

    async fn finish_job(&self, job: JobId, owner: &str, ending: Ending<'_>) -> Result<bool> {
        let (state, error) = match ending {
            Ending::Succeeded => ("succeeded", None),
            Ending::Failed(e) => ("failed", Some(e)),
            Ending::Cancelled(e) => ("cancelled", Some(e)),
        };
        let error = error.map(crate::redact::redact);
        let result = sqlx::query(
            "UPDATE jobs SET state = $1, error = $2, finished_at = $3, lease_owner = NULL,
                    lease_expires_at = NULL, next_attempt_at = NULL, wait_reason = NULL
             WHERE id = $4 AND lease_owner = $5 AND state IN ('running', 'delivering')",
        )
        .bind(state)
        .bind(error.as_deref().map(text))
        .bind(now_ms())
        .bind(job.0)
        .bind(text(owner))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn append_log(&self, job: JobId, stream: LogStream, lines: &[String]) -> Result<()> {
        // Known secrets never reach the log (crate::redact), nor do terminal escapes; one statement.
        let clean: Vec<String> = lines
            .iter()
            .map(|line| {
                let line = crate::redact::redact(line);
                text(&crate::redact::printable(&line)).into_owned()
            })
            .collect();
        sqlx::query(
            "INSERT INTO job_logs (job_id, at, stream, line)
             SELECT $1, $2, $3, line FROM UNNEST($4::text[]) WITH ORDINALITY AS l (line, n) ORDER BY n",
        )
        .bind(job.0)
        .bind(now_ms())
        .bind(stream.as_str())
        .bind(&clean)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job_log(&self, job: JobId) -> Result<Vec<LogLine>> {
        let rows = sqlx::query("SELECT stream, line FROM job_logs WHERE job_id = $1 ORDER BY id")
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
        let row = sqlx::query("SELECT payload FROM deliveries WHERE id = $1")
            .bind(delivery)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("payload")?)
    }

    async fn find_output(&self, job: JobId, key: &str) -> Result<Option<Output>> {
        let row = sqlx::query(
            "SELECT kind, key, url, github_id, state FROM outputs WHERE job_id = $1 AND key = $2",
        )
        .bind(job.0)
        .bind(text(key))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(output_row).transpose()
    }

    async fn record_output(&self, job: JobId, output: &Output) -> Result<()> {
        sqlx::query(
            "INSERT INTO outputs (job_id, kind, key, url, github_id, state, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (job_id, key) DO UPDATE
             SET kind = excluded.kind, url = excluded.url, github_id = excluded.github_id, state = excluded.state",
        )
        .bind(job.0)
        .bind(text(&output.kind))
        .bind(text(&output.key))
        .bind(opt_text(&output.url))
        .bind(output.github_id.map(|id| id as i64))
        .bind(if output.pending { "pending" } else { "done" })
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_push(&self, repo: &str, branch: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT sha FROM pushes WHERE repo = $1 AND branch = $2")
            .bind(text(repo))
            .bind(text(branch))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("sha")).transpose()?)
    }

    async fn record_push(&self, repo: &str, branch: &str, sha: &str, job: JobId) -> Result<()> {
        sqlx::query(
            "INSERT INTO pushes (repo, branch, sha, job_id, pushed_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (repo, branch) DO UPDATE
             SET sha = excluded.sha, job_id = excluded.job_id, pushed_at = excluded.pushed_at",
        )
        .bind(text(repo))
        .bind(text(branch))
        .bind(text(sha))
        .bind(job.0)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_output(&self, job: JobId, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM outputs WHERE job_id = $1 AND key = $2")
            .bind(job.0)
            .bind(text(key))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outputs(&self, job: JobId) -> Result<Vec<Output>> {
        let rows = sqlx::query(
            "SELECT kind, key, url, github_id, state FROM outputs WHERE job_id = $1 ORDER BY id",
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
            "SELECT * FROM ({JOB_RECORD} ORDER BY j.id DESC LIMIT $1) AS recent ORDER BY id"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_record).collect()
    }

    async fn job(&self, job: JobId) -> Result<Option<JobRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("{JOB_RECORD} WHERE j.id = $1")))
            .bind(job.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_record).transpose()
    }

    async fn job_spec(&self, job: JobId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT spec FROM jobs WHERE id = $1")
            .bind(job.0)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn record_usage(&self, job: JobId, usage: &Usage) -> Result<()> {
        let usage = serde_json::to_string(usage)?;
        sqlx::query("UPDATE jobs SET usage = $1 WHERE id = $2")
            .bind(text(&usage))
            .bind(job.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn spend_since(&self, repo: &str, since: i64) -> Result<f64> {
        // `usage` is written by `record_usage` only (serde_json of `Usage`: `cost_usd` is a number or absent).
        let spent: Option<f64> = sqlx::query_scalar(
            "SELECT SUM((usage::jsonb ->> 'cost_usd')::float8) FROM jobs
             WHERE repo = $1 AND started_at >= $2 AND usage IS NOT NULL",
        )
        .bind(text(repo))
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(spent.unwrap_or(0.0))
    }

    async fn upsert_repository(&self, repo: &KnownRepo) -> Result<()> {
        sqlx::query(
            "INSERT INTO repositories (full_name, installation_id, clone_url, default_branch, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (full_name) DO UPDATE SET
                installation_id = COALESCE(excluded.installation_id, repositories.installation_id),
                clone_url = excluded.clone_url, default_branch = excluded.default_branch,
                updated_at = excluded.updated_at",
        )
        .bind(text(&repo.full_name))
        .bind(repo.installation_id)
        .bind(text(&repo.clone_url))
        .bind(text(&repo.default_branch))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn repositories(&self) -> Result<Vec<KnownRepo>> {
        let rows = sqlx::query(
            "SELECT full_name, installation_id, clone_url, default_branch FROM repositories
             ORDER BY full_name COLLATE \"C\"",
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
        Ok(sqlx::query_scalar(
            "SELECT last_tick FROM schedule_ticks WHERE schedule = $1 AND repo = $2",
        )
        .bind(text(schedule))
        .bind(text(repo))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn set_last_tick(&self, schedule: &str, repo: &str, tick: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, repo, last_tick) VALUES ($1, $2, $3)
             ON CONFLICT (schedule, repo) DO UPDATE
             SET last_tick = GREATEST(schedule_ticks.last_tick, excluded.last_tick)",
        )
        .bind(text(schedule))
        .bind(text(repo))
        .bind(tick)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delivery_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    async fn upsert_installation(&self, i: &Installation) -> Result<()> {
        sqlx::query(
            "INSERT INTO installations (id, account, suspended, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET account = excluded.account, suspended = excluded.suspended,
                updated_at = excluded.updated_at",
        )
        .bind(i.id)
        .bind(text(&i.account))
        .bind(i.suspended)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_installation(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM installations WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for repo in repos {
            sqlx::query(
                "INSERT INTO installation_repositories (installation_id, full_name) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(installation)
            .bind(text(repo))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for repo in repos {
            sqlx::query(
                "DELETE FROM installation_repositories
                 WHERE installation_id = $1 AND lower(full_name) = lower($2)",
            )
            .bind(installation)
            .bind(text(repo))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn replace_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM installation_repositories WHERE installation_id = $1")
            .bind(installation)
            .execute(&mut *tx)
            .await?;
        for repo in repos {
            sqlx::query(
                "INSERT INTO installation_repositories (installation_id, full_name) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )
            .bind(installation)
            .bind(text(repo))
            .execute(&mut *tx)
            .await?;
        }
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
            "SELECT delivery_id FROM deliveries WHERE delivery_id IN (SELECT unnest($1::text[]))",
        )
        .bind(ids.iter().map(|s| text(s).into_owned()).collect::<Vec<_>>())
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
        let done = sqlx::query(
            "INSERT INTO redeliveries (delivery_id, asked_at) VALUES ($1, $2)
             ON CONFLICT (delivery_id) DO UPDATE SET asked_at = excluded.asked_at
             WHERE redeliveries.asked_at <= $3",
        )
        .bind(text(delivery_id))
        .bind(now)
        .bind(now - window)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn try_lease(&self, name: &str, owner: &str, now: i64, until: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO task_leases (name, owner, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
             WHERE task_leases.owner = excluded.owner OR task_leases.expires_at < $4",
        )
        .bind(text(name))
        .bind(text(owner))
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
