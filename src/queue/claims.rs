//! Claims shared by the workers of one process. A worker that wants a job joins the waiting ones; if no
//! claim is under way, it claims for every worker waiting at that moment, itself included, in one call
//! ([`Store::claim_jobs`]), and hands each the job leased to it (or none). Workers that come while a claim is
//! under way wait for the next, which one of them makes as soon as this one ends. A lone worker claims for
//! itself at once, as before; many idle workers woken together cost the store one claim instead of one each,
//! and they no longer race one another for the same first candidates of the fair order (measured on
//! `benches/claims.rs`: see `migrations/postgres/0012_claim_batch.sql`).
//!
//! A worker that stops waiting (its task ended) while a job was being leased to it does not strand the job:
//! the job is given back to the queue at once ([`Store::release_job`]), its start not counted.

use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use tokio::sync::oneshot;
use tracing::warn;

use crate::store::{ClaimPolicy, ClaimedJob, Store};

/// The claims of one process's workers (see the module's notes).
pub struct Claims {
    store: Arc<dyn Store>,
    policy: ClaimPolicy,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A worker is claiming for the ones that waited before it began (or has been asked to).
    claiming: bool,
    /// Workers waiting for the next claim, first come first.
    waiting: Vec<Waiter>,
}

struct Waiter {
    owner: String,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Job(Box<ClaimedJob>),
    Nothing,
    Failed(String),
    /// Claim for the waiting workers now (the claim before ended while this one waited).
    Lead,
}

impl Claims {
    pub fn new(store: Arc<dyn Store>, policy: ClaimPolicy) -> Claims {
        Claims {
            store,
            policy,
            state: Mutex::new(State::default()),
        }
    }

    /// A job leased to `owner`, or `None` when none may start now: [`Store::claim_job`]'s answer, claimed
    /// together with the other workers waiting at the same time.
    pub async fn next(&self, owner: &str) -> Result<Option<ClaimedJob>> {
        let mut leading = false;
        loop {
            let (reply, answer) = oneshot::channel();
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.waiting.push(Waiter {
                    owner: owner.to_owned(),
                    reply,
                });
                if !state.claiming {
                    state.claiming = true;
                    leading = true;
                }
            }
            let mut waiting = Waiting {
                claims: self,
                owner,
                answer: Some(answer),
            };
            if std::mem::take(&mut leading) {
                self.lead().await;
            }
            match waiting.answer().await {
                Ok(Reply::Job(job)) => return Ok(Some(*job)),
                Ok(Reply::Nothing) => return Ok(None),
                Ok(Reply::Failed(e)) => return Err(anyhow!(e)),
                Ok(Reply::Lead) => leading = true,
                // The claim that would have answered was dropped (its worker's task ended mid-claim).
                Err(_) => return Err(anyhow!("the claim this worker waited for was abandoned")),
            }
        }
    }

    /// Claims for every worker waiting now and answers each; then hands the next claim to a worker that
    /// came meanwhile (also when this future is dropped mid-claim: the others never wait for a claim that
    /// nobody makes).
    async fn lead(&self) {
        let _next = HandOver(self);
        let mut batch =
            std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).waiting);
        // Workers that went away before the claim began get nothing leased to them.
        batch.retain(|w| !w.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let owners: Vec<String> = batch.iter().map(|w| w.owner.clone()).collect();
        let claimed = crate::metrics::time_store(
            "claim",
            self.store.claim_jobs(&owners, self.policy.clone()),
        )
        .await;
        match claimed {
            Ok(jobs) => {
                let mut jobs = jobs.into_iter();
                for waiter in batch {
                    let Some(job) = jobs.next() else {
                        let _ = waiter.reply.send(Reply::Nothing);
                        continue;
                    };
                    if let Err(Reply::Job(job)) = waiter.reply.send(Reply::Job(Box::new(job))) {
                        self.give_back(*job, waiter.owner);
                    }
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                for waiter in batch {
                    let _ = waiter.reply.send(Reply::Failed(e.clone()));
                }
            }
        }
    }

    /// A job leased to a worker that no longer waits: back to the queue, its start not counted.
    fn give_back(&self, job: ClaimedJob, owner: String) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.release_job(job.id, &owner).await {
                warn!(job = %job.id, "giving back a job nobody waited for failed (its lease will expire): {e:#}");
            }
        });
    }
}

/// A worker waiting for its answer. Dropped before it came (the worker's task ended), it takes what was
/// already sent: a job is given back, a turn to claim is handed on.
struct Waiting<'a> {
    claims: &'a Claims,
    owner: &'a str,
    answer: Option<oneshot::Receiver<Reply>>,
}

impl Waiting<'_> {
    async fn answer(&mut self) -> Result<Reply, oneshot::error::RecvError> {
        let answer = self.answer.as_mut().expect("answered once").await;
        self.answer = None;
        answer
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        // Nothing can be sent after this: a claim that answers later takes its job back itself.
        answer.close();
        match answer.try_recv() {
            Ok(Reply::Job(job)) => self.claims.give_back(*job, self.owner.to_owned()),
            Ok(Reply::Lead) => drop(HandOver(self.claims)),
            _ => {}
        }
    }
}

/// Ends a claim: the first worker that came meanwhile claims next, or nobody is claiming.
struct HandOver<'a>(&'a Claims);

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        while !state.waiting.is_empty() {
            let next = state.waiting.remove(0);
            if next.reply.send(Reply::Lead).is_ok() {
                return;
            }
        }
        state.claiming = false;
    }
}

#[cfg(test)]
impl Claims {
    /// Workers waiting for a claim that has not begun.
    fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::{TestDb, job_of, policy, queue};
    use crate::store::{Ending, JobState, Lease};

    /// Waits (polling, with a deadline) until `done` holds.
    async fn until<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Eight workers claiming together take every job exactly once, each leased to the worker that runs it.
    async fn workers_claiming_together_each_run_their_own_jobs(db: TestDb) {
        let store = db.store();
        for r in 0..10 {
            let repo = format!("o/r{r}");
            let jobs: Vec<_> = (0..4)
                .map(|k| job_of(&format!("t{k}"), &repo, "x"))
                .collect();
            queue(&store, &format!("d{r}"), &repo, &jobs).await;
        }
        let claims = Arc::new(Claims::new(store.clone(), policy(Duration::from_secs(600))));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (claims, store) = (claims.clone(), store.clone());
            tasks.spawn(async move {
                let owner = format!("w{w}");
                let mut ran = Vec::new();
                loop {
                    let Some(job) = claims.next(&owner).await.unwrap() else {
                        let counts = store.counts().await.unwrap();
                        if counts
                            .jobs
                            .iter()
                            .all(|(s, n)| *s != JobState::Queued || *n == 0)
                        {
                            return ran;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    };
                    // Only its own worker holds the job.
                    assert!(
                        store
                            .finish_job(job.id, &owner, Ending::Succeeded)
                            .await
                            .unwrap()
                    );
                    ran.push(job.id.0);
                }
            });
        }
        let mut ran: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
        ran.sort();
        let all = ran.len();
        ran.dedup();
        assert_eq!((all, ran.len()), (40, 40), "every job once");
        let records = store.jobs().await.unwrap();
        assert!(
            records
                .iter()
                .all(|r| (r.state, r.attempts) == (JobState::Succeeded, 1))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn workers_claiming_together_each_run_their_own_jobs_on_sqlite() {
        workers_claiming_together_each_run_their_own_jobs(TestDb::sqlite().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn workers_claiming_together_each_run_their_own_jobs_on_postgres() {
        workers_claiming_together_each_run_their_own_jobs(TestDb::postgres().await).await;
    }

    /// A worker that stops waiting while a claim leases it a job (its task ended: the service stopping)
    /// leaves no job stranded under its name until the lease runs out: the job is queued again at once, its
    /// start not counted, and the next claim takes it. The claim is held in the server (the repository's
    /// lock, taken by the test) while the worker goes away.
    #[tokio::test]
    async fn a_job_leased_to_a_worker_that_went_away_is_queued_again_at_once() {
        let db = TestDb::postgres().await;
        let store = db.store();
        let pool = db.postgres_pool().unwrap();
        queue(&store, "one", "o/one", &[job_of("t", "o/one", "x")]).await;
        queue(
            &store,
            "two",
            "o/two",
            &[job_of("t1", "o/two", "x"), job_of("t2", "o/two", "x")],
        )
        .await;
        let mut lock = pool.acquire().await.unwrap();
        for repo in ["o/one", "o/two"] {
            sqlx::query("SELECT pg_advisory_lock(28274, hashtext($1))")
                .bind(repo)
                .execute(&mut *lock)
                .await
                .unwrap();
        }
        let waiting_locks = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(pool)
            .await
            .unwrap()
        };
        let claims = Arc::new(Claims::new(store.clone(), policy(Duration::from_secs(600))));
        let next = |owner: &'static str| {
            let claims = claims.clone();
            tokio::spawn(async move { claims.next(owner).await.unwrap() })
        };
        // X claims for itself and waits in the server for o/one; L and B wait for the claim after it.
        let x = next("X");
        until("X's claim waits for o/one", async || {
            waiting_locks().await == 1
        })
        .await;
        let l = next("L");
        let b = next("B");
        until("L and B wait", async || claims.waiting() == 2).await;
        sqlx::query("SELECT pg_advisory_unlock(28274, hashtext('o/one'))")
            .execute(&mut *lock)
            .await
            .unwrap();
        assert_eq!(x.await.unwrap().unwrap().repo, "o/one");
        // L claims for L and B together, and waits in the server for o/two; B goes away meanwhile.
        until("L's claim for both waits for o/two", async || {
            claims.waiting() == 0 && waiting_locks().await == 1
        })
        .await;
        b.abort();
        assert!(b.await.unwrap_err().is_cancelled());
        sqlx::query("SELECT pg_advisory_unlock(28274, hashtext('o/two'))")
            .execute(&mut *lock)
            .await
            .unwrap();
        let first = l.await.unwrap().unwrap();
        assert_eq!(first.repo, "o/two");
        // The other job of o/two was leased to B (it started) and is queued again, its start not counted.
        let other = if first.trigger == "t1" { "t2" } else { "t1" };
        let given_back = async || {
            let jobs = store.jobs().await.unwrap();
            jobs.into_iter().find(|j| j.trigger == other).unwrap()
        };
        until("B's job is given back", async || {
            let job = given_back().await;
            job.state == JobState::Queued && job.started_at.is_some()
        })
        .await;
        let t2 = given_back().await;
        assert_eq!(t2.attempts, 0);
        let again = claims.next("C").await.unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (t2.id, 1));
        assert_eq!(
            store
                .renew_lease(again.id, "B", Duration::from_secs(600))
                .await
                .unwrap(),
            Lease::Lost,
            "B holds nothing"
        );
    }
}
