//! The schedule source: turns the ticks of `schedule:` triggers into deliveries, one per repository per
//! tick, which then go through the same store, matching and queue as webhooks. A tick is a delivery with
//! the id `schedule:REPO:CRON@ZONE:TIME`, so it is stored once however often it is looked at; after
//! downtime, only the latest missed tick of each schedule fires. Replicas sharing a store fire each tick once:
//! claiming a tick is a compare-and-set on the schedule's last tick, in the transaction that stores it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use jiff::Timestamp;
use tracing::{info, warn};

use super::{Intake, installations};
use crate::github::GitHub;
use crate::ids::DeliveryId;
use crate::store::{InstalledRepo, KnownRepo, NewDelivery};
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
/// due. `github.api_url` is GitHub's API address, for repositories nightshift has not seen yet.
///
/// Under App auth, a repository's installation comes from the installed list (or GitHub, asked once:
/// [`installations::resolve`]), patterns match every installed repository as well as those seen in
/// deliveries, and a repository no installation covers is skipped. In token mode, repositories are as
/// deliveries showed them, or assumed.
pub async fn tick(
    intake: &Intake,
    triggers: &Live,
    github: &GitHub,
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
    let app = github.is_app();
    let installed: HashMap<String, InstalledRepo> = if app {
        intake
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
    let triggers = triggers.get();
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
                let Some(tick) = due(intake, schedule, name, now).await? else {
                    continue;
                };
                let known_repo = known.get(&name.to_lowercase());
                let repo = if app {
                    match installations::resolve(
                        &*intake.store,
                        github,
                        name,
                        &installed,
                        known_repo,
                    )
                    .await
                    {
                        Ok(Some(repo)) => repo,
                        Ok(None) => {
                            info!(repo = %name, schedule = %key(schedule), %tick, "scheduled tick skipped: no installation");
                            intake
                                .store
                                .set_last_tick(&key(schedule), name, tick.as_millisecond())
                                .await?;
                            continue;
                        }
                        Err(e) => {
                            warn!(repo = %name, "scheduling {name} failed (tried again at the next pass): {e:#}");
                            continue;
                        }
                    }
                } else {
                    known_or_assumed(name, &known, api_url)
                };
                stored |= store_tick(intake, schedule, &repo, name, tick).await?;
            }
            if let Some(t) = schedule.next_after(now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
    }
    if stored {
        intake.deliveries_waiting.ring();
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
    name: &str,
    now: Timestamp,
) -> Result<Option<Timestamp>> {
    let last = intake.store.last_tick(&key(schedule), name).await?;
    let Some(last) = last else {
        // Another replica seeing the schedule at once may start it first: its start is kept.
        intake
            .store
            .start_ticks(&key(schedule), name, now.as_millisecond())
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
    name: &str,
    tick: Timestamp,
) -> Result<bool> {
    let body =
        crate::source::event::schedule_payload(&schedule.cron, &schedule.timezone, repo, None);
    let delivery = NewDelivery::new(
        DeliveryId(format!("schedule:{}:{}:{}", name, key(schedule), tick)),
        "schedule".to_owned(),
        None,
        Some(repo.full_name.clone()),
        repo.installation_id,
        serde_json::to_vec(&body)?.into(),
    );
    // One winner per tick across replicas; the others (and a replica whose clock lags) store nothing.
    let fired = intake
        .store
        .fire_tick(&key(schedule), name, tick.as_millisecond(), &delivery)
        .await?;
    if fired {
        info!(repo = %repo.full_name, schedule = %key(schedule), %tick, "scheduled tick stored");
    }
    Ok(fired)
}

/// Runs the schedules: sleeps until the next tick is due (at most a minute, so a clock change or a new
/// trigger is noticed), then stores the due ticks.
///
/// Under App auth, the installations are listed first, so the first ticks see every installed repository.
pub async fn run(intake: Intake, triggers: Arc<Live>, github: Arc<GitHub>, api_url: String) {
    installations::first_sync(&*intake.store, &github).await;
    loop {
        let now = Timestamp::now();
        let wait = match tick(&intake, &triggers, &github, &api_url, now).await {
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
