//! Matching stored deliveries against the triggers, after the webhook has answered.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{Instrument, info, info_span, warn};

use super::Pipeline;

use crate::agent::git::GitAuth;
use crate::github::with_retry;
use crate::source::event::Event;
use crate::store::{KnownRepo, NewJob, StoredDelivery};
use crate::trigger::{MAX_CHANGED_FILES, MatchInput, TriggerSet};

/// How often stored-but-unmatched deliveries are looked for without a wake-up (after a crash, or when
/// another process stored them).
const SWEEP: Duration = Duration::from_secs(5);

/// The most deliveries matched at once, each of a different repository.
const LANES: usize = 8;

/// Deliveries are matched one repository at a time, in the order they came, but different repositories
/// side by side: reading one repository's own triggers (a first clone of a large repository can take
/// minutes) never holds up another's.
#[derive(Default)]
struct Lanes {
    /// Repositories (lower-case full names; "" for events about none) with a delivery being matched.
    busy: std::sync::Mutex<HashSet<String>>,
}

impl Lanes {
    fn take(&self, lane: &str) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.len() < LANES && busy.insert(lane.to_owned())
    }

    fn release(&self, lane: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(lane);
    }
}

pub async fn run(pipeline: Arc<Pipeline>) {
    let lanes = Arc::new(Lanes::default());
    loop {
        // Registered before looking, so a delivery stored (or a lane freed) while we look still wakes us.
        let notified = pipeline.deliveries_waiting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match start_matching(&pipeline, &lanes).await {
            Ok(0) => {
                let _ = tokio::time::timeout(SWEEP, notified).await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("looking for deliveries to match failed: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Starts matching the oldest waiting delivery of every repository that has none being matched; returns
/// how many it started. A lane's task wakes the dispatcher when it is done, for that repository's next one.
async fn start_matching(pipeline: &Arc<Pipeline>, lanes: &Arc<Lanes>) -> Result<usize> {
    let batch = pipeline.store.unmatched_deliveries(100).await?;
    let mut started = 0;
    for delivery in batch {
        let lane = lane(&delivery);
        if !lanes.take(&lane) {
            continue;
        }
        started += 1;
        let pipeline = pipeline.clone();
        let lanes = lanes.clone();
        let span = info_span!("delivery", id = %delivery.delivery_id, event = %delivery.event, repo = tracing::field::Empty);
        tokio::spawn(
            async move {
                if let Err(e) = match_one(&pipeline, &delivery).await {
                    // It stays unmatched and is tried again, after a pause.
                    warn!("matching failed: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                lanes.release(&lane);
                pipeline.deliveries_waiting.notify_waiters();
            }
            .instrument(span),
        );
    }
    Ok(started)
}

/// The lane of a delivery: its repository's full name, lower-cased ("" when it is about none).
fn lane(delivery: &StoredDelivery) -> String {
    delivery
        .repo
        .as_deref()
        .map(str::to_lowercase)
        .unwrap_or_default()
}

/// What matching needs besides the payload: nightshift's own login, and a pull request's changed files when
/// a trigger filters on paths (from the API: GitHub puts no file list in pull request payloads).
async fn match_input(pipeline: &Pipeline, event: &Event, sets: &[Arc<TriggerSet>]) -> MatchInput {
    let mut input = MatchInput {
        bot_login: pipeline.config.github.bot_login.clone(),
        changed_files: None,
    };
    if sets.iter().any(|set| set.needs_changed_files(event)) {
        match changed_files(pipeline, event).await {
            Ok(files) => input.changed_files = Some(files),
            Err(e) => warn!(
                "the pull request's changed files are unknown, so path filters will not pass: {e:#}"
            ),
        }
    }
    input
}

async fn changed_files(pipeline: &Pipeline, event: &Event) -> Result<Vec<String>> {
    let (Some(repo), Some(pr)) = (&event.repository, &event.pull_request) else {
        anyhow::bail!("not a pull request event");
    };
    if !pipeline.github.has_credentials() {
        anyhow::bail!("no GitHub credentials");
    }
    let api = pipeline.github.client(event.installation).await?.api();
    let mut files = Vec::new();
    for page in 1..=MAX_CHANGED_FILES.div_ceil(100) {
        let route = format!(
            "/repos/{}/pulls/{}/files?per_page=100&page={page}",
            repo.full_name, pr.number
        );
        let batch: Vec<serde_json::Value> = with_retry("listing the pull request's files", || {
            api.get(route.as_str(), None::<&()>)
        })
        .await?;
        let done = batch.len() < 100;
        files.extend(
            batch
                .iter()
                .filter_map(|f| f["filename"].as_str().map(str::to_owned)),
        );
        if done {
            break;
        }
    }
    files.truncate(MAX_CHANGED_FILES);
    Ok(files)
}

/// The repository's own triggers, when the service reads them; a repository whose triggers cannot be read
/// is matched against the service's triggers alone.
async fn repo_triggers(pipeline: &Pipeline, event: &Event) -> Option<Arc<TriggerSet>> {
    if !pipeline.config.repo_triggers || event.repository.is_none() || event.name == "schedule" {
        return None;
    }
    if let Some(set) = pipeline.repo_triggers.cached(event).await {
        return Some(set);
    }
    // Credentials only when the files have to be read.
    let auth = match pipeline.github.has_credentials() {
        true => match pipeline.github.client(event.installation).await {
            Ok(client) => client.git_auth(),
            Err(e) => {
                warn!("reading the repository's own triggers without credentials: {e:#}");
                GitAuth::none()
            }
        },
        false => GitAuth::none(),
    };
    let agents = pipeline.config.agent_kinds();
    match pipeline
        .repo_triggers
        .read(event, &pipeline.workspaces, &auth, &agents)
        .await
    {
        Ok(set) => Some(set),
        Err(e) => {
            warn!("the repository's own triggers could not be read: {e:#}");
            None
        }
    }
}

async fn match_one(pipeline: &Pipeline, delivery: &StoredDelivery) -> Result<()> {
    // Read here, once, in the delivery's lane: the dispatcher's look for waiting deliveries stays small.
    let payload = pipeline.store.delivery_payload(delivery.id).await?;
    let jobs = match Event::parse(&delivery.event, &payload) {
        Ok(event) => {
            if let Some(r) = &event.repository {
                tracing::Span::current().record("repo", tracing::field::display(&r.full_name));
                if event.name != "schedule" {
                    // What scheduled jobs, which have no delivery of their own, need to know.
                    let known = KnownRepo {
                        full_name: r.full_name.to_string(),
                        installation_id: event.installation.map(|i| i.0 as i64),
                        clone_url: r.clone_url.clone(),
                        default_branch: r.default_branch.clone(),
                    };
                    // Written only when it changed: every store write is an fsync.
                    let changed = pipeline
                        .known_repos
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(known.full_name.clone(), known.clone())
                        .is_none_or(|old| old != known);
                    if changed {
                        pipeline.store.upsert_repository(&known).await?;
                    }
                }
            }
            let mut sets = vec![pipeline.triggers()];
            if let Some(own) = repo_triggers(pipeline, &event).await {
                sets.push(own);
            }
            let input = match_input(pipeline, &event, &sets).await;
            sets.iter()
                .flat_map(|set| set.fired(&event, &input))
                .map(|(trigger, job)| {
                    let repo = event
                        .repository
                        .as_ref()
                        .map(|r| r.full_name.to_string())
                        .unwrap_or_default();
                    match job {
                        Ok(spec) => NewJob {
                            trigger: trigger.name.clone(),
                            repo,
                            spec: serde_json::to_string(&spec)
                                .expect("a JobSpec always serializes"),
                            error: None,
                            concurrency_group: spec.concurrency_group.clone(),
                            cancel_in_progress: spec.cancel_in_progress,
                        },
                        Err(error) => {
                            warn!(trigger = %trigger.name, "{error}");
                            NewJob {
                                trigger: trigger.name.clone(),
                                repo,
                                spec: "{}".to_owned(),
                                error: Some(error),
                                concurrency_group: None,
                                cancel_in_progress: false,
                            }
                        }
                    }
                })
                .collect()
        }
        Err(e) => {
            warn!("the stored payload does not parse ({e}); no trigger can match it");
            Vec::new()
        }
    };
    let queued = pipeline.store.record_match(delivery.id, &jobs).await?;
    info!(triggers = jobs.len(), queued, "matched");
    if queued > 0 {
        pipeline.jobs_waiting.notify_waiters();
    }
    Ok(())
}
