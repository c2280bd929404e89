//! The schedule source: turns the ticks of `schedule:` triggers into deliveries, one per repository per
//! tick, which then go through the same store, matching and queue as webhooks. A tick is a delivery with
//! the id `schedule:REPO:CRON@ZONE:TIME`, so it is stored once however often it is looked at; after
//! downtime, only the latest missed tick of each schedule fires. Replicas sharing a store fire each tick once:
//! claiming a tick is a compare-and-set on the schedule's last tick, in the transaction that stores it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use jiff::Timestamp;
use tracing::{info, warn};

use super::Intake;
use crate::ids::DeliveryId;
use crate::store::{KnownRepo, NewDelivery};
use crate::trigger::{Live, Schedule};

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

/// One pass: stores a delivery for every schedule of `triggers` that is due. Returns when the next tick is
/// due. `api_url` is GitHub's API address, for repositories nightshift has not seen yet.
pub async fn tick(
    intake: &Intake,
    triggers: &Live,
    api_url: &str,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    let known: BTreeMap<String, KnownRepo> = intake
        .store
        .repositories()
        .await?
        .into_iter()
        .map(|r| (r.full_name.to_lowercase(), r))
        .collect();
    let mut next: Option<Timestamp> = None;
    let mut stored = false;
    let triggers = triggers.get();
    for trigger in triggers.triggers() {
        if trigger.schedules.is_empty() {
            continue;
        }
        let Some(repos) = &trigger.repos else {
            continue;
        };
        // Literal names are scheduled even before nightshift has seen them; patterns match known repos.
        let names: Vec<String> = match repos.literals() {
            Some(names) => names,
            None => known
                .values()
                .filter(|r| repos.matches(&r.full_name.to_lowercase()))
                .map(|r| r.full_name.clone())
                .collect(),
        };
        for schedule in &trigger.schedules {
            for name in &names {
                let repo = known_or_assumed(name, &known, api_url);
                if let Some(tick) = due(intake, schedule, &repo, now).await? {
                    stored |= store_tick(intake, schedule, &repo, tick).await?;
                }
            }
            if let Some(t) = schedule.next_after(now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
    }
    if stored {
        intake.deliveries_waiting.notify_waiters();
    }
    Ok(next)
}

fn key(schedule: &Schedule) -> String {
    format!("{}@{}", schedule.cron, schedule.timezone)
}

/// The tick to fire now, if one is due. A schedule seen for the first time starts counting from now, so
/// adding a trigger does not fire a tick from before it existed.
async fn due(
    intake: &Intake,
    schedule: &Schedule,
    repo: &KnownRepo,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    let last = intake
        .store
        .last_tick(&key(schedule), &repo.full_name)
        .await?;
    let Some(last) = last else {
        // Another replica seeing the schedule at once may start it first: its start is kept.
        intake
            .store
            .start_ticks(&key(schedule), &repo.full_name, now.as_millisecond())
            .await?;
        return Ok(None);
    };
    let last = Timestamp::from_millisecond(last)?;
    Ok(schedule.due(last, now))
}

async fn store_tick(
    intake: &Intake,
    schedule: &Schedule,
    repo: &KnownRepo,
    tick: Timestamp,
) -> Result<bool> {
    let body =
        crate::source::event::schedule_payload(&schedule.cron, &schedule.timezone, repo, None);
    let delivery = NewDelivery {
        delivery_id: DeliveryId(format!(
            "schedule:{}:{}:{}",
            repo.full_name,
            key(schedule),
            tick
        )),
        event: "schedule".to_owned(),
        action: None,
        repo: Some(repo.full_name.clone()),
        installation_id: repo.installation_id,
        payload: serde_json::to_vec(&body)?,
    };
    // One winner per tick across replicas; the others (and a replica whose clock lags) store nothing.
    let fired = intake
        .store
        .fire_tick(
            &key(schedule),
            &repo.full_name,
            tick.as_millisecond(),
            &delivery,
        )
        .await?;
    if fired {
        info!(repo = %repo.full_name, schedule = %key(schedule), %tick, "scheduled tick stored");
    }
    Ok(fired)
}

/// Runs the schedules: sleeps until the next tick is due (at most a minute, so a clock change or a new
/// trigger is noticed), then stores the due ticks.
pub async fn run(intake: Intake, triggers: Arc<Live>, api_url: String) {
    loop {
        let now = Timestamp::now();
        let wait = match tick(&intake, &triggers, &api_url, now).await {
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
