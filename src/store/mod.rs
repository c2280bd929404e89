//! Durable state: webhook deliveries, jobs (state, attempts, lease), job log lines and outputs.
//!
//! One interface, [`Store`], chosen by URL in [`open`]. The SQLite implementation serves one process; the
//! interface is what a Postgres implementation for several replicas satisfies too: every operation that must
//! be atomic (claiming a job, recording a match) is one call here, never a read-then-write in the caller.

mod batch;
mod payload;
mod postgres;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::ids::{DeliveryId, JobId};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A verified delivery, as it will be stored.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub action: Option<String>,
    pub repo: Option<String>,
    pub installation_id: Option<i64>,
    /// The body exactly as signed; shared, not copied, by the writer and the dispatcher.
    payload: bytes::Bytes,
    /// The body's SHA-256 (replay protection), worked out once.
    digest: std::sync::OnceLock<[u8; 32]>,
    /// The body packed as the SQLite store keeps it ([`payload::pack`]), worked out once.
    packed: std::sync::OnceLock<Vec<u8>>,
}

impl NewDelivery {
    pub fn new(
        delivery_id: DeliveryId,
        event: String,
        action: Option<String>,
        repo: Option<String>,
        installation_id: Option<i64>,
        payload: bytes::Bytes,
    ) -> NewDelivery {
        NewDelivery {
            delivery_id,
            event,
            action,
            repo,
            installation_id,
            payload,
            digest: Default::default(),
            packed: Default::default(),
        }
    }

    /// The body exactly as signed.
    pub fn payload(&self) -> &bytes::Bytes {
        &self.payload
    }

    /// The body's SHA-256.
    pub fn digest(&self) -> &[u8; 32] {
        use sha2::Digest;
        self.digest
            .get_or_init(|| sha2::Sha256::digest(&self.payload).into())
    }

    /// The body packed ([`payload::pack`]).
    pub(crate) fn packed(&self) -> &[u8] {
        self.packed.get_or_init(|| payload::pack(&self.payload))
    }

    /// Works out now, on the caller's task, what the store's single writer will need of this delivery: its
    /// digest when `digest` (a replay window is on), its packed body when `store` packs payloads. The
    /// webhook handler calls this before handing the delivery over, so that this work runs in parallel
    /// across requests instead of one after another in the writer.
    pub fn prepare(&self, store: &dyn Store, digest: bool) {
        if digest {
            self.digest();
        }
        if store.packs_payloads() {
            self.packed();
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now; the row id.
    New(i64),
    /// The same `X-GitHub-Delivery` was stored before; nothing was written.
    Duplicate,
    /// The same body was stored under another delivery id within the replay window (a captured, signed
    /// body sent again); nothing was written.
    Replayed { first: DeliveryId },
}

/// A stored delivery that triggers have not been matched against yet.
#[derive(Clone, Debug)]
pub struct StoredDelivery {
    pub id: i64,
    pub delivery_id: DeliveryId,
    pub event: String,
    /// The repository's full name, when the event has one.
    pub repo: Option<String>,
}

/// The values of `by_id` in the order of `ids` (a batch read back in the order asked); an id that has none
/// is an error, never another's value.
fn in_order<T>(ids: &[i64], mut by_id: std::collections::HashMap<i64, T>) -> Result<Vec<T>> {
    ids.iter()
        .map(|id| {
            by_id
                .remove(id)
                .with_context(|| format!("no delivery {id} in the store"))
        })
        .collect()
}

/// A delivery matched: the jobs it fired and why the other triggers did not ([`Store::record_matches`]).
#[derive(Clone, Debug)]
pub struct Matched {
    pub delivery: i64,
    pub jobs: Vec<NewJob>,
    pub verdicts: Verdicts,
}

/// A job produced by matching a delivery.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub trigger: String,
    pub repo: String,
    /// The rendered job (JSON), frozen at match time.
    pub spec: String,
    /// Set when the job could not even be prepared (e.g. its prompt failed to render): it is stored as
    /// failed with this error, so the user can see why nothing ran.
    pub error: Option<String>,
    /// Jobs of one group run one at a time, in the order they were queued.
    pub concurrency_group: Option<String>,
    /// Queuing this job cancels the group's queued jobs and asks its running one to stop.
    pub cancel_in_progress: bool,
}

/// What renewing a lease found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    Held,
    /// The job is no longer ours (its lease expired and another worker took it, or it ended).
    Lost,
    /// A newer job of its concurrency group asked it to stop.
    CancelRequested,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending<'a> {
    Succeeded,
    Failed(&'a str),
    Cancelled(&'a str),
}

/// A job a worker holds a lease on.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub id: JobId,
    pub delivery: i64,
    pub delivery_id: DeliveryId,
    pub trigger: String,
    pub repo: String,
    pub spec: String,
    /// Starts of the agent: 1 on the first run; more when a previous run died (lease expired).
    pub attempt: u32,
    /// Times the job was put back to wait after a transient failure.
    pub retries: u32,
    /// The stored result when the agent already ran (the job is `delivering`): only delivery is left.
    pub result: Option<String>,
    /// A newer job of its concurrency group asked it to stop (while its worker was away).
    pub cancel_requested: bool,
    /// When it was queued, and first started (Unix ms): for the queue wait and duration in `/metrics`.
    pub queued_at: i64,
    pub started_at: Option<i64>,
}

/// How [`Store::claim_job`] and [`Store::claim_jobs`] lease jobs.
#[derive(Clone, Debug)]
pub struct ClaimPolicy {
    pub lease: Duration,
    /// The most jobs one repository starts in an hour; past it, its queued jobs wait (with the reason).
    pub jobs_per_hour: u32,
    /// The most jobs of one repository running at once (across replicas); `None`: no cap of its own.
    pub max_concurrent_per_repo: Option<u32>,
    /// The most jobs of an agent profile running at once (across replicas), by profile name.
    pub max_concurrent: Arc<std::collections::BTreeMap<String, u32>>,
}

impl ClaimPolicy {
    /// A lease and an hourly cap, with no concurrency limits.
    pub fn new(lease: Duration, jobs_per_hour: u32) -> Self {
        ClaimPolicy {
            lease,
            jobs_per_hour,
            max_concurrent_per_repo: None,
            max_concurrent: Arc::default(),
        }
    }

    /// The per-profile limits as a JSON object (`{"claude": 2}`), as the claim queries read them.
    fn profile_limits_json(&self) -> String {
        serde_json::to_string(&*self.max_concurrent).unwrap_or_else(|_| "{}".into())
    }

    /// The per-repository cap as the claim queries read it (no cap: the largest count).
    fn repo_limit(&self) -> i64 {
        self.max_concurrent_per_repo.map_or(i64::MAX, i64::from)
    }
}

/// What [`Store::cancel_job`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    NoSuchJob,
    /// The job was queued and nothing of it is on GitHub: it is cancelled now.
    Cancelled,
    /// The job is running (or waits with a progress comment posted): its worker stops it and delivers
    /// "cancelled".
    Requested,
    /// The job is in a state where cancelling makes no sense (it ended, or only its delivery is left).
    Refused(JobState),
}

/// What [`Store::retry_job`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    NoSuchJob,
    /// A new job with the same frozen spec is queued.
    Queued(JobId),
    /// Only a failed or cancelled job is retried.
    Refused(JobState),
    /// The job could not even be prepared (it has no spec to run again).
    NoSpec,
    /// Its event's payload was removed by retention (`prune.payloads`).
    PayloadPruned,
}

/// What retention keeps: finished jobs' logs, finished jobs (with their outputs), and deliveries' payloads
/// for this long after they ended or arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrunePolicy {
    pub payloads: Duration,
    pub logs: Duration,
    pub jobs: Duration,
}

/// What [`Store::prune`] removed (or, on a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Finished jobs removed with their logs and outputs: id and repository (to remove their folders).
    pub jobs: Vec<(JobId, String)>,
    /// Log lines of kept finished jobs removed.
    pub log_lines: u64,
    /// Deliveries removed whole (no job of theirs is left).
    pub deliveries: u64,
    /// Deliveries whose payload was emptied (their jobs are kept).
    pub payloads: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    /// The agent's result is stored; its outputs are being posted.
    Delivering,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Delivering => "delivering",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "delivering" => JobState::Delivering,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => bail!("unknown job state `{other}` in the store"),
        })
    }
}

/// A job as stored (for `nightshift jobs`, and tests).
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub delivery_id: DeliveryId,
    pub trigger: String,
    pub repo: String,
    pub state: JobState,
    pub attempts: u32,
    /// Times it was put back to wait after a transient failure.
    pub retries: u32,
    /// Why it waits, and until when (unix ms), when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the agent spent, when its backend reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Unix milliseconds: queued, last started, ended.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// What an agent run spent, as its backend reported it. Every field is optional: a command agent reports
/// nothing, Codex reports tokens but no cost, Claude Code reports turns, tokens and cost.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model round trips (Claude Code's `num_turns`; requests for a model endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Input tokens served from the provider's prompt cache (a part of `input_tokens` or on top, as the
    /// backend counts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(model) = &self.model {
            parts.push(model.clone());
        }
        if let Some(turns) = self.turns {
            parts.push(format!("{turns} turn{}", if turns == 1 { "" } else { "s" }));
        }
        if let Some(input) = self.input_tokens {
            match self.cached_input_tokens {
                Some(cached) if cached > 0 => {
                    parts.push(format!("{input} input tokens ({cached} cached)"))
                }
                _ => parts.push(format!("{input} input tokens")),
            }
        }
        if let Some(output) = self.output_tokens {
            parts.push(format!("{output} output tokens"));
        }
        if let Some(cost) = self.cost_usd {
            parts.push(format!("${cost:.4}"));
        }
        if parts.is_empty() {
            return f.write_str("nothing reported");
        }
        f.write_str(&parts.join(", "))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// nightshift's own notes about the job (what it did, why it failed).
    Nightshift,
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Nightshift => "nightshift",
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub stream: String,
    pub line: String,
}

/// Something a job delivered to GitHub (or is about to: `pending`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub kind: String,
    pub key: String,
    pub url: Option<String>,
    /// GitHub's id (a comment's or check run's id, a pull request's or issue's number), to update it.
    pub github_id: Option<u64>,
    /// Recorded before the call that creates it: that call may or may not have happened.
    pub pending: bool,
}

/// A repository nightshift knows from its deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownRepo {
    pub full_name: String,
    pub installation_id: Option<i64>,
    pub clone_url: String,
    pub default_branch: String,
}

/// An installation of the GitHub App, as nightshift last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    pub id: i64,
    /// The user or organization it is installed on.
    pub account: String,
    /// A suspended installation cannot act: its repositories are left out of [`Store::installed_repos`].
    pub suspended: bool,
}

/// A repository an installation gives nightshift access to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledRepo {
    /// As GitHub spells it.
    pub full_name: String,
    pub installation_id: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a delivery and commits it. A repeated delivery id stores nothing and says so.
    async fn insert_delivery(&self, delivery: &NewDelivery) -> Result<Inserted>;

    /// Deliveries not yet matched against triggers, oldest first.
    async fn unmatched_deliveries(&self, limit: u32) -> Result<Vec<StoredDelivery>>;

    /// In one transaction: creates the jobs (a job that already exists for this delivery and trigger is kept
    /// as it is), cancels what `cancel_in_progress` jobs replace, and marks the delivery matched. Returns how
    /// many jobs were queued.
    async fn record_match(&self, delivery: i64, jobs: &[NewJob]) -> Result<usize>;

    /// Takes the oldest queued job whose concurrency group has no running job, or a running job whose lease
    /// expired (its worker died), and leases it to `owner`. Jobs whose lease expired after `max_attempts`
    /// starts are failed instead of taken.
    ///
    /// Also takes a `delivering` job nobody holds whose wait is over (only its delivery is left: the result
    /// comes with it), and skips queued jobs still waiting (`next_attempt_at`). A repository that started
    /// `jobs_per_hour` jobs in the last hour has its queued jobs wait, with the reason. The attempt count
    /// (agent starts) is for the worker to judge: a job past its attempts is returned like any other.
    async fn claim_job(&self, owner: &str, policy: ClaimPolicy) -> Result<Option<ClaimedJob>>;

    /// Claims for several idle workers at once ([`claim_job`](Store::claim_job)'s rules for each): leases up
    /// to one job to each of `owners`, in their order (the i-th job returned is leased to `owners[i]`); fewer
    /// when fewer may start now. The workers of one process share their claims this way
    /// (`queue::claims`), so the store reads its fair order once for them all.
    async fn claim_jobs(&self, owners: &[String], policy: ClaimPolicy) -> Result<Vec<ClaimedJob>> {
        let mut jobs = Vec::new();
        for owner in owners {
            match self.claim_job(owner, policy.clone()).await? {
                Some(job) => jobs.push(job),
                None => break,
            }
        }
        Ok(jobs)
    }

    /// Extends the lease, and says whether the job was asked to stop.
    async fn renew_lease(&self, job: JobId, owner: &str, lease: Duration) -> Result<Lease>;

    /// The outbox: stores how the agent's run ended (`result`, JSON) and moves the job we hold to
    /// `delivering`, in one transaction. False when the job is no longer ours.
    async fn store_result(&self, job: JobId, owner: &str, result: &str) -> Result<bool>;

    /// Puts a job we hold back to wait until `until` (unix ms) with the reason, releasing it: `queued` when
    /// its agent has not run (the start is not counted), still `delivering` when it has. False when the job
    /// is no longer ours.
    async fn defer_job(&self, job: JobId, owner: &str, until: i64, reason: &str) -> Result<bool>;

    /// Ends a job we hold; false when the job is no longer ours (nothing is written then).
    async fn finish_job(&self, job: JobId, owner: &str, ending: Ending<'_>) -> Result<bool>;

    async fn append_log(&self, job: JobId, stream: LogStream, lines: &[String]) -> Result<()>;

    async fn job_log(&self, job: JobId) -> Result<Vec<LogLine>>;

    async fn delivery_payload(&self, delivery: i64) -> Result<Vec<u8>>;

    /// [`Store::delivery_payload`] of several deliveries at once (a lane's backlog), in their order: one
    /// read instead of one each.
    async fn delivery_payloads(&self, deliveries: &[i64]) -> Result<Vec<Vec<u8>>> {
        let mut payloads = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            payloads.push(self.delivery_payload(*delivery).await?);
        }
        Ok(payloads)
    }

    async fn find_output(&self, job: JobId, key: &str) -> Result<Option<Output>>;

    /// Records an output (`pending` before the call that creates it, done after), replacing what was
    /// recorded under its key.
    async fn record_output(&self, job: JobId, output: &Output) -> Result<()>;

    /// What nightshift last pushed to `branch` of `repo`.
    async fn last_push(&self, repo: &str, branch: &str) -> Result<Option<String>>;

    /// Records a push by job `job`.
    async fn record_push(&self, repo: &str, branch: &str, sha: &str, job: JobId) -> Result<()>;

    /// Forgets an output (it is gone from GitHub and will be created again).
    async fn delete_output(&self, job: JobId, key: &str) -> Result<()>;

    /// Every output the job recorded.
    async fn outputs(&self, job: JobId) -> Result<Vec<Output>>;

    async fn jobs(&self) -> Result<Vec<JobRecord>>;

    /// The newest `limit` jobs, oldest first.
    async fn recent_jobs(&self, limit: u32) -> Result<Vec<JobRecord>>;

    async fn job(&self, job: JobId) -> Result<Option<JobRecord>>;
    /// A job's frozen spec (JSON), as matched.
    async fn job_spec(&self, job: JobId) -> Result<Option<String>>;

    /// Records what the job's agent spent.
    async fn record_usage(&self, job: JobId, usage: &Usage) -> Result<()>;
    /// Dollars spent by `repo`'s jobs started since `since` (unix ms), from their recorded usage (the model
    /// gateway keeps it current while a job runs).
    async fn spend_since(&self, repo: &str, since: i64) -> Result<f64>;

    /// Records (or refreshes) what a delivery said about its repository.
    async fn upsert_repository(&self, repo: &KnownRepo) -> Result<()>;

    async fn repositories(&self) -> Result<Vec<KnownRepo>>;

    /// When `schedule` last ticked for `repo`.
    async fn last_tick(&self, schedule: &str, repo: &str) -> Result<Option<i64>>;

    /// Records a tick; only ever moves forward.
    async fn set_last_tick(&self, schedule: &str, repo: &str, tick: i64) -> Result<()>;

    async fn delivery_count(&self) -> Result<u64>;

    /// The oldest unmatched delivery of each repository (events about none count as one repository),
    /// oldest first: one repository's backlog never hides another's.
    async fn unmatched_heads(&self, limit: u32) -> Result<Vec<StoredDelivery>>;

    /// The unmatched deliveries of `head`'s repository (of none, when it is about none) after `head`, oldest
    /// first, at most `limit`: what the dispatcher matches after `head` in that repository's lane.
    async fn unmatched_in_lane(
        &self,
        head: &StoredDelivery,
        limit: u32,
    ) -> Result<Vec<StoredDelivery>>;

    /// Cancels a job for an operator (`reason` is what the job says): a queued one at once, a running one
    /// by asking its worker to stop.
    async fn cancel_job(&self, job: JobId, reason: &str) -> Result<Cancel>;

    /// Why an operator asked the job to stop, when one did.
    async fn cancel_reason(&self, job: JobId) -> Result<Option<String>>;

    /// Queues a failed or cancelled job again as a new job with the same frozen spec (`retried_from` it).
    async fn retry_job(&self, job: JobId) -> Result<Retry>;

    /// The job a job retries, when it is a retry.
    async fn retried_from(&self, job: JobId) -> Result<Option<JobId>>;

    /// Removes what `policy` no longer keeps: never anything of a queued, running or delivering job, nor an
    /// unmatched delivery. With `dry_run`, removes nothing and says what it would remove.
    async fn prune(&self, policy: PrunePolicy, dry_run: bool) -> Result<Pruned>;

    /// Starts counting `schedule`'s ticks for `repo` from `now`, unless they are counted already (the first
    /// replica to see a new schedule sets its start; the others keep it).
    async fn start_ticks(&self, schedule: &str, repo: &str, now: i64) -> Result<()>;

    /// Claims tick `tick` of `schedule` for `repo` and stores its delivery, in one transaction: a
    /// compare-and-set on the last tick, so among replicas racing on one tick exactly one gets `true` (the
    /// last tick recorded was older, or none was); the others, and a tick older than the last, get `false`
    /// and store nothing.
    async fn fire_tick(
        &self,
        schedule: &str,
        repo: &str,
        tick: i64,
        delivery: &NewDelivery,
    ) -> Result<bool>;

    /// Other processes' writes, as they commit, for a store several replicas share (Postgres LISTEN/NOTIFY):
    /// rung when a delivery is stored or a job becomes claimable. `None` for a store one process owns
    /// (SQLite), whose writes ring in-process. A lost connection reconnects by itself and rings both (what
    /// it missed meanwhile is found by looking); polling stays the fallback.
    fn wakeups(&self) -> Option<tokio::sync::mpsc::Receiver<Wakeup>>;

    /// Gives back a job we hold because the service is stopping: a `running` job goes back to `queued` as
    /// if it had not started (its start is not counted), a `delivering` one stays `delivering` (only its
    /// delivery is left); either can be claimed at once. False when the job is no longer ours.
    async fn release_job(&self, job: JobId, owner: &str) -> Result<bool>;

    /// Group commit: stores a batch of webhook deliveries in ONE transaction (one fsync), answering for each
    /// in order. A delivery id seen before (also earlier in the batch) is [`Inserted::Duplicate`]; a body
    /// stored under another delivery id less than `replay_window` ago is [`Inserted::Replayed`] (a zero
    /// window turns that off). Digests older than the window are forgotten in the same transaction. An error
    /// means nothing of the batch was stored.
    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
        replay_window: Duration,
    ) -> Result<Vec<Inserted>>;

    /// How many jobs are in each state, and how many deliveries wait to be matched (for `/metrics`): read
    /// from indexes (`jobs_by_state`, `deliveries_unmatched`), cheap on a store of any size.
    async fn counts(&self) -> Result<Counts>;

    /// One round trip to the store (`SELECT 1`), for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// [`Store::record_match`], also recording why each trigger that did not fire was stopped (`None`
    /// records nothing of it), in the same transaction.
    async fn record_match_explained(
        &self,
        delivery: i64,
        jobs: &[NewJob],
        verdicts: Option<&Verdicts>,
    ) -> Result<usize>;

    /// [`Store::record_match_explained`] of several deliveries, in their order; how many jobs each queued.
    /// Each match is recorded whole; a store records them in fewer writes than one each where it can
    /// (SQLite: one transaction for all; Postgres: one statement for those that fired nothing).
    async fn record_matches(&self, matches: &[Matched]) -> Result<Vec<usize>> {
        let mut queued = Vec::with_capacity(matches.len());
        for m in matches {
            queued.push(
                self.record_match_explained(m.delivery, &m.jobs, Some(&m.verdicts))
                    .await?,
            );
        }
        Ok(queued)
    }

    /// The newest deliveries `filter` selects, newest first, each with its jobs and verdicts (never its
    /// payload).
    async fn recent_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryRecord>>;

    /// One delivery by its `X-GitHub-Delivery` id, with its jobs and verdicts.
    async fn delivery_record(&self, delivery_id: &str) -> Result<Option<DeliveryRecord>>;

    /// The newest jobs `filter` selects, newest first.
    async fn filtered_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>>;

    /// Up to `limit` of a job's log lines written after line `after` (0: from the start), oldest first,
    /// each with its number (pass the last one as `after` to read on).
    async fn job_log_after(
        &self,
        job: JobId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, LogLine)>>;

    /// Records an installation (created, unsuspended, listed) or what changed about it.
    async fn upsert_installation(&self, installation: &Installation) -> Result<()>;

    /// Forgets an installation (deleted) and its repositories.
    async fn delete_installation(&self, id: i64) -> Result<()>;

    /// Adds repositories to an installation's list (recorded with [`Store::upsert_installation`] first).
    async fn add_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()>;

    /// Takes repositories off an installation's list (names compared without case).
    async fn remove_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()>;

    /// Replaces an installation's whole list, in one transaction (what the API listed).
    async fn replace_installed_repos(&self, installation: i64, repos: &[String]) -> Result<()>;

    /// Every installation, by id.
    async fn installations(&self) -> Result<Vec<Installation>>;

    /// The repositories of installations that are not suspended, by name.
    async fn installed_repos(&self) -> Result<Vec<InstalledRepo>>;

    /// Which of these delivery ids (`X-GitHub-Delivery`) the store has.
    async fn known_delivery_ids(&self, ids: &[String]) -> Result<Vec<String>>;

    /// When the newest delivery from GitHub (not a schedule's tick) was received (unix ms).
    async fn newest_webhook_delivery_at(&self) -> Result<Option<i64>>;

    /// Records that nightshift asks GitHub to deliver `delivery_id` again at `now` (unix ms), unless it asked
    /// after `now - window`: true when it is recorded now (ask), false when it was asked recently (do not).
    /// Atomic, so replicas never both ask. Records older than a week are forgotten.
    async fn claim_redelivery(&self, delivery_id: &str, now: i64, window: i64) -> Result<bool>;

    /// Takes or extends the lease `name` for `owner` until `until` (unix ms): true when `owner` holds it
    /// (it was free, expired before `now`, or already `owner`'s).
    async fn try_lease(&self, name: &str, owner: &str, now: i64, until: i64) -> Result<bool>;

    /// What jobs started since `since` (unix ms) spent, per repository and UTC day (the day a job last
    /// started, as [`Store::spend_since`] and the daily budget count it), oldest day first, then by
    /// repository.
    async fn spend_by_day(&self, since: i64) -> Result<Vec<DaySpend>>;
    /// [`Store::insert_deliveries`] of a batch the caller gives away (a store may hand it to a thread of
    /// its own without copying the payloads).
    async fn insert_delivery_batch(
        &self,
        batch: Vec<NewDelivery>,
        replay_window: Duration,
    ) -> Result<Vec<Inserted>> {
        self.insert_deliveries(&batch, replay_window).await
    }

    /// Whether this store keeps payloads packed ([`NewDelivery::packed`]); the webhook handler packs them
    /// before the writer when it does.
    fn packs_payloads(&self) -> bool {
        false
    }

    /// How many group-commit batches ([`Store::insert_delivery_batch`]) may be written at once: one for a
    /// store with a single writer; more where concurrent transactions share their log flushes, so that the
    /// next batch is written while one waits for its flush.
    fn concurrent_batches(&self) -> usize {
        1
    }

    /// Stores a dashboard session under `id_hash` (the SHA-256 of its id, hex: never the id), made at `now`
    /// (unix ms). Deletes every session expired by `now` and, past `per_login` sessions of its login, that
    /// login's oldest.
    async fn create_session(
        &self,
        id_hash: &str,
        session: &DashboardSession,
        now: i64,
        per_login: u32,
    ) -> Result<()>;

    /// The dashboard session stored under `id_hash`, unless it expired by `now`.
    async fn session(&self, id_hash: &str, now: i64) -> Result<Option<DashboardSession>>;

    /// Ends the dashboard session stored under `id_hash` (nothing if there is none).
    async fn delete_session(&self, id_hash: &str) -> Result<()>;

    /// Marks the sign-in `state` whose SHA-256 (hex) is `state_hash` spent until `expires_at`: true the first
    /// time, false if it was spent before (atomic: of two spends of one state, on any replica, one gets true).
    /// Deletes those expired by `now` and, past `max`, the oldest.
    async fn spend_signin(
        &self,
        state_hash: &str,
        expires_at: i64,
        now: i64,
        max: u32,
    ) -> Result<bool>;
}

/// A dashboard session as the store keeps it (see [`Store::create_session`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardSession {
    pub login: String,
    pub admin: bool,
    /// The token every form of the session carries.
    pub csrf: String,
    /// Unix ms.
    pub expires_at: i64,
}

/// One repository's spend on one UTC day (see [`Store::spend_by_day`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DaySpend {
    /// The day's start: UTC midnight, unix milliseconds.
    pub day: i64,
    pub repo: String,
    /// Jobs started that day.
    pub jobs: u64,
    /// Dollars, from the jobs' recorded usage (jobs whose backend reported no cost count nothing).
    pub cost_usd: f64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
}

/// A day in unix milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// How long [`Store::claim_redelivery`] remembers a redelivery it recorded (GitHub keeps its delivery log
/// for about three days).
const REDELIVERIES_KEPT_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// What [`Store::counts`] reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Jobs by state (states without jobs may be missing).
    pub jobs: Vec<(JobState, i64)>,
    pub unmatched_deliveries: i64,
}

/// What another replica's write says is waiting (see [`Store::wakeups`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    Deliveries,
    Jobs,
}

/// Whether a stored spec is a job's (a job that could not be prepared is stored with `{}`).
fn has_spec(spec: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(spec)
        .is_ok_and(|m| !m.is_empty())
}

/// The delivery id of a retry's copy of its event: the original's, with which job it retries and the how
/// many-th retry of that job it is (unique, and readable in `nightshift jobs`).
fn retry_delivery_id(guid: &str, job: JobId, n: i64) -> String {
    format!("{guid}+retry-{n}-of-{job}")
}

/// Opens the store a URL names, creating and migrating it as needed.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(url)
            .await
            .with_context(|| format!("opening the store {url}"))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PostgresStore::connect(url)
            .await
            .with_context(|| format!("opening the store {}", without_password(url)))?;
        return Ok(Arc::new(store));
    }
    bail!(
        "unknown store URL `{}`: write sqlite://PATH or postgres://USER@HOST/DATABASE",
        without_password(url)
    )
}

/// A store URL as it may be logged: a password in it (`postgres://user:secret@host/db`, or
/// `?password=secret`) is replaced.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) if query.to_ascii_lowercase().contains("password") => (rest, "?***"),
        Some((rest, query)) => (rest, &url[url.len() - query.len() - 1..]),
        None => (rest, ""),
    };
    // The userinfo ends at the last `@` before the path.
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user = authority[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}{query}", &rest[at + 1..])
        }
        _ => format!("{scheme}://{rest}{query}"),
    }
}

/// Why the triggers that could have fired for a delivery did not, as recorded when it was matched (the ones
/// that fired are its jobs). Bounded: at most [`Verdicts::MAX_SKIPPED`] triggers by name, each reason cut to
/// [`Verdicts::MAX_REASON`] characters, and stored with each distinct reason once.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdicts {
    /// Each trigger that listens to the delivery's event in its repository and did not fire, with the first
    /// filter that stopped it.
    pub skipped: Vec<Skipped>,
    /// How many loaded triggers do not listen to the delivery's event in its repository (not named).
    pub others: u32,
    /// Skipped triggers past [`Verdicts::MAX_SKIPPED`], not named.
    pub omitted: u32,
    /// Why no trigger could look at the delivery at all (its payload did not parse, it is about no
    /// repository, nightshift does not trigger on its event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A trigger that did not fire, and the filter that stopped it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub trigger: String,
    pub reason: String,
}

/// How [`Verdicts`] are stored: `r` the distinct reasons, `s` each skipped trigger with its reason's index.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredVerdicts {
    r: Vec<String>,
    s: Vec<(String, usize)>,
    #[serde(default)]
    o: u32,
    #[serde(default)]
    x: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
}

impl Verdicts {
    /// The most skipped triggers recorded by name for one delivery.
    pub const MAX_SKIPPED: usize = 1000;
    /// The most characters of a reason (or a trigger's name, or the note) recorded.
    pub const MAX_REASON: usize = 300;

    /// Records that `trigger` did not fire, and why (bounded).
    pub fn skip(&mut self, trigger: &str, reason: &str) {
        if self.skipped.len() >= Self::MAX_SKIPPED {
            self.omitted = self.omitted.saturating_add(1);
            return;
        }
        self.skipped.push(Skipped {
            trigger: cut(trigger, Self::MAX_REASON),
            reason: cut(reason, Self::MAX_REASON),
        });
    }

    /// Says why no trigger could look at the delivery (bounded).
    pub fn note(&mut self, note: &str) {
        self.note = Some(cut(note, Self::MAX_REASON));
    }

    /// The stored form: compact JSON, each distinct reason once.
    pub fn to_stored(&self) -> String {
        let mut reasons: Vec<String> = Vec::new();
        let mut index: std::collections::HashMap<&str, usize> = Default::default();
        let s = self
            .skipped
            .iter()
            .map(|v| {
                let i = *index.entry(&v.reason).or_insert_with(|| {
                    reasons.push(v.reason.clone());
                    reasons.len() - 1
                });
                (v.trigger.clone(), i)
            })
            .collect();
        serde_json::to_string(&StoredVerdicts {
            r: reasons,
            s,
            o: self.others,
            x: self.omitted,
            n: self.note.clone(),
        })
        .expect("verdicts always serialize")
    }

    /// Reads the stored form back.
    pub fn from_stored(text: &str) -> Result<Verdicts> {
        let stored: StoredVerdicts =
            serde_json::from_str(text).context("the stored verdicts are not readable")?;
        let skipped = stored
            .s
            .into_iter()
            .map(|(trigger, i)| {
                let reason = stored
                    .r
                    .get(i)
                    .cloned()
                    .context("a verdict names no reason")?;
                Ok(Skipped { trigger, reason })
            })
            .collect::<Result<_>>()?;
        Ok(Verdicts {
            skipped,
            others: stored.o,
            omitted: stored.x,
            note: stored.n,
        })
    }
}

/// At most `max` characters of `s`, ending with `…` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().nth(max).is_none() {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A delivery as `nightshift deliveries` (and the dashboard) shows it: what came, and what came of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryRecord {
    /// The row id.
    pub id: i64,
    /// `X-GitHub-Delivery`.
    pub delivery_id: DeliveryId,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Unix milliseconds.
    pub received_at: i64,
    /// Unix milliseconds; `None` while it waits to be matched.
    pub matched_at: Option<i64>,
    /// The jobs its triggers fired, oldest first.
    pub jobs: Vec<DeliveryJob>,
    /// Why the other triggers did not fire; `None` when not matched yet, or matched before nightshift
    /// recorded it.
    pub verdicts: Option<Verdicts>,
}

/// A job a delivery fired.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryJob {
    pub id: JobId,
    pub trigger: String,
    pub state: JobState,
    /// Why it failed (for one that could not even be prepared: why it fired but nothing ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which deliveries [`Store::recent_deliveries`] returns.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    /// A repository's full name (any case).
    pub repo: Option<String>,
    /// `X-GitHub-Event`.
    pub event: Option<String>,
    /// The payload's `action`.
    pub action: Option<String>,
    pub limit: u32,
    /// Only deliveries older than this row id ([`DeliveryRecord::id`]): the next page.
    pub before: Option<i64>,
    /// Only deliveries that were matched and fired no trigger.
    pub fired_nothing: bool,
}

impl DeliveryRecord {
    /// `event.action`, or the event alone when it has no action.
    pub fn event_name(&self) -> String {
        match &self.action {
            Some(action) => format!("{}.{action}", self.event),
            None => self.event.clone(),
        }
    }

    /// `waiting` until the dispatcher matched it, `matched` after.
    pub fn state(&self) -> &'static str {
        if self.matched_at.is_none() {
            "waiting"
        } else {
            "matched"
        }
    }

    /// Matched, and no trigger fired.
    pub fn fired_nothing(&self) -> bool {
        self.matched_at.is_some() && self.jobs.is_empty()
    }
}

/// Which jobs [`Store::filtered_jobs`] returns.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    /// A repository's full name (any case).
    pub repo: Option<String>,
    /// A trigger's name, exactly.
    pub trigger: Option<String>,
    pub limit: u32,
}

#[cfg(test)]
mod migration_files {
    /// Every file under `migrations/{kind}/` is one the store runs, numbered as its name says, in order
    /// and without a gap: a migration written but never registered would never be run.
    fn registered_as_on_disk(kind: &str, migrations: &[(i64, &str, &str)]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(kind);
        let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name[..4].parse().expect("NNNN_name.sql"), text)
            })
            .collect();
        files.sort();
        let numbers: Vec<i64> = migrations.iter().map(|m| m.0).collect();
        assert_eq!(
            numbers,
            (1..=files.len() as i64).collect::<Vec<_>>(),
            "{kind}: migrations numbered 1.. without a gap"
        );
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            numbers,
            "{kind}: every file in {} is registered",
            dir.display()
        );
        for ((n, text), (_, _, sql)) in files.iter().zip(migrations) {
            assert_eq!(text, sql, "{kind}: migration {n} is its file");
        }
    }

    #[test]
    fn every_migration_file_is_registered_in_order() {
        registered_as_on_disk("sqlite", super::sqlite::MIGRATIONS);
        registered_as_on_disk("postgres", super::postgres::MIGRATIONS);
    }
}
