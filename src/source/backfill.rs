//! Missed deliveries. GitHub does not deliver a failed webhook again by itself, so deliveries sent while
//! nightshift was down (or answered with an error) would be lost. At start and every [`EVERY`], nightshift
//! lists the App's recent deliveries (`GET /app/hook/deliveries`, newest first, page by page back to a
//! bound), and asks GitHub to deliver again (`POST /app/hook/deliveries/{id}/attempts`) each one whose
//! `X-GitHub-Delivery` the store does not have, unless nightshift's last answer to it was a deliberate
//! refusal (see [`refused_on_purpose`]): that would only loop.
//!
//! Redelivery rather than fetching the payload (`GET /app/hook/deliveries/{id}`) and storing it: a
//! redelivered webhook comes signed, through the one door every delivery takes, so the signature check stays
//! the only way anything gets into the store, and nothing here handles a payload.
//!
//! Bounded: back to the newest delivery the store had when nightshift started (less a margin), or
//! [`LOOKBACK`] at most; then back to the previous pass. At most [`MAX_PER_PASS`] redeliveries a pass; a
//! delivery is asked for once per [`ASK_AGAIN_AFTER`] (recorded in the store, atomically, so replicas never
//! both ask); one replica at a time runs a pass (a lease in the store).
//!
//! Token mode: GitHub keeps a delivery log per App (or per repository hook, which a token may not read);
//! there is nothing to backfill from, and the log says so once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{info, warn};

use crate::github::GitHub;
use crate::now_ms;
use crate::store::Store;

/// How often the deliveries are looked through.
pub const EVERY: Duration = Duration::from_secs(10 * 60);
/// How far back nightshift looks at most (GitHub keeps deliveries for about three days).
pub const LOOKBACK: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// Looked through again before the bound: deliveries in flight at the bound, clocks that differ.
const MARGIN: Duration = Duration::from_secs(10 * 60);
/// A delivery nightshift asked for is not asked for again before this.
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60 * 60);
/// The most redeliveries one pass asks for (GitHub limits them; the next pass looks back to the oldest it
/// left, and asks for the rest).
pub const MAX_PER_PASS: usize = 100;
/// The most pages (of 100) one pass reads.
const MAX_PAGES: usize = 100;
/// The lease one pass holds.
const LEASE: Duration = Duration::from_secs(10 * 60);

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Deliveries listed (each GUID once).
    pub listed: usize,
    /// Of those, the ones the store does not have.
    pub missing: usize,
    /// Of the missing, those nightshift itself refused on purpose the last time (a 200 for a replay; a 4xx,
    /// a bad signature or an oversized body): asking again would get the same answer,
    /// every [`ASK_AGAIN_AFTER`] for as long as GitHub keeps the log. Not asked for.
    pub refused: usize,
    /// Redeliveries asked for.
    pub asked: usize,
    /// False when another replica holds the lease (nothing was done).
    pub ran: bool,
    /// Where the next pass must look back to, when this one left some undone: the oldest missing delivery
    /// it did not ask for (past [`MAX_PER_PASS`]), or its own bound when it stopped at [`MAX_PAGES`] before
    /// reaching it. None: everything back to the bound was seen to.
    pub resume_from: Option<i64>,
}

/// Where the pass after `done` (which started at `started`, unix ms) looks back to: the previous pass's
/// start less a margin, or further where it left deliveries undone (before, those older than that were never
/// listed again, and all but 100 of a long outage's deliveries were lost); never past [`LOOKBACK`].
pub fn next_bound(done: &Pass, started: i64, now: i64) -> i64 {
    let usual = started - ms(MARGIN);
    done.resume_from
        .map_or(usual, |from| from.min(usual))
        .max(now - ms(LOOKBACK))
}

/// Where the first pass stops looking: the newest delivery the store had from before nightshift started,
/// less a margin, or [`LOOKBACK`] ago.
pub async fn first_bound(store: &dyn Store) -> Result<i64> {
    let floor = now_ms() - ms(LOOKBACK);
    Ok(store
        .newest_webhook_delivery_at()
        .await?
        .map_or(floor, |at| (at - ms(MARGIN)).max(floor)))
}

/// One pass: lists deliveries back to `bound` (unix ms) and asks for those the store does not have.
pub async fn pass(store: &dyn Store, github: &GitHub, owner: &str, bound: i64) -> Result<Pass> {
    let now = now_ms();
    if !store
        .try_lease("backfill", owner, now, now + ms(LEASE))
        .await?
    {
        return Ok(Pass::default());
    }
    let done = look(store, github, bound, now).await;
    // Let go at once, so a replica (or this one restarted) can run the next pass; a replica that dies in a
    // pass holds it until the lease runs out.
    let _ = store.try_lease("backfill", owner, now_ms(), now_ms()).await;
    done
}

async fn look(store: &dyn Store, github: &GitHub, bound: i64, now: i64) -> Result<Pass> {
    // Per GUID: the newest attempt's id (any attempt redelivers the delivery) and nightshift's answer to it.
    let mut seen: BTreeMap<String, (i64, Option<i64>, i64)> = BTreeMap::new();
    let mut next: Option<String> = None;
    let mut reached = false;
    for _ in 0..MAX_PAGES {
        let Some((page, link)) = github.hook_deliveries(next.as_deref()).await? else {
            return Ok(Pass::default());
        };
        let mut older = page.is_empty();
        for d in page {
            let at = d
                .delivered_at
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .unwrap_or(i64::MAX);
            if at < bound {
                older = true;
                continue;
            }
            seen.entry(d.guid).or_insert((d.id, d.status_code, at));
        }
        match link {
            Some(link) if !older => next = Some(link),
            _ => {
                reached = true;
                break;
            }
        }
    }
    let guids: Vec<String> = seen.keys().cloned().collect();
    let mut have = std::collections::HashSet::new();
    for chunk in guids.chunks(500) {
        have.extend(store.known_delivery_ids(chunk).await?);
    }
    let mut done = Pass {
        listed: seen.len(),
        ran: true,
        resume_from: (!reached).then_some(bound),
        ..Pass::default()
    };
    for (guid, (id, status, at)) in &seen {
        if have.contains(guid) {
            continue;
        }
        done.missing += 1;
        if refused_on_purpose(*status) {
            done.refused += 1;
            continue;
        }
        if done.asked >= MAX_PER_PASS {
            done.resume_from = Some(done.resume_from.map_or(*at, |from| from.min(*at)));
            continue;
        }
        if !store
            .claim_redelivery(guid, now, ms(ASK_AGAIN_AFTER))
            .await?
        {
            continue; // asked for recently (by this replica or another)
        }
        match github.redeliver(*id).await {
            Ok(()) => {
                done.asked += 1;
                info!(delivery = %guid, "a missed delivery was asked for again");
            }
            Err(e) => warn!(delivery = %guid, "asking GitHub to redeliver failed: {e:#}"),
        }
    }
    Ok(done)
}

/// Whether nightshift's answer to a delivery's newest attempt (one the store does not have) says it would
/// refuse it again: a 200 (it dropped the body on purpose, as a replay of another delivery's) or a 4xx other
/// than a timeout or a rate limit (a bad signature, a body too large, a malformed request). No answer (0), a
/// 5xx (the store failed, no room in memory), 408 and 429 are worth asking again, and so is a 202 the store
/// no longer has (a store restored from an older backup).
fn refused_on_purpose(status: Option<i64>) -> bool {
    matches!(status, Some(200 | 400..=499)) && !matches!(status, Some(408 | 429))
}

/// Runs a pass at start (back to `bound`, from [`first_bound`]) and every [`EVERY`] (back to the previous
/// pass). App auth only.
pub async fn run(store: Arc<dyn Store>, github: Arc<GitHub>, bound: i64) {
    if github.app_ready().await.is_none() {
        info!(
            "missed deliveries are not asked for again: that needs a GitHub App (GitHub keeps the App's delivery \
             log); with a token, deliveries sent while nightshift is down are lost"
        );
        return;
    }
    let owner = format!("{}-{}", std::process::id(), now_ms());
    let mut bound = bound;
    loop {
        let started = now_ms();
        match pass(&*store, &github, &owner, bound).await {
            Ok(done) => {
                if done.ran {
                    info!(
                        listed = done.listed,
                        missing = done.missing,
                        refused = done.refused,
                        asked = done.asked,
                        resume_from = done.resume_from,
                        "missed deliveries looked for"
                    );
                    bound = next_bound(&done, started, now_ms());
                }
            }
            Err(e) => warn!("looking for missed deliveries failed (tried again later): {e:#}"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{LOOKBACK, MARGIN, Pass, ms, next_bound, refused_on_purpose};

    #[test]
    fn the_next_pass_looks_back_to_what_this_one_left_undone() {
        let started = 10 * ms(LOOKBACK);
        let now = started + 60_000;
        let all_done = Pass {
            ran: true,
            ..Pass::default()
        };
        assert_eq!(next_bound(&all_done, started, now), started - ms(MARGIN));
        // Deliveries of an outage an hour before this pass were left past the hundred asked for.
        let left = Pass {
            ran: true,
            resume_from: Some(started - 3_600_000),
            ..Pass::default()
        };
        assert_eq!(next_bound(&left, started, now), started - 3_600_000);
        // Never past what GitHub keeps.
        let ancient = Pass {
            ran: true,
            resume_from: Some(0),
            ..Pass::default()
        };
        assert_eq!(next_bound(&ancient, started, now), now - ms(LOOKBACK));
    }

    #[test]
    fn only_deliveries_that_could_succeed_are_asked_for_again() {
        for again in [
            None,
            Some(0),
            Some(202),
            Some(500),
            Some(503),
            Some(408),
            Some(429),
        ] {
            assert!(!refused_on_purpose(again), "{again:?}");
        }
        for refused in [Some(200), Some(400), Some(401), Some(413)] {
            assert!(refused_on_purpose(refused), "{refused:?}");
        }
    }
}
