//! Workers: claim a job with a lease, keep the lease alive while it works, and take it through the outbox:
//!
//! 1. **run**: the worktree, the progress comment and check run, the agent, the commit made of its changes;
//!    how it ended (an [`Outcome`]) is stored with the job as it moves to `delivering`, before anything is
//!    posted;
//! 2. **deliver**: the outcome posted from the store ([`sink::deliver`]), exactly once, and the job ended.
//!
//! A worker that dies leaves its lease to expire; another worker (after a restart, or on another replica)
//! takes the job: it runs the agent again only when no outcome was stored, and otherwise only delivers.
//! Transient failures (GitHub down, a fetch that failed) put the job back to wait, with backoff and the
//! reason (`waiting`); permanent ones fail it at once with a reason a user can act on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use super::claims::Claims;
use super::{JobSpec, Pipeline};
use crate::agent::prompt::{self, RepoContext};
use crate::agent::{self, AgentJob, result};
use crate::ids::{JobId, RepoName};
use crate::repo::git::GitAuth;
use crate::repo::workspace::Checkout;
use crate::sink::outcome::{Outcome, Proposal};
use crate::sink::texts::Failure;
use crate::sink::{self, LostLease, SinkContext};
use crate::skill;
use crate::store::{ClaimedJob, Ending, Lease, LogStream};
use crate::trigger::OutputKind;

/// What the service asks of its workers as it stops (see `server.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Claim and run jobs.
    Run,
    /// The service is stopping: claim nothing more; running jobs may finish.
    Drain,
    /// The grace period is over (or a second signal came): stop the agents and give the jobs back.
    Now,
}

/// Claims jobs until the service stops (`stop` leaves [`Stop::Run`]); returns when its last job has ended
/// or was given back.
/// `claims` are shared with the process's other workers.
pub async fn run(
    pipeline: Arc<Pipeline>,
    claims: Arc<Claims>,
    name: String,
    mut stop: watch::Receiver<Stop>,
) {
    let _alive = pipeline.health.worker_alive();
    // Expired leases and waits that ended are found by this sweep; new jobs wake the worker at once.
    let sweep = pipeline
        .config
        .job_lease
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(200));
    loop {
        if *stop.borrow() != Stop::Run {
            return;
        }
        let notified = pipeline.jobs_waiting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match claims.next(&name).await {
            Ok(Some(job)) => {
                let span = info_span!("job", id = %job.id, trigger = %job.trigger, repo = %job.repo, delivery = %job.delivery_id, attempt = job.attempt);
                run_leased(&pipeline, &name, job, stop.clone())
                    .instrument(span)
                    .await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::timeout(sweep, notified) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                warn!(worker = %name, "claiming a job failed: {e:#}");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Ends when the service asks running jobs to stop now.
async fn stopped_now(mut stop: watch::Receiver<Stop>) {
    // A closed channel (the server is gone) stops too.
    let _ = stop.wait_for(|s| *s == Stop::Now).await;
}

/// Renews the job's lease every third of its length until it is lost (or, when `stop_on_cancel`, until a
/// newer job of its group asks it to stop).
async fn heartbeat(pipeline: &Pipeline, id: JobId, owner: &str, stop_on_cancel: bool) -> Lease {
    keep_lease(pipeline.config.job_lease, stop_on_cancel, || {
        pipeline
            .store
            .renew_lease(id, owner, pipeline.config.job_lease)
    })
    .await
}

/// The heartbeat's rule, with the store call given: a lease that could not be renewed for two thirds of
/// its length counts as lost, whether the renewals fail or hang (a store that stopped answering), because
/// another worker may take the job soon; the caller then stops the agent before that can happen.
async fn keep_lease<F, Fut>(lease: Duration, stop_on_cancel: bool, mut renew: F) -> Lease
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Lease>>,
{
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        let give_up = renewed + lease * 2 / 3;
        // A renewal is always tried, and given at least a third of the lease: a worker whose own task was
        // not run for a while (a busy machine) asks the store, which is the judge (a job another worker took
        // answers `Lost`); only a store that fails or does not answer makes it give up.
        let deadline = give_up.max(tokio::time::Instant::now() + lease / 3);
        match tokio::time::timeout_at(deadline, renew()).await {
            Ok(Ok(Lease::Held)) => {
                renewed = tokio::time::Instant::now();
                continue;
            }
            Ok(Ok(Lease::CancelRequested)) if !stop_on_cancel => {
                renewed = tokio::time::Instant::now();
                continue;
            }
            Ok(Ok(other)) => return other,
            Ok(Err(e)) => warn!("renewing the lease failed: {e:#}"),
            Err(_) => warn!("renewing the lease did not answer in time"),
        }
        if tokio::time::Instant::now() >= give_up {
            warn!("the lease could not be renewed for two thirds of its length: stopping");
            return Lease::Lost;
        }
    }
}

/// How a leased phase (the run, or the delivery) was interrupted.
enum Interrupted {
    /// The lease is lost: another worker may have the job now.
    Lost,
    /// The service is stopping and the grace period is over; `delivering` when only the delivery was left.
    Stopping { delivering: bool },
}

/// Takes one claimed job through the outbox (see the module's notes) while a heartbeat keeps its lease.
async fn run_leased(
    pipeline: &Arc<Pipeline>,
    owner: &str,
    job: ClaimedJob,
    stop: watch::Receiver<Stop>,
) {
    let id = job.id;
    // What earlier attempts left behind, when their workers are provably gone.
    if job.attempt > 1 || job.result.is_some() {
        clear_dead_attempts(pipeline, Some(id)).await;
    }
    let spec = match serde_json::from_str::<JobSpec>(&job.spec) {
        Ok(spec) => spec,
        Err(e) => {
            let e = format!("the stored job spec does not parse: {e}");
            error!("{e}");
            let _ = pipeline
                .store
                .finish_job(id, owner, Ending::Failed(&e))
                .await;
            return;
        }
    };
    crate::metrics::job_started(&pipeline.config, &job, &spec.agent);
    // The job's GitHub client, minted by the run phase and reused (refreshed) for the delivery.
    let minted: std::sync::Mutex<Option<crate::github::RepoClient>> = std::sync::Mutex::new(None);
    let outcome = match &job.result {
        Some(stored) => match serde_json::from_str::<Outcome>(stored) {
            Ok(outcome) => {
                note(
                    pipeline,
                    id,
                    "delivering the stored result (the agent is not run again)".into(),
                )
                .await;
                outcome
            }
            Err(e) => {
                let e = format!("the stored result does not parse: {e}");
                error!("{e}");
                let _ = pipeline
                    .store
                    .finish_job(id, owner, Ending::Failed(&e))
                    .await;
                return;
            }
        },
        None => {
            // What this attempt's folders hold, among the running attempts' (`disk_watch`), until its
            // files are gone.
            let disk = pipeline.disk_use.enter((id, job.attempt));
            let ran = tokio::select! {
                ran = run_phase(pipeline, owner, &job, &spec, &minted) => ran,
                lease = heartbeat(pipeline, id, owner, true) => {
                    if lease == Lease::CancelRequested {
                        // The run's future is dropped here, which kills the agent's process group.
                        clear_attempt(pipeline, &job, &spec.repo).await;
                        let reason = cancelled_because(pipeline, id).await;
                        info!("{reason}");
                        Ran::Outcome(Outcome::Cancelled { reason })
                    } else {
                        return interrupted(pipeline, owner, &job, &spec, Interrupted::Lost).await;
                    }
                }
                () = stopped_now(stop.clone()) => {
                    let why = Interrupted::Stopping { delivering: false };
                    return interrupted(pipeline, owner, &job, &spec, why).await;
                }
                (error, public) = disk_watch(pipeline, &job, &spec, &disk) => {
                    // The run's future is dropped here, which kills the agent's process group.
                    clear_attempt(pipeline, &job, &spec.repo).await;
                    warn!("{error}");
                    Ran::Outcome(Outcome::Failed { public: Some(public), error })
                }
            };
            drop(disk);
            let outcome = match ran {
                Ran::Outcome(outcome) => outcome,
                Ran::Defer(e) if waited_enough(pipeline, &job) => gave_up(&e, job.retries),
                Ran::Defer(e) => return defer(pipeline, owner, &job, e).await,
                Ran::Lost => return,
            };
            if !store_outcome(pipeline, owner, id, &outcome).await {
                return;
            }
            outcome
        }
    };
    let reuse = minted.lock().unwrap_or_else(|e| e.into_inner()).take();
    tokio::select! {
        () = deliver_phase(pipeline, owner, &job, &spec, outcome, reuse) => {}
        _ = heartbeat(pipeline, id, owner, false) => {
            warn!("lost the lease while delivering; another worker has the job now");
        }
        () = stopped_now(stop) => {
            let why = Interrupted::Stopping { delivering: true };
            interrupted(pipeline, owner, &job, &spec, why).await;
        }
    }
}

/// The least time between two walks of a job's folders ([`disk_watch`]).
const DISK_EVERY: Duration = Duration::from_secs(2);
/// The most time between two walks of a job's folders: a tree slow to walk does not buy its agent much
/// more time to write unmeasured.
const DISK_WALK_MOST: Duration = Duration::from_secs(10);
/// How often the data dir's free space is looked at (one `statvfs`): a disk written at 1.3 GB/s loses
/// about 330 MB in between.
const DISK_TICK: Duration = Duration::from_millis(250);
/// A walk that takes longer is an error: the folders cannot be measured.
const DISK_WALK_TIMEOUT: Duration = Duration::from_secs(60);
/// Walks in a row whose sum was unsettled (entries renamed away as they were read, through every listing
/// again) after which the job is stopped: about 10 to 50 seconds of it.
const DISK_UNSETTLED: u32 = 5;

/// What each running attempt's folders held at their last walk ([`disk_watch`]), so that at the
/// free-space floor the one holding the most is stopped first, not every running job.
#[derive(Default)]
pub struct DiskUse(std::sync::Mutex<std::collections::HashMap<(JobId, u32), u64>>);

/// An attempt's place in [`DiskUse`], left when dropped.
pub struct DiskShare<'a> {
    all: &'a DiskUse,
    attempt: (JobId, u32),
}

impl DiskUse {
    pub fn enter(&self, attempt: (JobId, u32)) -> DiskShare<'_> {
        self.held().insert(attempt, 0);
        DiskShare { all: self, attempt }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(JobId, u32), u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DiskShare<'_> {
    fn measured(&self, bytes: u64) {
        self.all.held().insert(self.attempt, bytes);
    }

    /// Whether no running attempt held more at its last walk.
    fn holds_most(&self) -> bool {
        let held = self.all.held();
        let mine = held.get(&self.attempt).copied().unwrap_or_default();
        held.values().all(|&other| other <= mine)
    }
}

impl Drop for DiskShare<'_> {
    fn drop(&mut self) {
        self.all.held().remove(&self.attempt);
    }
}

/// Ends, saying why (for the job, and for GitHub), when this attempt's folders (its worktree, the verify
/// steps' checkout, its home, temporary and output folders) hold more than its profile's `limits.disk`
/// bytes or `limits.disk_files` entries, or cannot be measured, or when the data dir's disk has less free
/// than `min_free_disk` and no other running attempt holds more; never ends otherwise. An agent that
/// fills the disk would take the store, the mirrors and every other job with it, and the kernel has no
/// per-job limit on a shared filesystem without root (an rlimit bounds one file; `fallocate` is refused by
/// the agents' seccomp filter). So the folders are walked on a blocking thread
/// ([`crate::safe_fs::usage`]: by descriptor, no link followed, each file once, stopping once past the
/// limit), again after twenty times as long as the last walk took, between [`DISK_EVERY`] and
/// [`DISK_WALK_MOST`] later (walking costs at most a twentieth of a core); a job may overshoot by what it
/// writes in between. What a walk cannot see (a file deleted and held open, one moved from a folder not
/// walked yet into one walked already, what `git add` stores in the mirror) is bounded by the free-space
/// floor, looked at every [`DISK_TICK`]: below it the attempt that held the most at its last walk is
/// stopped (its files go), then, if the disk stays low, the next.
async fn disk_watch(
    pipeline: &Pipeline,
    job: &ClaimedJob,
    spec: &JobSpec,
    share: &DiskShare<'_>,
) -> (String, String) {
    use crate::safe_fs::Usage;
    use crate::sandbox::size_text;
    let limits = pipeline
        .config
        .agents
        .get(&spec.agent)
        .map(|profile| profile.limits)
        .unwrap_or_default();
    let limit = Usage {
        bytes: limits.disk,
        entries: limits.disk_files,
        unsettled: false,
    };
    let mut roots = pipeline
        .workspaces
        .written_by_job(job.id, job.attempt)
        .to_vec();
    roots.push(job_dir(pipeline, job.id, job.attempt));
    let roots = Arc::new(roots);
    let mut next_walk = std::time::Instant::now();
    let (mut moved, mut unsettled) = (0, 0);
    // Since the disk went under the floor: whether this attempt was walked since (it is first measured
    // afresh, and the others have a tick to be, before who holds the most is decided).
    let mut low: Option<bool> = None;
    let stopped = |why: String| (why.clone(), why);
    loop {
        match (under_disk_floor(&pipeline.config), low) {
            (None, _) => low = None,
            (Some(_), None) => {
                low = Some(false);
                next_walk = std::time::Instant::now();
            }
            (Some(why), Some(true)) if share.holds_most() => {
                // How much the service's disk holds is not GitHub's to know.
                let public = "the service's disk is nearly full: the job was stopped (it can be \
                              re-run once there is room)";
                return (why, public.to_owned());
            }
            (Some(_), Some(_)) => {}
        }
        if std::time::Instant::now() >= next_walk {
            let started = std::time::Instant::now();
            let walk = roots.clone();
            let measured = tokio::time::timeout(
                DISK_WALK_TIMEOUT,
                tokio::task::spawn_blocking(move || crate::safe_fs::usage(&walk, limit)),
            )
            .await;
            let took = started.elapsed();
            match measured {
                Err(_) => {
                    return stopped(format!(
                        "measuring the job's folders took more than {} s: its agent was stopped",
                        DISK_WALK_TIMEOUT.as_secs()
                    ));
                }
                Ok(Ok(Ok(usage))) if usage.over(limit) => {
                    let over = if usage.bytes > limit.bytes {
                        format!("more than {} (`limits.disk`", size_text(limit.bytes))
                    } else {
                        format!(
                            "more than {} files and folders (`limits.disk_files`",
                            limit.entries
                        )
                    };
                    return stopped(format!(
                        "the job's folders held {over} of its agent profile): its agent was stopped"
                    ));
                }
                Ok(Ok(Ok(usage))) => {
                    share.measured(usage.bytes);
                    if low.is_some() {
                        low = Some(true);
                    }
                    moved = 0;
                    unsettled = if usage.unsettled { unsettled + 1 } else { 0 };
                    if unsettled >= DISK_UNSETTLED {
                        return stopped(
                            "the job's folders kept changing as they were measured (entries renamed \
                             away as they were read, walk after walk), so what they hold cannot be \
                             known: its agent was stopped"
                                .to_owned(),
                        );
                    }
                }
                // A folder moved while it was walked: walked again at once, a few times.
                Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::Interrupted && moved < 3 => {
                    moved += 1;
                    continue;
                }
                Ok(Ok(Err(e))) => {
                    return stopped(format!(
                        "nightshift could not measure the job's folders ({e}), and a folder it \
                         cannot measure could hide what the job wrote: its agent was stopped"
                    ));
                }
                Ok(Err(e)) => {
                    return stopped(format!(
                        "measuring the job's folders failed ({e}): its agent was stopped"
                    ));
                }
            }
            next_walk = std::time::Instant::now() + (took * 20).clamp(DISK_EVERY, DISK_WALK_MOST);
        }
        tokio::time::sleep(DISK_TICK).await;
    }
}

/// Why jobs must stop, when the data dir's disk has less free space (or fewer free inodes) than it keeps
/// for the store and the mirrors: `min_free_disk`, by default 2% of the disk and at most 1 GiB (inodes: 2%,
/// at most 100,000).
fn under_disk_floor(config: &crate::config::Config) -> Option<String> {
    use crate::sandbox::size_text;
    let path = std::ffi::CString::new(config.data_dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero `statvfs` is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    let (size, free) = (st.f_blocks as u64 * unit, st.f_bavail as u64 * unit);
    let floor = config.min_free_disk.unwrap_or((size / 50).min(1 << 30));
    if free < floor {
        return Some(format!(
            "the disk of nightshift's data dir has {} free, less than the {} it keeps free for its \
             store (`min_free_disk`): of the running jobs, this one's folders held the most, and it was \
             stopped",
            size_text(free),
            size_text(floor)
        ));
    }
    let inodes = (st.f_files as u64 / 50).min(100_000);
    if (st.f_favail as u64) < inodes {
        return Some(format!(
            "the disk of nightshift's data dir has {} free inodes, less than the {inodes} it keeps \
             free for its store: of the running jobs, this one's folders held the most, and it was \
             stopped",
            st.f_favail
        ));
    }
    None
}

/// The outbox's step: how the run ended, stored with the job as it moves to `delivering`. False when it
/// was not stored (the job is no longer ours, or the store failed): nothing is posted then.
async fn store_outcome(pipeline: &Pipeline, owner: &str, id: JobId, outcome: &Outcome) -> bool {
    match pipeline
        .store
        .store_result(
            id,
            owner,
            &serde_json::to_string(outcome).unwrap_or_default(),
        )
        .await
    {
        Ok(true) => true,
        Ok(false) => {
            warn!("the job was no longer ours when its agent ended; its result is not kept");
            false
        }
        Err(e) => {
            // Not stored: nothing is posted; the lease runs out and the job is run again.
            error!("storing the job's result failed: {e:#}");
            false
        }
    }
}

/// A phase was dropped (its agent, if one ran, killed with its process group): this attempt's files go,
/// and a job stopped for a restart is given back, its start not counted.
async fn interrupted(
    pipeline: &Pipeline,
    owner: &str,
    job: &ClaimedJob,
    spec: &JobSpec,
    why: Interrupted,
) {
    clear_attempt(pipeline, job, &spec.repo).await;
    match why {
        Interrupted::Lost => warn!("lost the lease on the job; another worker has it now"),
        Interrupted::Stopping { delivering } => {
            let line = if !delivering {
                "stopped for a service restart; it will run again"
            } else {
                "stopped for a service restart; its delivery will be done again"
            };
            note(pipeline, job.id, line.to_owned()).await;
            match pipeline.store.release_job(job.id, owner).await {
                Ok(true) => {}
                Ok(false) => warn!("the job was no longer ours when it was given back"),
                Err(e) => {
                    error!(
                        "giving the job back failed (it runs again when its lease expires): {e:#}"
                    )
                }
            }
        }
    }
}

/// Why a job asked to stop was cancelled: an operator's reason (`nightshift jobs cancel`), else a newer job
/// of its concurrency group.
async fn cancelled_because(pipeline: &Pipeline, id: JobId) -> String {
    match pipeline.store.cancel_reason(id).await {
        Ok(Some(reason)) => reason,
        Ok(None) => "cancelled: a newer job of its concurrency group replaced it".into(),
        Err(e) => {
            warn!("reading why the job was cancelled failed: {e:#}");
            "cancelled".into()
        }
    }
}

/// A failure worth waiting on: getting the repository's commit (the network, the remote, a pull request's
/// head not there yet).
#[derive(Debug)]
struct Transient(anyhow::Error);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Transient {}

/// How the run phase ended.
enum Ran {
    Outcome(Outcome),
    /// A transient failure before the agent ran: the job waits and is tried again.
    Defer(anyhow::Error),
    Lost,
}

async fn run_phase(
    pipeline: &Arc<Pipeline>,
    owner: &str,
    job: &ClaimedJob,
    spec: &JobSpec,
    minted: &std::sync::Mutex<Option<crate::github::RepoClient>>,
) -> Ran {
    if job.cancel_requested {
        return Ran::Outcome(Outcome::Cancelled {
            reason: cancelled_because(pipeline, job.id).await,
        });
    }
    if job.attempt > pipeline.config.max_attempts {
        let error = format!(
            "the job was started {} times and its worker stopped each time",
            job.attempt - 1
        );
        return Ran::Outcome(Outcome::Failed {
            public: Some(error.clone()),
            error,
        });
    }
    match run_job(pipeline, owner, job, spec.clone(), minted).await {
        Ok(proposal) => Ran::Outcome(Outcome::Done(Box::new(proposal))),
        Err(e) if e.chain().any(|c| c.is::<LostLease>()) => Ran::Lost,
        // Getting the repository (a fetch, a clone, a pull request's head not fetched yet) and GitHub being
        // away are worth waiting for; the rest of preparing (a hostile skill folder) is not.
        Err(e)
            if (e.chain().any(|c| c.is::<Transient>())
                || crate::github::gh_error(&e).is_some_and(|g| g.is_transient()))
                && !(missing_commit(&e) && job.retries >= MISSING_COMMIT_TRIES) =>
        {
            Ran::Defer(e)
        }
        Err(e) => Ran::Outcome(failed(e)),
    }
}

/// How many times a job waits for its commit to appear (a pull request's head GitHub has not served yet)
/// before it fails: a commit force-pushed away never comes.
const MISSING_COMMIT_TRIES: u32 = 3;

fn missing_commit(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Transient>().is_some_and(|t| {
            t.0.chain()
                .any(|c| c.is::<crate::repo::workspace::MissingCommit>())
        })
    })
}

/// A failure as stored: the whole error, and what may be said of it on GitHub.
fn failed(e: anyhow::Error) -> Outcome {
    let public = Failure::public(&e);
    let error = crate::redact::redact(&format!("{e:#}")).into_owned();
    if public.is_none() {
        error!(
            "this job failed because of nightshift's configuration; this is not said on GitHub: {error}"
        );
    }
    Outcome::Failed { error, public }
}

/// Whether a job that met a transient failure has waited as often as it may.
fn waited_enough(pipeline: &Pipeline, job: &ClaimedJob) -> bool {
    job.retries >= pipeline.config.retry.max
}

/// Puts the job back to wait after a transient failure, with backoff (at least what GitHub asked for).
async fn defer(pipeline: &Arc<Pipeline>, owner: &str, job: &ClaimedJob, e: anyhow::Error) {
    let retry = pipeline.config.retry;
    let reason = crate::redact::redact(&format!("{e:#}")).into_owned();
    let asked = crate::github::gh_error(&e).and_then(|g| g.retry_after);
    let wait = retry.wait(job.retries, asked);
    note(
        pipeline,
        job.id,
        format!(
            "waiting {} before trying again ({} of {}): {reason}",
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1))),
            job.retries + 1,
            retry.max
        ),
    )
    .await;
    let until = crate::now_ms() + wait.as_millis() as i64;
    match pipeline
        .store
        .defer_job(job.id, owner, until, &reason)
        .await
    {
        Ok(true) => {}
        Ok(false) => warn!("the job was no longer ours when it was put back to wait"),
        Err(e) => error!("putting the job back to wait failed: {e:#}"),
    }
}

/// What a user is told when a job gave up waiting.
fn gave_up(e: &anyhow::Error, retries: u32) -> Outcome {
    let error = format!(
        "gave up after waiting {retries} times: {}",
        crate::redact::redact(&format!("{e:#}"))
    );
    let public = match crate::github::gh_error(e) {
        Some(_) => "GitHub could not be reached for too long".to_owned(),
        None => Failure::public(e).unwrap_or_else(|| "nightshift could not finish this job".into()),
    };
    Outcome::Failed {
        error,
        public: Some(public),
    }
}

/// Posts the stored outcome and ends the job; a transient failure puts it back to wait, a permanent one
/// fails it (and says so, once).
async fn deliver_phase(
    pipeline: &Arc<Pipeline>,
    owner: &str,
    job: &ClaimedJob,
    spec: &JobSpec,
    outcome: Outcome,
    reuse: Option<crate::github::RepoClient>,
) {
    let id = job.id;
    // The run phase's client when this worker ran the agent (its token minted again if the agent ran longer
    // than a good part of its life), a new one after a restart.
    let client = match reuse {
        Some(client) => match client.refresh().await {
            Ok(minted) => {
                if let Some(line) = minted {
                    note(pipeline, id, format!("for the delivery: {line}")).await;
                }
                Ok(Some((client, None)))
            }
            Err(e) => Err(e),
        },
        None => pipeline
            .github
            .job_client(
                spec.installation,
                &spec.repo,
                sink::permissions(spec.output),
            )
            .await
            .map(|c| c.map(|(client, line)| (client, Some(line)))),
    };
    let client = match client {
        Ok(Some((client, line))) => {
            if let Some(line) = line {
                note(pipeline, id, format!("for the delivery: {line}")).await;
            }
            Some(client)
        }
        Ok(None) => None,
        Err(e) => {
            let transient = crate::github::gh_error(&e).is_none_or(|g| g.is_transient());
            if transient && !waited_enough(pipeline, job) {
                return defer(
                    pipeline,
                    owner,
                    job,
                    e.context("minting the job's GitHub token"),
                )
                .await;
            }
            warn!("no GitHub token for the job's delivery: {e:#}");
            None
        }
    };
    let ctx = sink_context(pipeline, id, spec, owner, client.as_ref());
    let report = pipeline.config.report_failures;
    let ending = match sink::deliver::deliver(&ctx, &outcome, report).await {
        Ok(ending) => ending,
        Err(e) if e.chain().any(|c| c.is::<LostLease>()) => {
            warn!("lost the lease while delivering; another worker has the job now");
            return;
        }
        Err(e)
            if crate::github::gh_error(&e).is_some_and(|g| g.is_transient())
                && !waited_enough(pipeline, job) =>
        {
            return defer(pipeline, owner, job, e).await;
        }
        // Given up waiting on a failure's note itself: the job ends failed, unsaid.
        Err(e) if matches!(outcome, Outcome::Failed { .. }) => {
            sink::deliver::Ending::Failed(format!(
                "{}; saying so on GitHub failed: {}",
                match &outcome {
                    Outcome::Failed { error, .. } => error.as_str(),
                    _ => "",
                },
                crate::redact::redact(&format!("{e:#}"))
            ))
        }
        Err(e) => {
            // GitHub refused what was posted (or something else went wrong for good): the job fails, and
            // says so where it came from (once).
            let why = crate::github::gh_error(&e)
                .filter(|g| g.status.is_some())
                .map(|g| format!("GitHub refused it: {}", g.message))
                .unwrap_or_else(|| "nightshift could not deliver the result to GitHub".into());
            let error = crate::redact::redact(&format!("{e:#}")).into_owned();
            note(pipeline, id, format!("delivery failed: {error}")).await;
            let failure = Outcome::Failed {
                error,
                public: Some(why),
            };
            if !matches!(outcome, Outcome::Failed { .. }) {
                let _ = pipeline
                    .store
                    .store_result(
                        id,
                        owner,
                        &serde_json::to_string(&failure).unwrap_or_default(),
                    )
                    .await;
            }
            match sink::deliver::deliver(&ctx, &failure, report).await {
                Ok(ending) => ending,
                Err(e) => {
                    warn!("saying on GitHub that the job failed did not work: {e:#}");
                    sink::deliver::Ending::Failed(match failure {
                        Outcome::Failed { error, .. } => error,
                        _ => unreachable!(),
                    })
                }
            }
        }
    };
    let stored = match &ending {
        sink::deliver::Ending::Succeeded => {
            info!("job succeeded");
            pipeline
                .store
                .finish_job(id, owner, Ending::Succeeded)
                .await
        }
        sink::deliver::Ending::Failed(e) => {
            error!("job failed: {e}");
            note(pipeline, id, format!("failed: {e}")).await;
            pipeline
                .store
                .finish_job(id, owner, Ending::Failed(e))
                .await
        }
        sink::deliver::Ending::Cancelled(reason) => {
            note(pipeline, id, reason.clone()).await;
            pipeline
                .store
                .finish_job(id, owner, Ending::Cancelled(reason))
                .await
        }
    };
    if let Ok(true) = stored {
        let outcome = match &ending {
            sink::deliver::Ending::Succeeded => "succeeded",
            sink::deliver::Ending::Failed(_) => "failed",
            sink::deliver::Ending::Cancelled(_) => "cancelled",
        };
        crate::metrics::job_ended(&pipeline.config, job, &spec.agent, outcome);
    }
    match stored {
        Ok(true) => pipeline.workspaces.forget_job_commit(&spec.repo, id).await,
        Ok(false) => warn!("the job was no longer ours when it ended; its end is not recorded"),
        Err(e) => error!("recording the end of the job failed: {e:#}"),
    }
}

/// What the sinks need of this worker for one job.
fn sink_context<'a>(
    pipeline: &'a Pipeline,
    job: JobId,
    spec: &'a JobSpec,
    owner: &'a str,
    client: Option<&'a crate::github::RepoClient>,
) -> SinkContext<'a> {
    SinkContext {
        job,
        spec,
        store: &pipeline.store,
        client,
        own_login: pipeline.bot_login(),
        owner,
        lease: pipeline.config.job_lease,
        public_url: pipeline.config.public_url.as_deref(),
        workspaces: &pipeline.workspaces,
        limits: &pipeline.config.limits,
    }
}

async fn note(pipeline: &Pipeline, job: JobId, line: String) {
    info!("{line}");
    if let Err(e) = pipeline
        .store
        .append_log(job, LogStream::Nightshift, &[line])
        .await
    {
        warn!("writing the job log failed: {e:#}");
    }
}

/// The run phase: the worktree, the progress comment and check run, the agent, its proposal.
async fn run_job(
    pipeline: &Arc<Pipeline>,
    owner: &str,
    job: &ClaimedJob,
    spec: JobSpec,
    minted: &std::sync::Mutex<Option<crate::github::RepoClient>>,
) -> Result<Proposal> {
    let profile = pipeline
        .config
        .agents
        .get(&spec.agent)
        .with_context(|| {
            format!(
                "agent profile `{}` is not in the service config",
                spec.agent
            )
        })
        .context(Failure::Config)?;

    // A token for this job: its one repository, the permissions its output needs (App auth).
    let (client, access) = match pipeline
        .github
        .job_client(
            spec.installation,
            &spec.repo,
            crate::sink::permissions(spec.output),
        )
        .await
        .context(Failure::Prepare)?
    {
        Some((client, line)) => (Some(client), Some(line)),
        None => (None, None),
    };
    *minted.lock().unwrap_or_else(|e| e.into_inner()) = client.clone();
    let ctx = sink_context(pipeline, job.id, &spec, owner, client.as_ref());
    // The progress comment, first thing: whoever handed the work off sees it was taken. It is posted while
    // the run goes on (the worktree, the agent): the agent never waits for GitHub's answer.
    let progress = async {
        if spec.progress && spec.number.is_some() {
            let body = crate::sink::texts::progress_working(
                &spec.trigger,
                &spec.agent,
                job.id,
                ctx.job_url().as_deref(),
            );
            if let Err(e) = sink::comment::say(&ctx, &body).await {
                if e.chain().any(|c| c.is::<LostLease>()) {
                    return Err(e);
                }
                note(
                    pipeline,
                    job.id,
                    format!("the progress comment could not be posted: {e:#}"),
                )
                .await;
            }
        }
        Ok(())
    };
    let auth = client
        .as_ref()
        .map(crate::github::RepoClient::git_auth)
        .unwrap_or_else(GitAuth::none);
    let checkout = match &spec.head_sha {
        Some(sha) => Checkout::Commit(sha),
        None => Checkout::Branch(&spec.default_branch),
    };
    let started = Instant::now();
    let prepare = async {
        claim_attempt_files(pipeline, job, owner, &spec.repo)
            .await
            .context(Failure::Prepare)?;
        match pipeline
            .workspaces
            .prepare(
                &spec.repo,
                &spec.clone_url,
                checkout,
                job.id,
                job.attempt,
                &auth,
            )
            .await
        {
            Ok(worktree) => Ok(worktree),
            Err(e) => {
                remove_job_files(pipeline, job.id, job.attempt).await;
                Err(anyhow::Error::new(Transient(e))).context(Failure::Prepare)
            }
        }
    };
    // The run goes on while the progress comment is posted: the agent does not wait for GitHub's answer.
    let work = async {
        let worktree = prepare.await?;
        if spec.output == OutputKind::CheckRun
            && let Err(e) = sink::check_run::start(&ctx, &worktree.commit).await
        {
            if e.chain().any(|c| c.is::<LostLease>()) {
                let _ = worktree.remove().await;
                remove_job_files(pipeline, job.id, job.attempt).await;
                return Err(e);
            }
            note(
                pipeline,
                job.id,
                format!("the check run could not be started: {e:#}"),
            )
            .await;
        }
        // Said in one write with the agent's start (below): every store write before the agent starts is
        // an fsync on its way.
        let ready = format!(
            "worktree ready at {} ({} ms){}",
            worktree.commit,
            started.elapsed().as_millis(),
            access
                .as_ref()
                .map(|a| format!("; {a}"))
                .unwrap_or_default()
        );
        info!("{ready}");

        // The next job of this repository finds a worktree checked out ahead (crate::repo::workspace::Spare).
        let refill = pipeline.clone();
        let repo = spec.repo.clone();
        tokio::spawn(async move {
            if let Err(e) = refill.workspaces.refill_spare(&repo).await {
                tracing::debug!(%repo, "{e:#}");
            }
        });

        let filled;
        let spec = if spec.default_branch.is_empty() {
            let mut with_branch = spec.clone();
            with_branch.default_branch = worktree.default_branch.clone();
            filled = with_branch;
            &filled
        } else {
            &spec
        };
        let result = run_in_worktree(pipeline, job, spec, profile, &worktree, ready).await;
        if let Err(e) = worktree.remove().await {
            warn!("removing the worktree failed: {e:#}");
        }
        // The job's home, output and copies, whether it succeeded or not (the proposal holds what is
        // posted).
        remove_job_files(pipeline, job.id, job.attempt).await;
        result
    };
    let (progressed, result) = tokio::join!(progress, work);
    // The lease was lost while the comment was posted: this run is not the job's any more.
    progressed?;
    result
}

/// The folder of one attempt at a job: its home, temporary and output folders, the repository's context,
/// stashed skills. Each attempt has its own, as it has its own worktree: a worker that lost its job never
/// touches what the worker that took it over uses.
fn job_dir(pipeline: &Pipeline, job: JobId, attempt: u32) -> PathBuf {
    pipeline
        .config
        .data_dir
        .join("jobs")
        .join(format!("{job}-{attempt}"))
}

/// Who runs an attempt (`OWNER\nREPOSITORY\n`), next to its folder, where its agent cannot read it.
/// Written before anything else of the attempt, removed after everything else: leftovers always have one.
fn owner_file(pipeline: &Pipeline, job: JobId, attempt: u32) -> PathBuf {
    pipeline
        .config
        .data_dir
        .join("jobs")
        .join(format!("{job}-{attempt}.owner"))
}

/// Says who runs this attempt, before its folder and worktree exist.
async fn claim_attempt_files(
    pipeline: &Pipeline,
    job: &ClaimedJob,
    owner: &str,
    repo: &RepoName,
) -> Result<()> {
    let file = owner_file(pipeline, job.id, job.attempt);
    let dir = file.parent().context("the jobs folder")?;
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    tokio::fs::write(&file, format!("{owner}\n{repo}\n"))
        .await
        .with_context(|| format!("writing {}", file.display()))
}

/// Removes the attempt's folder, then the note of who ran it.
async fn remove_job_files(pipeline: &Pipeline, job: JobId, attempt: u32) {
    let dir = job_dir(pipeline, job, attempt);
    if let Err(e) = crate::safe_fs::remove_tree_async(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("removing {} failed: {e}", dir.display());
        return;
    }
    let _ = tokio::fs::remove_file(owner_file(pipeline, job, attempt)).await;
}

/// Removes what this attempt left (its worktree, its folder): after it was stopped, whatever it was doing.
async fn clear_attempt(pipeline: &Pipeline, job: &ClaimedJob, repo: &RepoName) {
    if let Err(e) = pipeline.workspaces.discard(repo, job.id, job.attempt).await {
        warn!("removing the stopped attempt's worktree failed: {e:#}");
    }
    remove_job_files(pipeline, job.id, job.attempt).await;
}

/// Removes the files of attempts whose workers are provably gone (of job `only`, or of every job): a
/// worker that died mid-job leaves its worktree and folder. Called at start and when a job is taken over.
/// An attempt whose worker may still run (another host, or a process that is still there) is left alone.
pub async fn clear_dead_attempts(pipeline: &Pipeline, only: Option<JobId>) {
    let jobs = pipeline.config.data_dir.join("jobs");
    let Ok(mut entries) = tokio::fs::read_dir(&jobs).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let Some((job, attempt)) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".owner"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(j, a)| Some((JobId(j.parse().ok()?), a.parse::<u32>().ok()?)))
        else {
            continue;
        };
        if only.is_some_and(|only| only != job) {
            continue;
        }
        let Ok(text) = tokio::fs::read_to_string(entry.path()).await else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(owner), Some(repo)) = (lines.next(), lines.next().and_then(RepoName::parse))
        else {
            continue;
        };
        if !provably_dead(owner) {
            continue;
        }
        if let Err(e) = pipeline.workspaces.discard(&repo, job, attempt).await {
            warn!("removing the worktree of attempt {attempt} at job {job} failed: {e:#}");
            continue;
        }
        remove_job_files(pipeline, job, attempt).await;
        info!("removed what attempt {attempt} at job {job} left: its worker ({owner}) is gone");
    }
}

/// Whether the worker `owner` (`HOST-PID-wN`, see `server.rs`) is gone for sure: it ran on this host
/// in a process that is no longer there. This process's own workers clear their own attempts.
fn provably_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, '-');
    let (Some(worker), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if !worker.starts_with('w') || pid <= 1 || host != crate::hostname() {
        return false;
    }
    if u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        return false;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only asks whether process `pid` (> 1) exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    !found && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// The run phase inside the job's worktree: the attempt's folders, the agent's input, the agent and its
/// verify rounds, then what it proposes.
async fn run_in_worktree(
    pipeline: &Arc<Pipeline>,
    job: &ClaimedJob,
    spec: &JobSpec,
    profile: &crate::config::AgentProfile,
    worktree: &crate::repo::workspace::Worktree,
    ready: String,
) -> Result<Proposal> {
    let dirs = make_job_dirs(pipeline, job, spec).await?;
    let AgentInput {
        prompt,
        staged,
        timeout,
        lines,
    } = prepare_agent_input(pipeline, spec, profile, worktree, &dirs.root, ready).await?;
    // What nightshift did is the logger's first write, while the agent starts: no store write (and its
    // fsync) stands between the event and the agent.
    let (tx, logger) = stream_job_log(pipeline, job.id, lines);
    let max_output = spec
        .max_output
        .map_or(profile.max_output, |m| m.min(profile.max_output));
    let started = Instant::now();
    let sandbox = agent_box(pipeline, spec, profile, worktree, &dirs);
    // The job's token for the model gateway; it is revoked when `access` is dropped, however the job ends.
    // One token for every round: budgets cover them all together.
    let access = pipeline
        .gateway
        .open(job.id, &spec.repo.to_string(), &spec.agent, profile)
        .await
        .context(Failure::Config)?;
    let ran = run_agent(AgentRun {
        pipeline,
        job,
        spec,
        profile,
        worktree,
        dirs: &dirs,
        sandbox,
        access: access.as_ref(),
        tx: tx.clone(),
        prompt,
        timeout,
        started,
        max_output,
    })
    .await;
    drop(tx);
    let _ = logger.await;
    // Skills nightshift put there are not the agent's work: gone before the worktree's changes are read.
    if let Some(staged) = staged {
        staged.restore().map_err(|e| {
            let why = e.to_string();
            anyhow!(e)
                .context("putting the worktree's own skill folders back")
                .context(Failure::Result(why))
        })?;
    }
    // What a model backend spent is what the gateway metered (every round), whatever the agent says.
    let metered = match &access {
        Some(access) => Some(access.settle().await),
        None => None,
    };
    // The agent is gone: its token goes too.
    drop(access);
    let (mut outcome, verified) = ran?;
    if metered.is_some() {
        outcome.usage = metered;
    }
    if let Some(usage) = &outcome.usage
        && let Err(e) = pipeline.store.record_usage(job.id, usage).await
    {
        warn!("recording what the agent spent failed: {e:#}");
    }
    if let Some(usage) = &outcome.usage {
        crate::metrics::agent_spent(&pipeline.config, &spec.agent, usage);
        note(pipeline, job.id, format!("spent: {usage} (every round)")).await;
    }
    propose(
        pipeline, job, spec, worktree, &dirs, outcome, verified, max_output,
    )
    .await
}

/// The folders a verify step is given instead of the agent's: `verify/{home,tmp,output}` in the job's
/// folder, emptied for each step.
struct FreshDirs {
    home: PathBuf,
    tmp: PathBuf,
    output: PathBuf,
}

impl FreshDirs {
    async fn make(dirs: &JobDirs) -> Result<FreshDirs> {
        let root = dirs.root.join("verify");
        let [home, tmp, output] = empty_folders(&root).await?;
        Ok(FreshDirs { home, tmp, output })
    }

    /// The agent's folder this one stands in for, if any.
    fn instead_of<'a>(&'a self, dirs: &JobDirs, path: &Path) -> Option<&'a PathBuf> {
        [
            (&dirs.home, &self.home),
            (&dirs.tmp, &self.tmp),
            (&dirs.output, &self.output),
        ]
        .into_iter()
        .find_map(|(agents, fresh)| (agents.as_path() == path).then_some(fresh))
    }

    /// The job's variables, with `HOME`, `TMPDIR` and `NIGHTSHIFT_OUTPUT_DIR` naming these folders.
    fn vars(&self, dirs: &JobDirs) -> Vec<(String, String)> {
        dirs.vars
            .iter()
            .map(|(k, v)| {
                let fresh = self.instead_of(dirs, Path::new(v));
                (
                    k.clone(),
                    fresh.map_or_else(|| v.clone(), |p| p.display().to_string()),
                )
            })
            .collect()
    }

    /// The agent's box, on `worktree` (the checkout the steps check), writing these folders instead of
    /// the agent's.
    fn boxed(
        &self,
        dirs: &JobDirs,
        sandbox: &Option<crate::sandbox::BoxSpec>,
        worktree: &Path,
    ) -> Option<crate::sandbox::BoxSpec> {
        sandbox.clone().map(|mut spec| {
            spec.worktree = worktree.to_owned();
            // The agent's own folders are not the steps' to read (a committed link to a file there would
            // check what is not pushed).
            spec.hidden
                .extend([dirs.home.clone(), dirs.tmp.clone(), dirs.output.clone()]);
            for path in &mut spec.writable {
                if let Some(fresh) = self.instead_of(dirs, path) {
                    *path = fresh.clone();
                }
            }
            spec
        })
    }
}

/// This attempt's own folders: its home (so agents share no state and never see the service's), temporary
/// and output folders, the event's payload, and the variables the agent is given about them.
struct JobDirs {
    root: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    output: PathBuf,
    vars: Vec<(String, String)>,
}

/// `root` emptied (whatever was in it removed, no link followed), with an empty `home`, `tmp` and `output`
/// in it.
async fn empty_folders(root: &Path) -> Result<[PathBuf; 3]> {
    match crate::safe_fs::remove_tree_async(root).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("clearing {}", root.display()))
                .context(Failure::Prepare);
        }
        _ => {}
    }
    let folders = ["home", "tmp", "output"].map(|name| root.join(name));
    for dir in &folders {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))
            .context(Failure::Prepare)?;
    }
    Ok(folders)
}

/// Makes the attempt's folders (see [`JobDirs`]), from nothing.
async fn make_job_dirs(pipeline: &Pipeline, job: &ClaimedJob, spec: &JobSpec) -> Result<JobDirs> {
    let job_dir = job_dir(pipeline, job.id, job.attempt);
    // This attempt starts from nothing, like its worktree.
    let [home, tmp, output_dir] = empty_folders(&job_dir).await?;
    let event_path = job_dir.join("event.json");
    tokio::fs::write(
        &event_path,
        pipeline.store.delivery_payload(job.delivery).await?,
    )
    .await
    .context(Failure::Prepare)?;
    let vars = [
        ("NIGHTSHIFT_JOB_ID", job.id.to_string()),
        ("NIGHTSHIFT_REPO", spec.repo.to_string()),
        ("NIGHTSHIFT_EVENT", spec.event.clone()),
        ("NIGHTSHIFT_ACTION", spec.action.clone().unwrap_or_default()),
        ("NIGHTSHIFT_TRIGGER", spec.trigger.clone()),
        ("NIGHTSHIFT_EVENT_PATH", event_path.display().to_string()),
        ("NIGHTSHIFT_OUTPUT_DIR", output_dir.display().to_string()),
        ("HOME", home.display().to_string()),
        ("TMPDIR", tmp.display().to_string()),
    ];

    Ok(JobDirs {
        vars: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        root: job_dir,
        home,
        tmp,
        output: output_dir,
    })
}

/// The agent's output, written to the job log as it comes; the task ends when every sender is dropped.
/// `first` (nightshift's own lines, outside the agent's budget) is written before anything the agent says.
fn stream_job_log(
    pipeline: &Pipeline,
    job_id: JobId,
    first: Vec<String>,
) -> (crate::agent::log::JobLog, tokio::task::JoinHandle<()>) {
    // The agent's output reaches the job log as it comes, in small batches, within the job's budget
    // (`max_job_log`): what waits for the store never exceeds it, whatever the agent writes.
    let (tx, mut rx) = crate::agent::log::JobLog::new(pipeline.config.max_job_log);
    let store = pipeline.store.clone();
    let logger = tokio::spawn(async move {
        if !first.is_empty()
            && let Err(e) = store
                .append_log(job_id, LogStream::Nightshift, &first)
                .await
        {
            warn!("writing the job log failed: {e:#}");
        }
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            // One write per run of lines from the same stream, in order.
            for run in batch.chunk_by(|a, b| a.0 == b.0) {
                let lines: Vec<String> = run.iter().map(|(_, line)| line.clone()).collect();
                if let Err(e) = store.append_log(job_id, run[0].0, &lines).await {
                    warn!("writing the job log failed: {e:#}");
                }
            }
        }
    });
    (tx, logger)
}

/// What the agent is given: the repository's instructions and skills (read from its default branch), the
/// trigger's skills put in the worktree, and the prompt. What was read and skipped is said in the job log.
struct AgentInput {
    prompt: String,
    /// Skills nightshift put in the worktree, taken out again before the agent's changes are read.
    staged: Option<skill::Staged>,
    timeout: Duration,
    /// For the job log: what was read, skipped and staged, and the agent's start.
    lines: Vec<String>,
}

async fn prepare_agent_input(
    pipeline: &Pipeline,
    spec: &JobSpec,
    profile: &crate::config::AgentProfile,
    worktree: &crate::repo::workspace::Worktree,
    job_dir: &std::path::Path,
    ready: String,
) -> Result<AgentInput> {
    // What the repository says about itself (AGENTS.md, skills), from its default branch.
    let context_dir = job_dir.join("repo");
    let exported = pipeline
        .workspaces
        .export_context(&spec.repo, &spec.default_branch, &context_dir)
        .await
        .context("reading the repository's AGENTS.md and skills from its default branch")
        .context(Failure::Prepare)?;
    let origin = format!(
        "from `{}` at {}",
        if spec.default_branch.is_empty() {
            "the default branch"
        } else {
            &spec.default_branch
        },
        &exported.commit[..exported.commit.len().min(12)]
    );
    let repo_context = RepoContext::read(&context_dir, origin, exported.agents_md);

    // Skills: the service's and the repository's, the ones the trigger names, where the agent looks.
    let (available, skill_problems) = skill::available(&pipeline.config.skills, &context_dir);
    let mut lines = vec![ready];
    // Symlinks and submodules of the default branch are never followed: said, not read.
    lines.extend(exported.skipped.iter().map(ToString::to_string));
    lines.extend(
        repo_context
            .refused
            .iter()
            .map(|why| format!("skipped a repository instruction file: {why}")),
    );
    lines.extend(
        skill_problems
            .iter()
            .map(|d| format!("skipped an invalid skill: {d}")),
    );
    let selected = skill::select(&available, &spec.skills, spec.all_skills)
        .map_err(|e| anyhow!(e.clone()).context(Failure::Trigger(e)))?;
    if !repo_context.agents_md.is_empty() {
        let paths: Vec<&str> = repo_context
            .agents_md
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        lines.push(format!(
            "repository instructions {}: {}",
            repo_context.origin,
            paths.join(", ")
        ));
    }
    if !selected.is_empty() {
        let how = if profile.backend.edits_files() {
            "in the worktree"
        } else {
            "in the prompt"
        };
        lines.push(format!("skills {how}: {}", skill::describe(&selected)));
    }
    let staged = if profile.backend.edits_files() {
        let staged = skill::stage(&selected, &worktree.path, &job_dir.join("stash"))
            .context("putting the skills in the worktree")
            .context(Failure::Prepare)?;
        lines.extend(staged.notes.iter().cloned());
        Some(staged)
    } else {
        None
    };
    let prompt = prompt::compose(
        &profile.backend,
        &spec.prompt,
        spec.output,
        &repo_context,
        &selected,
        spec.all_skills,
    );
    let timeout = spec
        .timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(profile.timeout);
    let starting = format!(
        "starting agent `{}` ({}, {})",
        spec.agent,
        profile.backend.kind(),
        match (profile.backend.edits_files(), profile.sandbox) {
            (false, _) => "no program",
            (true, crate::config::SandboxKind::Bubblewrap) => "in its box",
            (true, crate::config::SandboxKind::None) => "WITHOUT a box: sandbox: none",
        }
    );
    info!("{starting}");
    lines.push(starting);
    Ok(AgentInput {
        prompt,
        staged,
        timeout,
        lines,
    })
}

/// The agent's box, when its profile has one.
fn agent_box(
    pipeline: &Pipeline,
    spec: &JobSpec,
    profile: &crate::config::AgentProfile,
    worktree: &crate::repo::workspace::Worktree,
    dirs: &JobDirs,
) -> Option<crate::sandbox::BoxSpec> {
    // The agent's box: it writes its worktree, home, temporary and output folders; it reads its job's
    // folder and this repository's mirror (the worktree's git objects); the rest of the data dir, the
    // config, the key and the store are hidden (crate::sandbox).
    (profile.sandbox == crate::config::SandboxKind::Bubblewrap).then(|| {
        let config = &pipeline.config;
        crate::sandbox::BoxSpec {
            worktree: worktree.path.clone(),
            // A fork's pull request is read, not changed, unless its trigger opted in (`forks: allow`).
            read_only_worktree: spec.read_only,
            writable: [dirs.home.clone(), dirs.tmp.clone(), dirs.output.clone()]
                .into_iter()
                .chain(profile.shared.writable.iter().cloned())
                .collect(),
            read_only: [
                dirs.root.clone(),
                config
                    .data_dir
                    .join("mirrors")
                    .join(spec.repo.owner())
                    .join(format!("{}.git", spec.repo.name())),
            ]
            .into_iter()
            .chain(profile.shared.read_only.iter().cloned())
            .collect(),
            hidden: crate::sandbox::hidden_paths(
                &config.data_dir,
                (pipeline.env)("HOME").as_deref().map(std::path::Path::new),
                &config.secret_files,
                &config.store,
            ),
            network: crate::sandbox::Network::None,
            limits: profile.limits,
            init: std::env::current_exe().unwrap_or_default(),
        }
    })
}

/// One run of the agent: what it is given and where.
struct AgentRun<'a> {
    pipeline: &'a Arc<Pipeline>,
    job: &'a ClaimedJob,
    spec: &'a JobSpec,
    profile: &'a crate::config::AgentProfile,
    worktree: &'a crate::repo::workspace::Worktree,
    dirs: &'a JobDirs,
    sandbox: Option<crate::sandbox::BoxSpec>,
    access: Option<&'a crate::gateway::JobAccess>,
    tx: crate::agent::log::JobLog,
    prompt: String,
    timeout: Duration,
    started: Instant,
    max_output: usize,
}

/// Runs the agent, then the verify steps; a failed step goes back to the agent, up to `verify_rounds`
/// times. Returns the last round's outcome and what verification found.
async fn run_agent(run: AgentRun<'_>) -> Result<(agent::AgentOutcome, Verified)> {
    let AgentRun {
        pipeline,
        job,
        spec,
        profile,
        worktree,
        dirs,
        sandbox,
        access,
        tx,
        prompt,
        timeout,
        started,
        max_output,
    } = run;
    let (home, output_dir) = (&dirs.home, &dirs.output);
    // The openai backend runs inside nightshift, never in a box.
    let boxed = sandbox.is_some() && profile.backend.edits_files();
    let deadline = started + timeout;
    let max_turns = match (profile.max_turns, spec.max_turns) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let vars = dirs.vars.clone();
    // One round of the agent: the first with the prompt, the next ones (after a failed verify step) with the
    // follow-up, resuming the CLI's session when it has one. The timeout covers every round together.
    let access_ref = access;
    let run_round = |round_prompt: String, resume: Option<String>, history: Vec<agent::Turn>| {
        let sandbox = sandbox.clone();
        let vars = vars.clone();
        let tx = tx.clone();
        let model = access_ref.map(|a| a.model_access(boxed));
        let home = home.clone();
        let output_dir = output_dir.clone();
        async move {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!(
                    "the agent ran out of time after {}",
                    humantime::format_duration(timeout)
                );
                return Err(anyhow!(why.clone()).context(Failure::Agent(why)));
            }
            let round_started = Instant::now();
            let outcome = agent::run(AgentJob {
                profile_name: &spec.agent,
                profile,
                worktree: &worktree.path,
                prompt: &round_prompt,
                home: &home,
                output_dir: &output_dir,
                vars,
                sandbox,
                timeout: left,
                max_turns,
                max_output,
                env: &*pipeline.env,
                log: tx,
                model,
                resume,
                history: &history,
            })
            .await
            // The agent could not be started (a missing API key or CLI): the operator's to fix.
            .context(Failure::Config)?;
            note(
                pipeline,
                job.id,
                format!(
                    "agent ended: {} after {} ms",
                    outcome.ended,
                    round_started.elapsed().as_millis()
                ),
            )
            .await;
            if let Some(why) = access_ref.and_then(|a| a.failure()) {
                return Err(anyhow!(why.clone()).context(Failure::Agent(why)));
            }
            if let Some(failure) = &outcome.failure {
                // A timeout or a limit is said as it is; any other failure (an exit status, an endpoint's
                // answer) only as "the agent failed", with the details in the log.
                let public = public_failure(failure);
                return Err(anyhow!(failure.clone()).context(Failure::Agent(public)));
            }
            Ok(outcome)
        }
    };
    async {
        let mut outcome = run_round(prompt.clone(), None, Vec::new()).await?;
        // The rounds so far, for a backend that keeps no session of its own (an endpoint).
        let mut turns = vec![agent::Turn {
            prompt: prompt.clone(),
            answer: outcome.message.clone(),
        }];
        // Verification: the steps run in the agent's box after it ends; a failed step goes back to the
        // agent, with what failed, up to `verify_rounds` times.
        let mut verified = Verified::default();
        let mut round = 0;
        while !spec.verify.is_empty() {
            // The steps check what delivery pushes: the tree a commit of the worktree holds now, checked
            // out fresh beside it (nothing the agent left that a commit leaves out is there). What fails
            // here fails on what the agent left (a file git cannot add, a folder it cannot read): said as
            // the agent's result, with the details in the job log.
            let unreadable = || {
                Failure::Result(
                    "nightshift could not check out the agent's work for the verify steps".to_owned(),
                )
            };
            let tree = worktree
                .tree_now(&skill::STAGED)
                .await
                .context("reading the agent's work for the verify steps")
                .with_context(unreadable)?;
            let checkout = worktree
                .check_out_for_verify(&tree)
                .await
                .with_context(unreadable)?;
            note(
                pipeline,
                job.id,
                format!(
                    "verify: the steps run on a fresh checkout of what the commit would hold (tree {}): \
                     what git ignores (installed dependencies, build output) is not in it",
                    &tree[..tree.len().min(12)]
                ),
            )
            .await;
            let steps = run_verify_steps(
                pipeline,
                job,
                &spec.verify,
                profile,
                &checkout,
                &sandbox,
                dirs,
                deadline,
            )
            .await;
            checkout.remove().await;
            let steps = steps?;
            verified.steps = steps.results;
            verified.tree = Some(tree);
            let Some(failed) = steps.failed else {
                verified.failed = None;
                break;
            };
            if round >= spec.verify_rounds {
                verified.failed = Some(failed);
                break;
            }
            round += 1;
            note(
                pipeline,
                job.id,
                format!(
                    "verify: `{}` failed ({}); round {} of {}: the agent is given the failure",
                    failed.name,
                    failed.status,
                    round + 1,
                    spec.verify_rounds + 1
                ),
            )
            .await;
            let follow_up = crate::sink::texts::verify_follow_up(
                &failed.name,
                &failed.status,
                &failed.tail,
                round,
                spec.verify_rounds,
            );
            // The CLIs keep their context in the same session, an endpoint gets the rounds before as the
            // conversation, a program gets the task again with the follow-up after it.
            outcome = match (outcome.session.clone(), &profile.backend) {
                (Some(session), _) => {
                    run_round(follow_up.clone(), Some(session), Vec::new()).await?
                }
                (None, crate::config::Backend::OpenAi(_)) => {
                    run_round(follow_up.clone(), None, turns.clone()).await?
                }
                (None, _) => {
                    run_round(format!("{prompt}\n\n{follow_up}"), None, Vec::new()).await?
                }
            };
            turns.push(agent::Turn {
                prompt: follow_up,
                answer: outcome.message.clone(),
            });
        }
        anyhow::Ok((outcome, verified))
    }
    .await
}

/// What the run proposes: the agent's result as read from its output folder (with verification's evidence),
/// and for a pull request the commit made of its changes. A run still failing verification proposes
/// nothing, unless its trigger wants the draft.
#[allow(clippy::too_many_arguments)]
async fn propose(
    pipeline: &Pipeline,
    job: &ClaimedJob,
    spec: &JobSpec,
    worktree: &crate::repo::workspace::Worktree,
    dirs: &JobDirs,
    outcome: agent::AgentOutcome,
    verified: Verified,
    max_output: usize,
) -> Result<Proposal> {
    let output_dir = &dirs.output;
    // Still failing after the last round: nothing is pushed or posted as if it were done, unless the
    // trigger wants the draft.
    let draft_failing = match &verified.failed {
        Some(failed)
            if !(spec.verify_fail == crate::trigger::VerifyFail::Draft
                && spec.output == OutputKind::PullRequest) =>
        {
            let public =
                crate::sink::texts::verify_failed(&failed.name, &failed.status, &failed.tail);
            return Err(
                anyhow!("failed verification: `{}` ({})", failed.name, failed.status)
                    .context(Failure::Verify(public)),
            );
        }
        Some(failed) => Some(failed.name.clone()),
        None => None,
    };
    // Off the async threads: the reads never block on a FIFO, but a slow filesystem must not stall them.
    let result = {
        let (dir, message, truncated) = (
            output_dir.clone(),
            outcome.message.clone(),
            outcome.truncated,
        );
        tokio::task::spawn_blocking(move || result::read(&dir, message, truncated, max_output))
            .await
            .context("reading the agent's result")?
    };
    let result = result.map_err(|e| {
        let why = e.to_string();
        e.context(Failure::Result(why))
    })?;
    let mut result = result;
    // The evidence: one line per step, in whatever the job posts.
    if !verified.steps.is_empty() {
        let evidence = crate::sink::texts::verify_evidence(&verified.steps);
        result.message = format!("{}\n\n{evidence}", result.message.trim_end());
        if let Some(review) = &mut result.review {
            review.summary = format!("{}\n\n{evidence}", review.summary.trim_end());
        }
    }
    if result.truncated {
        note(
            pipeline,
            job.id,
            format!("the agent's message was cut at {max_output} bytes"),
        )
        .await;
    }
    if result.review.is_some() && spec.output != OutputKind::Review {
        note(
            pipeline,
            job.id,
            format!(
                "review.json ignored: the output is `{}`, not `review`",
                spec.output
            ),
        )
        .await;
    }

    // For a pull request, the commit nightshift makes of the agent's changes, in the mirror, now: the
    // worktree goes when the run ends, and the commit is what delivery pushes (after a restart too).
    let (commit, stat) = if spec.output == OutputKind::PullRequest {
        let title = crate::sink::texts::pull_request_title(
            spec.output_title.as_deref().or(spec.title.as_deref()),
            spec.number,
        );
        let message = crate::sink::texts::commit_message(&spec.trigger, &title, spec.number);
        let changes = worktree
            .commit_changes(
                &message,
                crate::sink::pull_request::AUTHOR,
                verified.tree.as_deref(),
                &skill::STAGED,
            )
            .await
            .context("committing the agent's changes")?;
        const SHOWN: usize = 20;
        let mut lines: Vec<String> = changes
            .nested
            .iter()
            .take(SHOWN)
            .map(|p| format!("left out of the commit: {p} (a repository inside the worktree)"))
            .collect();
        if changes.nested.len() > SHOWN {
            lines.push(format!(
                "left out of the commit: {} more repositories inside the worktree",
                changes.nested.len() - SHOWN
            ));
        }
        lines.extend(changes.stat.lines().map(str::to_owned));
        if let Some(commit) = &changes.commit {
            lines.push(format!("committed the agent's changes as {commit}"));
        } else {
            lines.push("the agent changed no file".to_owned());
        }
        pipeline
            .store
            .append_log(job.id, LogStream::Nightshift, &lines)
            .await?;
        (changes.commit, changes.stat)
    } else {
        (None, String::new())
    };
    Ok(Proposal {
        message: result.message,
        truncated: result.truncated,
        review: result.review,
        head: worktree.commit.clone(),
        commit,
        stat,
        usage: outcome.usage,
        verify_failed: draft_failing,
    })
}

/// What verification found: every step's result (name, time, passed) of the last run of the steps, and the
/// step that still fails, if one does.
#[derive(Default)]
struct Verified {
    steps: Vec<(String, u64, bool)>,
    failed: Option<FailedStep>,
    /// The tree the last run of the steps checked: what is committed.
    tree: Option<String>,
}

struct FailedStep {
    name: String,
    status: String,
    tail: String,
}

struct StepsRun {
    results: Vec<(String, u64, bool)>,
    failed: Option<FailedStep>,
}

/// How much of a failed step's output is kept for the agent and the failure note.
const STEP_TAIL: usize = 8 * 1024;

/// Runs the verify steps in order, in the agent's box (same limits, no model access), stopping at the first
/// that fails. Each step's output reaches the job log; the tail of a failed one is kept.
#[allow(clippy::too_many_arguments)]
async fn run_verify_steps(
    pipeline: &Arc<Pipeline>,
    job: &ClaimedJob,
    steps: &[crate::trigger::VerifyStep],
    profile: &crate::config::AgentProfile,
    checkout: &crate::repo::workspace::VerifyTree,
    sandbox: &Option<crate::sandbox::BoxSpec>,
    dirs: &JobDirs,
    deadline: Instant,
) -> Result<StepsRun> {
    let worktree = checkout.path.as_path();
    let mut results = Vec::new();
    for step in steps {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_secs(step.timeout_secs).min(left);
        if timeout.is_zero() {
            let why = "the job ran out of time before its verify steps ended".to_owned();
            return Err(anyhow!(why.clone()).context(Failure::Agent(why)));
        }
        // Each step gets a home, temporary and output folder of its own, empty: what the agent left in its
        // own (a `~/.cargo/config.toml` whose runner is `true`, an `~/.npmrc` whose script shell is
        // `/bin/true`, a Python `usercustomize`) cannot make a step pass.
        let fresh = FreshDirs::make(dirs).await?;
        checkout
            .restore_git_file()
            .await
            .context("putting the checkout's .git back")?;
        let (home, output_dir) = (&fresh.home, &fresh.output);
        let vars = fresh.vars(dirs);
        // The checkout's git folder (with the tree's new objects, which are not in the mirror) is shown
        // read-only: the steps' git reads it (`git diff --cached`) and cannot change it.
        let sandbox = &fresh.boxed(dirs, sandbox, worktree).map(|mut spec| {
            spec.read_only.push(checkout.git_dir.clone());
            spec
        });
        note(pipeline, job.id, format!("verify: running `{}`", step.name)).await;
        let mut step_profile = profile.clone();
        step_profile.backend = crate::config::Backend::Command(step.argv.clone());
        step_profile.prompt_via = crate::config::PromptVia::Stdin;
        // The step's output goes to the job log as the agent's does, and its tail is kept.
        let (tx, mut rx) = crate::agent::log::JobLog::new(pipeline.config.max_job_log);
        let store = pipeline.store.clone();
        let job_id = job.id;
        let collector = tokio::spawn(async move {
            let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            let mut kept = 0usize;
            while let Some((stream, line)) = rx.recv().await {
                if let Err(e) = store
                    .append_log(job_id, stream, std::slice::from_ref(&line))
                    .await
                {
                    warn!("writing the job log failed: {e:#}");
                }
                kept += line.len() + 1;
                tail.push_back(line);
                while kept > STEP_TAIL && tail.len() > 1 {
                    kept -= tail.pop_front().map_or(0, |l| l.len() + 1);
                }
            }
            tail.into_iter().collect::<Vec<_>>().join("\n")
        });
        let started = Instant::now();
        let outcome = agent::run(AgentJob {
            profile_name: &step.name,
            profile: &step_profile,
            worktree,
            prompt: "",
            home,
            output_dir,
            vars: vars.to_vec(),
            sandbox: sandbox.clone(),
            timeout,
            max_turns: None,
            max_output: STEP_TAIL * 4,
            env: &*pipeline.env,
            log: tx,
            model: None,
            resume: None,
            history: &[],
        })
        .await
        .with_context(|| format!("starting the verify step `{}`", step.name))
        .context(Failure::Config)?;
        let ms = started.elapsed().as_millis() as u64;
        let logged = collector.await.unwrap_or_default();
        // What it printed on stdout (a program's "message") is in the job log too, with the rest.
        if !outcome.message.trim().is_empty() {
            let lines: Vec<String> = outcome.message.lines().map(str::to_owned).collect();
            if let Err(e) = pipeline
                .store
                .append_log(job.id, LogStream::Stdout, &lines)
                .await
            {
                warn!("writing the job log failed: {e:#}");
            }
        }
        let mut passed = outcome.failure.is_none();
        let mut ended = outcome.ended.clone();
        let mut changed_tail = None;
        if passed {
            // A step checks the work; one that changed files the commit holds (the agent's code, run by
            // a test, rewriting itself) checked something else than what is pushed.
            let changed = checkout
                .changed()
                .await
                .context("reading what the verify step left")?;
            if !changed.is_empty() {
                passed = false;
                ended = "it changed files the commit holds".to_owned();
                changed_tail = Some(format!(
                    "The step changed {}: a verify step must check the work, not change it (an install \
                     that rewrites a lock file: use `npm ci`, `yarn install --frozen-lockfile`, \
                     `cargo test --locked`).",
                    changed
                        .iter()
                        .take(20)
                        .map(|p| format!("`{}`", p.escape_debug()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        note(
            pipeline,
            job.id,
            format!(
                "verify: `{}` {} ({}) in {ms} ms",
                step.name,
                if passed { "passed" } else { "failed" },
                ended
            ),
        )
        .await;
        results.push((step.name.clone(), ms, passed));
        if !passed {
            // Its output: what it printed to stdout (its "message") and what reached the log.
            let mut tail = String::new();
            if !outcome.message.trim().is_empty() {
                tail.push_str(outcome.message.trim_end());
                tail.push('\n');
            }
            tail.push_str(&logged);
            if let Some(changed) = changed_tail {
                tail.push_str(&format!("\n{changed}"));
            }
            let cut = tail.len().saturating_sub(STEP_TAIL);
            let cut = (cut..=tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(tail.len());
            return Ok(StepsRun {
                results,
                failed: Some(FailedStep {
                    name: step.name.clone(),
                    status: ended,
                    tail: tail[cut..].to_owned(),
                }),
            });
        }
    }
    Ok(StepsRun {
        results,
        failed: None,
    })
}

/// What of an agent's failure is said on GitHub: a timeout or a profile limit, which nightshift words
/// itself, as it is; anything else (an exit status, an endpoint's or a CLI's error, whose text the model
/// endpoint or the agent may have written) only as "the agent failed". The texts are matched whole, not
/// searched for, so a failure that merely contains the words of a limit is not posted.
fn public_failure(failure: &str) -> String {
    const LIMITS: [&str; 2] = [
        "Claude Code reached the profile's max_turns",
        "Claude Code reached the profile's max_cost_usd",
    ];
    let timed_out = failure
        .strip_prefix("the agent ran out of time after ")
        .is_some_and(|d| humantime::parse_duration(d).is_ok());
    if timed_out || LIMITS.contains(&failure) {
        failure.to_owned()
    } else {
        "the agent failed".to_owned()
    }
}

#[cfg(test)]
mod public_failure_tests {
    use super::public_failure;

    #[test]
    fn only_nightshifts_own_words_for_a_limit_are_posted() {
        for said in [
            "the agent ran out of time after 10m",
            "the agent ran out of time after 1h 30m",
            "Claude Code reached the profile's max_turns",
        ] {
            assert_eq!(public_failure(said), said);
        }
        // Texts a hostile model endpoint or CLI output chooses, dressed up as a limit.
        for hidden in [
            "the model endpoint answered without a message (finish_reason: \"reached the profile's \
             limit; internal gateway at http://10.0.0.5:8080\")",
            "Claude Code failed (success): API Error: 400 reached the profile's budget /srv/nightshift",
            "Codex failed: Claude Code reached the profile's max_turns",
            "the agent ran out of time after 10m; also see /etc/nightshift/nightshift.yml",
        ] {
            assert_eq!(public_failure(hidden), "the agent failed", "{hidden}");
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::keep_lease;
    use crate::store::Lease;

    const LEASE: Duration = Duration::from_secs(60);

    /// Runs the heartbeat on paused time until it gives up; returns what it said and how long it took.
    async fn until_given_up(
        renew: impl FnMut() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = anyhow::Result<Lease>> + Send>,
        >,
    ) -> (Lease, Duration) {
        let started = tokio::time::Instant::now();
        let lease = keep_lease(LEASE, true, renew).await;
        (lease, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_give_the_lease_up_within_two_thirds_of_it() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let (lease, after) = until_given_up(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err(anyhow::anyhow!("disk I/O error")) })
        })
        .await;
        assert_eq!(lease, Lease::Lost);
        assert!(after <= LEASE * 2 / 3, "{after:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_gives_the_lease_up_within_two_thirds_of_it() {
        let (lease, after) =
            until_given_up(|| Box::pin(std::future::pending::<anyhow::Result<Lease>>())).await;
        assert_eq!(lease, Lease::Lost);
        assert!(after <= LEASE * 2 / 3, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_that_succeed_keep_the_lease_and_one_that_fails_alone_does_not_lose_it() {
        // Held, failed, held, held, then the store goes away for good.
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let (lease, after) = until_given_up(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match n {
                    1 => Err(anyhow::anyhow!("busy")),
                    0 | 2 | 3 => Ok(Lease::Held),
                    _ => std::future::pending().await,
                }
            })
        })
        .await;
        assert_eq!(lease, Lease::Lost);
        // Four renewals a third of the lease apart, then two thirds without one.
        assert_eq!(after, LEASE * 4 / 3 + LEASE * 2 / 3);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_request_or_a_lost_job_ends_the_heartbeat_at_once() {
        for said in [Lease::CancelRequested, Lease::Lost] {
            let (lease, after) = until_given_up(move || Box::pin(async move { Ok(said) })).await;
            assert_eq!((lease, after), (said, LEASE / 3));
        }
    }
}

#[cfg(test)]
mod owner_tests {
    use super::provably_dead;

    #[test]
    fn only_a_worker_of_this_host_whose_process_is_gone_is_provably_dead() {
        let host = crate::hostname();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        assert!(provably_dead(&format!("{host}-{gone}-w3")));
        // Alive: this process, and the parent of every process here.
        assert!(!provably_dead(&format!("{host}-{}-w0", std::process::id())));
        assert!(!provably_dead(&format!("{host}-1-w0")));
        // Another host's worker may be running; names that are not a worker's prove nothing.
        assert!(!provably_dead(&format!("elsewhere-{gone}-w3")));
        for hostile in [
            format!("{host}-0-w0"),
            format!("{host}--1-w0"),
            format!("{host}-{gone}"),
            format!("{host}-{gone}-x3"),
            String::new(),
        ] {
            assert!(!provably_dead(&hostile), "{hostile}");
        }
    }
}
