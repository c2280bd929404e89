//! Whether this process should be sent traffic. `/healthz` says only that the process answers; `/readyz`
//! says whether it can do its work: the store takes writes, it is not draining for a stop, and its workers
//! are alive. A load balancer or Kubernetes stops sending webhooks to a replica that is not ready, so another
//! replica (or GitHub's redelivery) gets them instead of a 503.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

#[derive(Default)]
pub struct Health {
    draining: AtomicBool,
    /// Why the last write to the store failed, until a write succeeds again.
    store_error: Mutex<Option<String>>,
    /// Workers started and not yet ended.
    workers: AtomicUsize,
    /// Workers that should be running.
    workers_expected: AtomicUsize,
    /// The last store ping (when, and why it failed): probes within [`PING_REUSE`] share it, so a flood
    /// of `/readyz` requests (the port is public) makes at most one store query a second.
    ping: tokio::sync::Mutex<Option<(Instant, Option<String>)>>,
}

/// How long a store ping may take before the store counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a ping's answer is reused.
pub const PING_REUSE: Duration = Duration::from_secs(1);

impl Health {
    /// The service is stopping: it takes no new work and should get no new traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A write to the store failed (disk full, I/O error, database gone); `/readyz` says so until
    /// [`Health::store_ok`].
    pub fn store_failed(&self, why: impl Into<String>) {
        *self.store_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    pub fn store_ok(&self) {
        let mut error = self.store_error.lock().unwrap_or_else(|e| e.into_inner());
        if error.is_some() {
            *error = None;
        }
    }

    /// How many workers the service runs.
    pub fn expect_workers(&self, n: usize) {
        self.workers_expected.store(n, Ordering::SeqCst);
    }

    /// Held by a worker for as long as it runs; dropped (also by a panic) when it ends.
    pub fn worker_alive(&self) -> WorkerAlive<'_> {
        self.workers.fetch_add(1, Ordering::SeqCst);
        WorkerAlive(self)
    }

    /// Why this process is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining for a stop".to_owned());
        }
        if let Some(e) = self
            .store_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            reasons.push(format!("the store refuses writes: {e}"));
        }
        let (alive, expected) = (
            self.workers.load(Ordering::SeqCst),
            self.workers_expected.load(Ordering::SeqCst),
        );
        if alive < expected {
            reasons.push(format!("{alive} of {expected} workers alive"));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Whether the store answers a ping within [`PING_TIMEOUT`]: `None` when it does, or why not. A
    /// ping less than [`PING_REUSE`] old is reused, and concurrent callers wait for the one in flight.
    pub async fn store_unreachable(&self, store: &dyn crate::store::Store) -> Option<String> {
        let mut last = self.ping.lock().await;
        if let Some((at, why)) = &*last
            && at.elapsed() < PING_REUSE
        {
            return why.clone();
        }
        let why = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some(format!(
                "no answer within {}",
                humantime::format_duration(PING_TIMEOUT)
            )),
        };
        *last = Some((Instant::now(), why.clone()));
        why
    }

    /// The `/readyz` answer, with the store pinged (see [`Health::store_unreachable`]).
    pub async fn readyz_with(&self, store: &dyn crate::store::Store) -> (StatusCode, String) {
        let unreachable = self.store_unreachable(store).await;
        let why = match (self.not_ready(), unreachable) {
            (None, None) => return (StatusCode::OK, "ready\n".to_owned()),
            (Some(why), None) => why,
            (None, Some(store)) => format!("the store does not answer: {store}"),
            (Some(why), Some(store)) => format!("{why}; the store does not answer: {store}"),
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    }

    /// The `/readyz` answer from what this process knows, without asking the store.
    pub fn readyz(&self) -> (StatusCode, String) {
        match self.not_ready() {
            None => (StatusCode::OK, "ready\n".to_owned()),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        }
    }
}

pub struct WorkerAlive<'a>(&'a Health);

impl Drop for WorkerAlive<'_> {
    fn drop(&mut self) {
        self.0.workers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_draining_a_failing_store_or_a_dead_worker() {
        let health = Health::default();
        health.expect_workers(1);
        assert!(health.not_ready().unwrap().contains("0 of 1 workers"));
        let alive = health.worker_alive();
        assert_eq!(health.readyz().0, StatusCode::OK);
        health.store_failed("database or disk is full");
        let (status, body) = health.readyz();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("disk is full"), "{body}");
        health.store_ok();
        assert_eq!(health.readyz().0, StatusCode::OK);
        drop(alive);
        assert!(health.not_ready().is_some());
        let _alive = health.worker_alive();
        health.start_draining();
        assert!(health.not_ready().unwrap().contains("draining"));
    }
}
