//! The durable queue between the webhook and the agents. [`dispatch`] matches stored deliveries against the
//! triggers and queues jobs; [`worker`] claims jobs with a lease (the workers of a process together,
//! [`claims`]) and runs them. Both wake at once when there
//! is work (in-process notification) and also sweep on a timer, which picks up work left by a crash.

pub mod background;
pub mod claims;
pub mod dispatch;
pub mod retention;
pub mod worker;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::agent::EnvLookup;
use crate::config::Config;
use crate::github::GitHub;
use crate::repo::workspace::Workspaces;
use crate::store::Store;
use crate::trigger::TriggerSet;

pub use crate::trigger::job::JobSpec;

impl Pipeline {
    /// nightshift's own login: configured or learned at start, or the App's set up in the browser since.
    pub fn bot_login(&self) -> Option<&str> {
        (self.config.github.bot_login.as_deref()).or_else(|| self.github.learned_login())
    }

    /// The triggers in force now.
    pub fn triggers(&self) -> Arc<TriggerSet> {
        self.triggers.get()
    }
}

/// Everything the dispatcher and workers share.
pub struct Pipeline {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Repositories as last written to the store, so an unchanged one is not written again.
    pub known_repos: std::sync::Mutex<std::collections::HashMap<String, crate::store::KnownRepo>>,
    /// Repositories' own triggers, read from their default branches.
    pub repo_triggers: Arc<crate::trigger::repo::RepoTriggers>,
    /// The triggers in force; replaced whole when trigger files change.
    pub triggers: Arc<crate::trigger::Live>,
    pub github: Arc<GitHub>,
    pub workspaces: Workspaces,
    /// Rung when a delivery is stored (shared with the sources' [`crate::source::Intake`]).
    pub deliveries_waiting: Arc<crate::source::DeliveryBell>,
    /// Rung when a job is queued.
    pub jobs_waiting: Notify,
    /// Actors' permissions on repositories, as GitHub answered (for events without an author association).
    pub standing: dispatch::StandingCache,
    /// The environment the service runs in; agents see an allow-listed part of it.
    pub env: Box<EnvLookup>,
    /// The model gateway every model request of an agent goes through.
    pub gateway: Arc<crate::gateway::Gateway>,
    /// What `/readyz` answers: draining, the store's last write error, workers alive.
    pub health: Arc<crate::health::Health>,
    /// Payloads the webhook just stored, taken by the dispatcher instead of reading them back.
    pub fresh: Arc<crate::source::ingest::FreshPayloads>,
    /// What the running attempts' folders hold, for whom to stop first when the disk runs low.
    pub disk_use: worker::DiskUse,
}

/// Rings the pipeline's wakeups when the store says another replica wrote (see
/// [`Store::wakeups`](crate::store::Store::wakeups)); returns when the store stops listening.
pub async fn relay_wakeups(
    pipeline: Arc<Pipeline>,
    mut wakeups: tokio::sync::mpsc::Receiver<crate::store::Wakeup>,
) {
    while let Some(wakeup) = wakeups.recv().await {
        match wakeup {
            crate::store::Wakeup::Deliveries => pipeline.deliveries_waiting.ring(),
            crate::store::Wakeup::Jobs => pipeline.jobs_waiting.notify_waiters(),
        }
    }
}
