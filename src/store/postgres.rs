//! The Postgres store, for several replicas on one database. Same semantics as the SQLite store
//! (`sqlite.rs`); jobs are claimed with `FOR UPDATE SKIP LOCKED`, and a concurrency group is held across
//! replicas by a transaction-scoped advisory lock on the group taken before its running jobs are counted.
//!
//! Replicas wake each other with LISTEN/NOTIFY: triggers in the database (migration 0004) NOTIFY
//! `nightshift_deliveries` when a delivery is stored and `nightshift_jobs` when a job becomes claimable, in
//! the writing transaction (delivered on commit, whoever wrote: a replica, the CLI); each replica LISTENs
//! ([`Store::wakeups`]). A schedule's tick is claimed by a compare-and-set ([`Store::fire_tick`]), and the
//! hourly cap is counted under a per-repository advisory lock in the claim's transaction, so both hold
//! across replicas.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};

use super::*;
use crate::now_ms;

pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "replay digests",
        include_str!("../../migrations/postgres/0002_replay.sql"),
    ),
    (
        3,
        "fair ops",
        include_str!("../../migrations/postgres/0003_fair_ops.sql"),
    ),
    (
        4,
        "wakeups",
        include_str!("../../migrations/postgres/0004_wakeups.sql"),
    ),
    (
        5,
        "installations",
        include_str!("../../migrations/postgres/0005_installations.sql"),
    ),
    (
        6,
        "match verdicts",
        include_str!("../../migrations/postgres/0006_match_verdicts.sql"),
    ),
    (
        7,
        "claim lanes",
        include_str!("../../migrations/postgres/0007_claim_lanes.sql"),
    ),
    (
        8,
        "spend by day",
        include_str!("../../migrations/postgres/0008_spend_by_day.sql"),
    ),
    (
        9,
        "dashboard sessions",
        include_str!("../../migrations/postgres/0009_dashboard_sessions.sql"),
    ),
    (
        10,
        "claim next",
        include_str!("../../migrations/postgres/0010_claim_next.sql"),
    ),
    (
        11,
        "claim pick",
        include_str!("../../migrations/postgres/0011_claim_pick.sql"),
    ),
    (
        12,
        "claim batch",
        include_str!("../../migrations/postgres/0012_claim_batch.sql"),
    ),
    (
        13,
        "wakeup sender",
        include_str!("../../migrations/postgres/0013_wakeup_sender.sql"),
    ),
    (
        14,
        "claim leases",
        include_str!("../../migrations/postgres/0014_claim_leases.sql"),
    ),
    (
        15,
        "sign-in states spent",
        include_str!("../../migrations/postgres/0015_signins_spent.sql"),
    ),
];

/// The channels the migration's triggers NOTIFY.
const DELIVERIES_CHANNEL: &str = "nightshift_deliveries";
const JOBS_CHANNEL: &str = "nightshift_jobs";

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

// Advisory-lock keys of concurrency groups (28275), repositories (28274: their hourly cap and
// `max_concurrent_per_repo`) and agent profiles (28272: `max_concurrent`) live in spaces of their own (the
// first key of the two-key form); the claim takes them in `nightshift_claim` (migration 0007).

pub struct PostgresStore {
    pub(super) pool: PgPool,
    /// How to reach the database again, for the listener's own connection.
    options: PgConnectOptions,
}

/// Stores a delivery on `conn` (alone, or in the caller's transaction).
async fn insert_delivery(conn: &mut sqlx::PgConnection, d: &NewDelivery) -> Result<Inserted> {
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
    .bind(&d.payload()[..])
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(row) => Inserted::New(row.try_get("id")?),
        None => Inserted::Duplicate,
    })
}

/// This store's `application_name`, which its deliveries' wake-ups carry (migration 0013): the URL's (or "nightshift"),
/// with a random tag of its own, so that its listener tells its own deliveries from other replicas'.
fn own_name(options: &PgConnectOptions) -> Result<String> {
    let mut tag = [0u8; 6];
    getrandom::getrandom(&mut tag).context("drawing the store's name")?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    // Postgres keeps 63 bytes of it.
    let given = options.get_application_name().unwrap_or("nightshift");
    let given = &given[..given.floor_char_boundary(48)];
    Ok(format!("{given} {tag}"))
}

/// LISTENs on a connection of its own and passes what it hears to `wake`, until `wake`'s receiver is
/// dropped. A lost connection is made again (with a pause while the database cannot be reached); every
/// time it is (re)made, both wakeups ring, for what was written while nobody listened.
async fn listen(options: PgConnectOptions, wake: tokio::sync::mpsc::Sender<Wakeup>) {
    let own = options
        .get_application_name()
        .unwrap_or_default()
        .to_owned();
    let ring = |what| {
        // A full channel already holds a wakeup the relay has not passed on: this one adds nothing.
        let _ = wake.try_send(what);
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    let mut pause = Duration::from_millis(100);
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener
                .listen_all([DELIVERIES_CHANNEL, JOBS_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = wake.closed() => return,
            listener = listening => match listener {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!("listening for other replicas' writes failed (polling meanwhile): {e}");
                    tokio::select! {
                        () = wake.closed() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        ring(Wakeup::Deliveries);
        ring(Wakeup::Jobs);
        loop {
            let heard = tokio::select! {
                () = wake.closed() => return,
                heard = listener.try_recv() => heard,
            };
            match heard {
                // A delivery this store stored: the process rang for it already (the ingest, a schedule).
                Ok(Some(notification))
                    if notification.channel() == DELIVERIES_CHANNEL
                        && notification.payload() == own =>
                {
                    pause = Duration::from_millis(100);
                }
                Ok(Some(notification)) => {
                    pause = Duration::from_millis(100);
                    match notification.channel() {
                        DELIVERIES_CHANNEL => ring(Wakeup::Deliveries),
                        JOBS_CHANNEL => ring(Wakeup::Jobs),
                        _ => {}
                    }
                }
                // The connection was lost and is made again (LISTENing again): what was written meanwhile
                // is found by looking.
                Ok(None) => {
                    tracing::warn!(
                        "the connection listening for other replicas' writes was lost; listening again"
                    );
                    ring(Wakeup::Deliveries);
                    ring(Wakeup::Jobs);
                }
                Err(e) => {
                    tracing::warn!(
                        "listening for other replicas' writes failed (polling meanwhile): {e}"
                    );
                    break;
                }
            }
        }
        drop(listener);
        tokio::select! {
            () = wake.closed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn write_deliveries(
    conn: &mut sqlx::PgConnection,
    batch: &[NewDelivery],
    replay_window: Duration,
) -> Result<Vec<Inserted>> {
    use super::batch::Answers;
    // Durable whatever the server's default: the answer (202) waits for the WAL flush. (Both statements
    // in one round trip.)
    let mut tx = conn
        .begin_with("BEGIN; SET LOCAL synchronous_commit = on")
        .await?;
    let now = now_ms();
    // The whole batch in one statement: one round trip, whatever its size.
    let ids: Vec<Cow<str>> = batch.iter().map(|d| text(&d.delivery_id.0)).collect();
    let rows = sqlx::query(
        "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, payload, received_at)
         SELECT d, e, a, r, i, p, $7
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::bytea[]) AS t(d, e, a, r, i, p)
         ON CONFLICT (delivery_id) DO NOTHING
         RETURNING delivery_id, id",
    )
    .bind(&ids)
    .bind(batch.iter().map(|d| text(&d.event)).collect::<Vec<_>>())
    .bind(batch.iter().map(|d| opt_text(&d.action)).collect::<Vec<_>>())
    .bind(batch.iter().map(|d| opt_text(&d.repo)).collect::<Vec<_>>())
    .bind(batch.iter().map(|d| d.installation_id).collect::<Vec<_>>())
    .bind(batch.iter().map(|d| &d.payload()[..]).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    // Rows are told apart by their stored id, which is the batch's id with any NUL replaced.
    let mut inserted = Vec::with_capacity(rows.len());
    for row in rows {
        inserted.push((row.try_get::<String, _>(0)?, row.try_get(1)?));
    }
    let mut answers = Answers::from_inserted(ids.iter().map(|id| id.as_ref()), inserted);
    if !replay_window.is_zero() {
        let cutoff = now.saturating_sub(ms(replay_window));
        sqlx::query("DELETE FROM delivery_digests WHERE received_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let (fresh, mut removed) = answers.digests(batch);
        // Another replica writing the same body waits on its row's lock, then sees it. An expired digest
        // another replica has not removed yet is taken over.
        let new: std::collections::HashSet<Vec<u8>> = sqlx::query_scalar(
            "INSERT INTO delivery_digests (body_sha256, delivery_id, received_at)
             SELECT b, d, $3 FROM UNNEST($1::bytea[], $2::text[]) AS t(b, d)
             ON CONFLICT (body_sha256) DO UPDATE
                 SET delivery_id = excluded.delivery_id, received_at = excluded.received_at
                 WHERE delivery_digests.received_at < $4
             RETURNING body_sha256",
        )
        .bind(fresh.iter().map(|f| &f.digest[..]).collect::<Vec<_>>())
        .bind(fresh.iter().map(|f| &ids[f.index]).collect::<Vec<_>>())
        .bind(now)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        for f in fresh.iter().filter(|f| !new.contains(&f.digest[..])) {
            let first: String = sqlx::query_scalar(
                "SELECT delivery_id FROM delivery_digests WHERE body_sha256 = $1",
            )
            .bind(&f.digest[..])
            .fetch_one(&mut *tx)
            .await?;
            removed.push(f.row);
            answers.replayed(f, DeliveryId(first));
        }
        if !removed.is_empty() {
            sqlx::query("DELETE FROM deliveries WHERE id = ANY($1)")
                .bind(&removed)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(answers.into_answers())
}

/// Connections of a store's pool.
const POOL: u32 = 8;

/// Group-commit batches written at once ([`Store::concurrent_batches`]): while one waits for its WAL flush,
/// the next is written, and Postgres flushes the commits that wait together once. The rest of the pool is
/// left to the dispatcher, the workers and the dashboard.
const CONCURRENT_BATCHES: usize = 3;

impl PostgresStore {
    /// Connects to `postgres://...` or `postgresql://...` and applies the migrations (sqlx takes an advisory
    /// lock, so replicas starting together migrate once).
    pub async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.clone().application_name(&own_name(&options)?);
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            // A COMMIT that failed (disk full, I/O error) can leave a connection inside a transaction as
            // sqlx counts it, and its rollback fails too; such a connection is closed, never handed out.
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect_with(options.clone())
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
        Ok(PostgresStore { pool, options })
    }

    /// One call of `nightshift_claim_batch` (migration 0012; the pick by index of 0011): the candidates
    /// picked in fair order, locked (skipped when another claim holds one), checked again under advisory
    /// locks against the repository's hourly cap, its concurrency group and the repository's and profile's
    /// running limits, and leased one to each of `owners` in that order, all in one statement (its own
    /// transaction). `Done(jobs)`: the jobs leased, in the order of `owners` (none: nothing to claim).
    /// `Again(passed)`: the first candidate was found over a limit after its locks were taken, and nothing was
    /// leased (a repository past its hourly cap has its queued jobs wait, with the reason); the call ends
    /// there so that a claim never waits for a lock while it holds another's, and the next call passes over
    /// `passed`.
    async fn claim_batch(
        &self,
        owners: &[String],
        policy: &ClaimPolicy,
        limits: &str,
        now: i64,
        passed: &[i64],
    ) -> Result<ClaimBatch> {
        let rows =
            sqlx::query("SELECT * FROM nightshift_claim_batch($1, $2, $3, $4, $5, $6::jsonb, $7)")
                .bind(now)
                .bind(owners.iter().map(|o| text(o)).collect::<Vec<_>>())
                .bind(now + ms(policy.lease))
                .bind(i64::from(policy.jobs_per_hour))
                .bind(policy.max_concurrent_per_repo.map(i64::from))
                .bind(limits)
                .bind(passed)
                .fetch_all(&self.pool)
                .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(id) = row.try_get::<Option<i64>, _>("o_id")? else {
                return Ok(ClaimBatch::Again(row.try_get("o_passed")?));
            };
            let owner: String = row.try_get("o_owner")?;
            // The function leases in the order of `owners`; a job leased to another owner than its place
            // says would be run under a name whose lease is not its own.
            anyhow::ensure!(
                owners.get(jobs.len()).map(|o| text(o)).as_deref() == Some(owner.as_str()),
                "job {id} was leased to {owner:?}, out of the order of the owners asked for"
            );
            jobs.push(ClaimedJob {
                id: JobId(id),
                delivery: row.try_get("o_delivery")?,
                delivery_id: DeliveryId(row.try_get("o_guid")?),
                trigger: row.try_get("o_trigger")?,
                repo: row.try_get("o_repo")?,
                spec: row.try_get("o_spec")?,
                attempt: row.try_get::<i64, _>("o_attempts")? as u32,
                retries: row.try_get::<i64, _>("o_retries")? as u32,
                result: row.try_get("o_result")?,
                cancel_requested: row.try_get("o_cancel_requested")?,
                queued_at: row.try_get("o_created_at")?,
                started_at: row.try_get("o_started_at")?,
            });
        }
        Ok(ClaimBatch::Done(jobs))
    }
}

/// What one call of `nightshift_claim_batch` did ([`PostgresStore::claim_batch`]).
enum ClaimBatch {
    Done(Vec<ClaimedJob>),
    Again(Vec<i64>),
}

/// A row of `id, delivery_id, event, repo` from `deliveries`.
fn stored_delivery(row: &sqlx::postgres::PgRow) -> Result<StoredDelivery> {
    Ok(StoredDelivery {
        id: row.try_get("id")?,
        delivery_id: DeliveryId(row.try_get("delivery_id")?),
        event: row.try_get("event")?,
        repo: row.try_get("repo")?,
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_delivery(&self, d: &NewDelivery) -> Result<Inserted> {
        let mut conn = self.pool.acquire().await?;
        insert_delivery(&mut conn, d).await
    }

    async fn unmatched_deliveries(&self, limit: u32) -> Result<Vec<StoredDelivery>> {
        let rows = sqlx::query(
            "SELECT id, delivery_id, event, repo FROM deliveries WHERE matched_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
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
        if jobs.is_empty() {
            // Most deliveries fire nothing: lost to a crash of the database's machine, such a mark is redone
            // by matching the delivery again, which fires nothing again. So its commit does not wait for the
            // WAL flush (the flush follows within wal_writer_delay; order is kept). One statement, its own
            // transaction, in one round trip: `set_config(.., true)` is `SET LOCAL`, in force at its commit.
            sqlx::query(
                "UPDATE deliveries SET matched_at = $1, verdicts = $2
                 FROM (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed
                 WHERE id = $3",
            )
            .bind(now_ms())
            .bind(verdicts.map(|v| text(&v.to_stored()).into_owned()))
            .bind(delivery)
            .execute(&self.pool)
            .await?;
            return Ok(0);
        }
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
        sqlx::query("UPDATE deliveries SET matched_at = $1, verdicts = $2 WHERE id = $3")
            .bind(now)
            .bind(verdicts.map(|v| text(&v.to_stored()).into_owned()))
            .bind(delivery)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn record_matches(&self, matches: &[Matched]) -> Result<Vec<usize>> {
        // The matches that fired nothing (most) are marked in one statement, not waiting for the WAL flush
        // (as in `record_match_explained`); each that fired jobs is recorded after them, in order, in a
        // transaction of its own. Marks stand for themselves: no job depends on them.
        let (ids, verdicts): (Vec<i64>, Vec<String>) = matches
            .iter()
            .filter(|m| m.jobs.is_empty())
            .map(|m| (m.delivery, text(&m.verdicts.to_stored()).into_owned()))
            .unzip();
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET matched_at = $1, verdicts = v.verdicts
                 FROM unnest($2::BIGINT[], $3::TEXT[]) AS v (id, verdicts),
                      (SELECT set_config('synchronous_commit', 'off', true)) AS unflushed
                 WHERE deliveries.id = v.id",
            )
            .bind(now_ms())
            .bind(&ids)
            .bind(&verdicts)
            .execute(&self.pool)
            .await?;
        }
        let mut queued = Vec::with_capacity(matches.len());
        for m in matches {
            queued.push(if m.jobs.is_empty() {
                0
            } else {
                self.record_match_explained(m.delivery, &m.jobs, Some(&m.verdicts))
                    .await?
            });
        }
        Ok(queued)
    }

    async fn claim_job(&self, owner: &str, policy: ClaimPolicy) -> Result<Option<ClaimedJob>> {
        let mut jobs = self.claim_jobs(&[owner.to_owned()], policy).await?;
        Ok(jobs.pop())
    }

    async fn claim_jobs(&self, owners: &[String], policy: ClaimPolicy) -> Result<Vec<ClaimedJob>> {
        let now = now_ms();
        let limits = policy.profile_limits_json();
        // Fair, as in the SQLite store: of each repository's oldest queued job its limits let start (and of
        // the jobs whose worker died, or whose delivery's wait is over), the one of the installation and the
        // repository with the fewest running jobs, then of the repository served least recently, then the
        // oldest; picked, locked, checked and leased in the server in one round trip for all the owners
        // (migrations 0010 to 0012). A first candidate found over a limit under its locks is passed over in a
        // new call.
        let mut passed: Vec<i64> = Vec::new();
        loop {
            match self
                .claim_batch(owners, &policy, &limits, now, &passed)
                .await?
            {
                ClaimBatch::Done(jobs) => return Ok(jobs),
                ClaimBatch::Again(more) => passed = more,
            }
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

    async fn delivery_payloads(&self, deliveries: &[i64]) -> Result<Vec<Vec<u8>>> {
        let rows = sqlx::query("SELECT id, payload FROM deliveries WHERE id = ANY($1)")
            .bind(deliveries)
            .fetch_all(&self.pool)
            .await?;
        let mut read = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            read.insert(
                row.try_get::<i64, _>("id")?,
                row.try_get::<Vec<u8>, _>("payload")?,
            );
        }
        in_order(deliveries, read)
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
             ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_delivery).collect()
    }

    async fn unmatched_in_lane(
        &self,
        head: &StoredDelivery,
        limit: u32,
    ) -> Result<Vec<StoredDelivery>> {
        // The unmatched-by-repository index, in order after the head (a NULL repository is a lane too; `=
        // and `IS NULL` apart, since `IS NOT DISTINCT FROM` uses no index).
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, delivery_id, event, repo FROM deliveries
             WHERE matched_at IS NULL AND {} AND id > $2 ORDER BY id LIMIT $3",
            if head.repo.is_some() {
                "repo = $1"
            } else {
                "repo IS NULL AND $1::text IS NULL"
            }
        )))
        .bind(&head.repo)
        .bind(head.id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_delivery).collect()
    }

    async fn cancel_job(&self, job: JobId, reason: &str) -> Result<Cancel> {
        let mut tx = self.pool.begin().await?;
        // Locked (waiting for a claim that holds it): the state read is the one changed.
        let row = sqlx::query(
            "SELECT state, (SELECT COUNT(*) FROM outputs o WHERE o.job_id = jobs.id) AS outputs
             FROM jobs WHERE id = $1 FOR UPDATE",
        )
        .bind(job.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Cancel::NoSuchJob);
        };
        let state = JobState::parse(row.try_get("state")?)?;
        let outputs: i64 = row.try_get("outputs")?;
        let reason = crate::redact::redact(reason);
        let done = match state {
            JobState::Queued if outputs == 0 => {
                sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', error = $1, finished_at = $2, next_attempt_at = NULL,
                            wait_reason = NULL
                     WHERE id = $3",
                )
                .bind(text(&reason))
                .bind(now_ms())
                .bind(job.0)
                .execute(&mut *tx)
                .await?;
                Cancel::Cancelled
            }
            JobState::Queued | JobState::Running => {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = TRUE, cancel_reason = $1,
                            next_attempt_at = CASE WHEN state = 'queued' THEN NULL ELSE next_attempt_at END
                     WHERE id = $2",
                )
                .bind(text(&reason))
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
            sqlx::query_scalar::<_, Option<String>>("SELECT cancel_reason FROM jobs WHERE id = $1")
                .bind(job.0)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    async fn retry_job(&self, job: JobId) -> Result<Retry> {
        let mut tx = self.pool.begin().await?;
        // Locked: two operators retrying at once make two retries with distinct numbers, never a clash.
        let row = sqlx::query(
            "SELECT j.state, j.spec, j.delivery_id, d.delivery_id AS guid, octet_length(d.payload) AS payload_len
             FROM jobs j JOIN deliveries d ON d.id = j.delivery_id WHERE j.id = $1 FOR UPDATE OF j",
        )
        .bind(job.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Retry::NoSuchJob);
        };
        let state = JobState::parse(row.try_get("state")?)?;
        let spec: String = row.try_get("spec")?;
        let refused = if !matches!(state, JobState::Failed | JobState::Cancelled) {
            Some(Retry::Refused(state))
        } else if !has_spec(&spec) {
            Some(Retry::NoSpec)
        } else if row.try_get::<i32, _>("payload_len")? == 0 {
            Some(Retry::PayloadPruned)
        } else {
            None
        };
        if let Some(refused) = refused {
            // Released before answering: a transaction only dropped is rolled back when its connection is
            // next used, and until then the row lock holds the job (a queued one: a claim would skip it
            // and take a younger job first).
            tx.rollback().await?;
            return Ok(refused);
        }
        let guid: String = row.try_get("guid")?;
        let delivery: i64 = row.try_get("delivery_id")?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE retried_from = $1")
            .bind(job.0)
            .fetch_one(&mut *tx)
            .await?;
        let now = now_ms();
        let copy: i64 = sqlx::query_scalar(
            "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, payload, received_at, matched_at)
             SELECT $1, event, action, repo, installation_id, payload, $2, $2 FROM deliveries WHERE id = $3
             RETURNING id",
        )
        .bind(text(&retry_delivery_id(&guid, job, n + 1)))
        .bind(now)
        .bind(delivery)
        .fetch_one(&mut *tx)
        .await?;
        let new: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (delivery_id, trigger_name, repo, spec, state, concurrency_group, created_at, retried_from)
             SELECT $1, trigger_name, repo, spec, 'queued', concurrency_group, $2, id FROM jobs WHERE id = $3
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
            sqlx::query_scalar::<_, Option<i64>>("SELECT retried_from FROM jobs WHERE id = $1")
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
        if dry_run {
            let rows = sqlx::query(
                "SELECT id, repo FROM jobs
                 WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1 ORDER BY id",
            )
            .bind(cut_jobs)
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                pruned
                    .jobs
                    .push((JobId(row.try_get("id")?), row.try_get("repo")?));
            }
            pruned.log_lines = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM job_logs l JOIN jobs j ON j.id = l.job_id
                 WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < $1
                   AND j.finished_at >= $2",
            )
            .bind(cut_logs)
            .bind(cut_jobs)
            .fetch_one(&self.pool)
            .await? as u64;
            let (whole, emptied): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*) FILTER (WHERE kept = 0),
                        COUNT(*) FILTER (WHERE kept > 0 AND unfinished = 0 AND octet_length(payload) > 0)
                 FROM (SELECT d.payload,
                              (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id
                                 AND NOT (j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < $1)) AS kept,
                              (SELECT COUNT(*) FROM jobs j WHERE j.delivery_id = d.id
                                 AND j.state IN ('queued', 'running', 'delivering')) AS unfinished
                       FROM deliveries d WHERE d.received_at < $2 AND d.matched_at IS NOT NULL) AS old",
            )
            .bind(cut_jobs)
            .bind(cut_payloads)
            .fetch_one(&self.pool)
            .await?;
            pruned.deliveries = whole as u64;
            pruned.payloads = emptied as u64;
            return Ok(pruned);
        }
        // In batches, each its own short transaction; rows another replica's prune holds are skipped (it
        // removes them), so replicas pruning at once neither wait nor fail.
        loop {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(
                "SELECT id, repo FROM jobs
                 WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(cut_jobs)
            .bind(PRUNE_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                ids.push(id);
                pruned.jobs.push((JobId(id), row.try_get("repo")?));
            }
            for sql in [
                "DELETE FROM outputs WHERE job_id = ANY($1)",
                "DELETE FROM job_logs WHERE job_id = ANY($1)",
                "DELETE FROM jobs WHERE id = ANY($1)",
            ] {
                sqlx::query(sql).bind(&ids).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        let batched = async |sql: &'static str, cut: i64| -> Result<u64> {
            let mut total = 0;
            loop {
                let done = sqlx::query(sql)
                    .bind(cut)
                    .bind(PRUNE_BATCH)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                total += done;
                if done == 0 {
                    return Ok(total);
                }
            }
        };
        pruned.log_lines = batched(
            "DELETE FROM job_logs WHERE id IN (
                 SELECT l.id FROM job_logs l JOIN jobs j ON j.id = l.job_id
                 WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_at < $1 LIMIT $2)",
            cut_logs,
        )
        .await?;
        pruned.deliveries = batched(
            "DELETE FROM deliveries WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.received_at < $1 AND d.matched_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id)
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cut_payloads,
        )
        .await?;
        pruned.payloads = batched(
            "UPDATE deliveries SET payload = ''::bytea WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.received_at < $1 AND d.matched_at IS NOT NULL AND octet_length(d.payload) > 0
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.delivery_id = d.id
                                   AND j.state IN ('queued', 'running', 'delivering'))
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            cut_payloads,
        )
        .await?;
        Ok(pruned)
    }

    async fn start_ticks(&self, schedule: &str, repo: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedule_ticks (schedule, repo, last_tick) VALUES ($1, $2, $3)
             ON CONFLICT (schedule, repo) DO NOTHING",
        )
        .bind(text(schedule))
        .bind(text(repo))
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
        let mut tx = self.pool.begin().await?;
        // The row is locked by the first claimant; a second waits, then sees the new tick and updates nothing.
        let claimed = sqlx::query(
            "INSERT INTO schedule_ticks (schedule, repo, last_tick) VALUES ($1, $2, $3)
             ON CONFLICT (schedule, repo) DO UPDATE SET last_tick = excluded.last_tick
             WHERE schedule_ticks.last_tick < excluded.last_tick",
        )
        .bind(text(schedule))
        .bind(text(repo))
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
        let (wake, wakeups) = tokio::sync::mpsc::channel(4);
        tokio::spawn(listen(self.options.clone(), wake));
        Some(wakeups)
    }

    async fn release_job(&self, job: JobId, owner: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE jobs
             SET state = CASE WHEN result IS NULL THEN 'queued' ELSE 'delivering' END,
                 attempts = attempts - CASE WHEN result IS NULL AND attempts > 0 THEN 1 ELSE 0 END,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_owner = $2 AND state IN ('running', 'delivering')",
        )
        .bind(job.0)
        .bind(text(owner))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
        replay_window: Duration,
    ) -> Result<Vec<Inserted>> {
        let mut conn = self.pool.acquire().await?;
        write_deliveries(&mut conn, batch, replay_window).await
    }

    fn concurrent_batches(&self) -> usize {
        CONCURRENT_BATCHES
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
            "{DELIVERY_RECORD} WHERE ($1::text IS NULL OR lower(repo) = lower($1)) AND ($2::text IS NULL OR event = $2)
               AND ($3::text IS NULL OR action = $3) AND id < COALESCE($5::bigint, 9223372036854775807)
               AND (NOT $6 OR (matched_at IS NOT NULL
                               AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.delivery_id = deliveries.id)))
             ORDER BY id DESC LIMIT $4"
        )))
        .bind(opt_text(&filter.repo))
        .bind(opt_text(&filter.event))
        .bind(opt_text(&filter.action))
        .bind(i64::from(filter.limit))
        .bind(filter.before)
        .bind(filter.fired_nothing)
        .fetch_all(&self.pool)
        .await?;
        self.delivery_records(rows).await
    }

    async fn delivery_record(&self, delivery_id: &str) -> Result<Option<DeliveryRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{DELIVERY_RECORD} WHERE delivery_id = $1"
        )))
        .bind(text(delivery_id))
        .fetch_all(&self.pool)
        .await?;
        Ok(self.delivery_records(rows).await?.pop())
    }

    async fn filtered_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{JOB_RECORD} WHERE ($1::text IS NULL OR j.state = $1) AND ($2::text IS NULL OR lower(j.repo) = lower($2))
               AND ($3::text IS NULL OR j.trigger_name = $3)
             ORDER BY j.id DESC LIMIT $4"
        )))
        .bind(filter.state.map(JobState::as_str))
        .bind(opt_text(&filter.repo))
        .bind(opt_text(&filter.trigger))
        .bind(i64::from(filter.limit))
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
            "SELECT id, stream, line FROM job_logs WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(job.0)
        .bind(after)
        .bind(i64::from(limit))
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
        insert_installed_repos(&mut tx, installation, repos).await?;
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
        // What was asked for a week ago is long out of GitHub's delivery log: forgotten, so the table stays
        // small.
        sqlx::query("DELETE FROM redeliveries WHERE asked_at < $1")
            .bind(now - REDELIVERIES_KEPT_MS)
            .execute(&self.pool)
            .await?;
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

    async fn spend_by_day(&self, since: i64) -> Result<Vec<DaySpend>> {
        // `usage` is written by `record_usage` only (serde_json of `Usage`: numbers or absent). SUM of
        // bigints is a numeric: cast back.
        let rows = sqlx::query(
            "SELECT (started_at / 86400000) * 86400000 AS day, repo, COUNT(*) AS jobs,
                    COALESCE(SUM((usage::jsonb ->> 'cost_usd')::float8), 0)::float8 AS cost,
                    COALESCE(SUM((usage::jsonb ->> 'input_tokens')::bigint), 0)::bigint AS input,
                    COALESCE(SUM((usage::jsonb ->> 'cached_input_tokens')::bigint), 0)::bigint AS cached,
                    COALESCE(SUM((usage::jsonb ->> 'output_tokens')::bigint), 0)::bigint AS output
             FROM jobs WHERE started_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
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

    async fn create_session(
        &self,
        id_hash: &str,
        session: &DashboardSession,
        now: i64,
        per_login: u32,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO dashboard_sessions (id_hash, login, admin, csrf, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(text(id_hash))
        .bind(text(&session.login))
        .bind(session.admin)
        .bind(text(&session.csrf))
        .bind(now)
        .bind(session.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM dashboard_sessions WHERE login = $1 AND id_hash NOT IN
               (SELECT id_hash FROM dashboard_sessions WHERE login = $1
                ORDER BY created_at DESC, id_hash LIMIT $2)",
        )
        .bind(text(&session.login))
        .bind(i64::from(per_login))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<DashboardSession>> {
        let row = sqlx::query(
            "SELECT login, admin, csrf, expires_at FROM dashboard_sessions
             WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(text(id_hash))
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
        sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
            .bind(text(id_hash))
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
        let mut tx = self.pool.begin().await?;
        let first = sqlx::query(
            "INSERT INTO dashboard_signins_spent (state_hash, expires_at) VALUES ($1, $2)
               ON CONFLICT (state_hash) DO NOTHING",
        )
        .bind(text(state_hash))
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        sqlx::query(
            "DELETE FROM dashboard_signins_spent WHERE expires_at <= $1 OR state_hash NOT IN
               (SELECT state_hash FROM dashboard_signins_spent ORDER BY expires_at DESC, state_hash LIMIT $2)",
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

impl PostgresStore {
    /// Deliveries' rows (of [`DELIVERY_RECORD`]) with their jobs.
    async fn delivery_records(&self, rows: Vec<PgRow>) -> Result<Vec<DeliveryRecord>> {
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
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let jobs = sqlx::query(
            "SELECT id, delivery_id, trigger_name, state, error FROM jobs
             WHERE delivery_id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
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

/// Adds `repos` to an installation's list (those listed already stay), inside the caller's transaction.
async fn insert_installed_repos(
    conn: &mut sqlx::PgConnection,
    installation: i64,
    repos: &[String],
) -> Result<()> {
    for repo in repos {
        sqlx::query(
            "INSERT INTO installation_repositories (installation_id, full_name) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(installation)
        .bind(text(repo))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Rows one retention batch removes (one short transaction each).
const PRUNE_BATCH: i64 = 500;
