//! The schedule source: turns the ticks of `schedule:` triggers into deliveries, one per repository per
//! tick, which then go through the same store, matching and queue as webhooks. A tick is a delivery with
//! the id `schedule:REPO:CRON@ZONE:TIME`, so it is stored once however often it is looked at; after
//! downtime, only the latest missed tick of each schedule fires.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use jiff::Timestamp;
use tracing::{info, warn};

use super::installations;
use crate::ids::DeliveryId;
use crate::queue::Pipeline;
use crate::store::{Inserted, InstalledRepo, KnownRepo, NewDelivery};
use crate::trigger::Schedule;

/// The repository a schedule names, as nightshift knows it from deliveries, or as GitHub would serve it.
fn known_or_assumed(name: &str, known: &BTreeMap<String, KnownRepo>, api_url: &str) -> KnownRepo {
    if let Some(repo) = known.get(&name.to_lowercase()) {
        return repo.clone();
    }
    // Not seen in a delivery yet: GitHub's clone URL for it, and the branch the mirror's HEAD names.
    let web = match api_url.trim_end_matches('/') {
        "https://api.github.com" => "https://github.com".to_owned(),
        other => other.trim_end_matches("/api/v3").to_owned(),
    };
    KnownRepo {
        full_name: name.to_owned(),
        installation_id: None,
        clone_url: format!("{web}/{name}.git"),
        default_branch: String::new(),
    }
}

/// One pass: stores a delivery for every schedule that is due. Returns when the next tick is due.
///
/// Under App auth, a repository's installation comes from the installed list (or GitHub, asked once:
/// [`installations::resolve`]), patterns match every installed repository as well as those seen in
/// deliveries, and a repository no installation covers is skipped. In token mode, repositories are as
/// deliveries showed them, or assumed.
pub async fn tick(pipeline: &Pipeline, now: Timestamp) -> Result<Option<Timestamp>> {
    let known: BTreeMap<String, KnownRepo> = pipeline
        .store
        .repositories()
        .await?
        .into_iter()
        .map(|r| (r.full_name.to_lowercase(), r))
        .collect();
    let app = pipeline.github.is_app();
    let installed: HashMap<String, InstalledRepo> = if app {
        pipeline
            .store
            .installed_repos()
            .await?
            .into_iter()
            .map(|r| (r.full_name.to_lowercase(), r))
            .collect()
    } else {
        HashMap::new()
    };
    // A name as GitHub spells it, when nightshift knows it: schedules keep one record per repository.
    let spelled = |name: &str| -> String {
        let key = name.to_lowercase();
        installed
            .get(&key)
            .map(|r| r.full_name.clone())
            .or_else(|| known.get(&key).map(|r| r.full_name.clone()))
            .unwrap_or_else(|| name.to_owned())
    };
    let mut next: Option<Timestamp> = None;
    let mut stored = false;
    let triggers = pipeline.triggers();
    for trigger in triggers.triggers() {
        if trigger.schedules.is_empty() {
            continue;
        }
        let Some(repos) = &trigger.repos else {
            continue;
        };
        // Literal names are scheduled even before nightshift has seen them; patterns match the repositories
        // the App is installed on and those seen in deliveries.
        let names: Vec<String> = match repos.literals() {
            Some(names) => names.iter().map(|n| spelled(n)).collect(),
            None => {
                let mut names: BTreeMap<String, String> = BTreeMap::new();
                for name in installed
                    .values()
                    .map(|r| &r.full_name)
                    .chain(known.values().map(|r| &r.full_name))
                {
                    let key = name.to_lowercase();
                    if repos.matches(&key) {
                        names.entry(key).or_insert_with(|| name.clone());
                    }
                }
                names.into_values().collect()
            }
        };
        for schedule in &trigger.schedules {
            for name in &names {
                let key = name.to_lowercase();
                let assumed = known_or_assumed(name, &known, &pipeline.config.github.api_url);
                let Some(tick) = due(pipeline, schedule, &assumed, now).await? else {
                    continue;
                };
                let repo = if app {
                    match installations::resolve(pipeline, name, &installed, known.get(&key)).await
                    {
                        Ok(Some(repo)) => repo,
                        Ok(None) => {
                            info!(repo = %name, schedule = %key_of(schedule), %tick, "scheduled tick skipped: no installation");
                            pipeline
                                .store
                                .set_last_tick(&key_of(schedule), name, tick.as_millisecond())
                                .await?;
                            continue;
                        }
                        Err(e) => {
                            warn!(repo = %name, "scheduling {name} failed (tried again at the next tick): {e:#}");
                            continue;
                        }
                    }
                } else {
                    assumed
                };
                stored |= store_tick(pipeline, schedule, &repo, name, tick).await?;
            }
            if let Some(t) = schedule.next_after(now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
    }
    if stored {
        pipeline.deliveries_waiting.notify_waiters();
    }
    Ok(next)
}

fn key_of(schedule: &Schedule) -> String {
    format!("{}@{}", schedule.cron, schedule.timezone)
}

/// The tick to fire now, if one is due. A schedule seen for the first time starts counting from now, so
/// adding a trigger does not fire a tick from before it existed.
async fn due(
    pipeline: &Pipeline,
    schedule: &Schedule,
    repo: &KnownRepo,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    let last = pipeline
        .store
        .last_tick(&key_of(schedule), &repo.full_name)
        .await?;
    let Some(last) = last else {
        pipeline
            .store
            .set_last_tick(&key_of(schedule), &repo.full_name, now.as_millisecond())
            .await?;
        return Ok(None);
    };
    let last = Timestamp::from_millisecond(last)?;
    Ok(schedule.due(last, now))
}

async fn store_tick(
    pipeline: &Pipeline,
    schedule: &Schedule,
    repo: &KnownRepo,
    name: &str,
    tick: Timestamp,
) -> Result<bool> {
    let body =
        crate::source::event::schedule_payload(&schedule.cron, &schedule.timezone, repo, None);
    let delivery = NewDelivery {
        delivery_id: DeliveryId(format!(
            "schedule:{}:{}:{}",
            repo.full_name,
            key_of(schedule),
            tick
        )),
        event: "schedule".to_owned(),
        action: None,
        repo: Some(repo.full_name.clone()),
        installation_id: repo.installation_id,
        payload: serde_json::to_vec(&body)?,
    };
    let inserted = pipeline.store.insert_delivery(&delivery).await?;
    pipeline
        .store
        .set_last_tick(&key_of(schedule), name, tick.as_millisecond())
        .await?;
    if inserted != Inserted::Duplicate {
        info!(repo = %repo.full_name, schedule = %key_of(schedule), %tick, "scheduled tick stored");
    }
    Ok(inserted != Inserted::Duplicate)
}

/// Runs the schedules: sleeps until the next tick is due (at most a minute, so a clock change or a new
/// trigger is noticed), then stores the due ticks.
///
/// Under App auth, the installations are listed first, so the first ticks see every installed repository.
pub async fn run(pipeline: Arc<Pipeline>) {
    installations::first_sync(&pipeline).await;
    loop {
        let now = Timestamp::now();
        let wait = match tick(&pipeline, now).await {
            Ok(Some(next)) => Duration::try_from(next.duration_since(now)).unwrap_or_default(),
            Ok(None) => Duration::from_secs(60),
            Err(e) => {
                warn!("scheduling failed: {e:#}");
                Duration::from_secs(10)
            }
        };
        tokio::time::sleep(wait.clamp(Duration::from_millis(200), Duration::from_secs(60))).await;
    }
}
