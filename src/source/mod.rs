//! Event sources: GitHub webhooks ([`webhook`]) and the triggers' schedules ([`schedule`]), parsed at the
//! edge into [`event::Event`]; the App's installations ([`installations`]); deliveries missed while
//! nightshift was down, asked for again ([`backfill`]). A source is given an [`Intake`], not the whole
//! service: it can store a delivery and wake the dispatcher, and nothing else. The App's sources
//! (installations, backfill) are given the store and the GitHub client, nothing more: a missed delivery is
//! asked for again, never stored from the API, so it too comes in signed through the webhook.

pub mod backfill;
pub mod event;
pub mod ingest;
pub mod installations;
pub mod schedule;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::health::Health;
use crate::store::Store;

/// What a source may do with the service: store deliveries, ring the dispatcher when it did, and say in
/// `/readyz` when the store refuses them.
#[derive(Clone)]
pub struct Intake {
    pub store: Arc<dyn Store>,
    /// Rung when a delivery is stored.
    pub deliveries_waiting: Arc<DeliveryBell>,
    pub health: Arc<Health>,
    /// Payloads just stored, for the dispatcher to match without reading them back.
    pub fresh: Arc<ingest::FreshPayloads>,
}

/// The lane a delivery is matched in: its repository's full name, lower-cased ("" when it is about none).
pub fn lane_of(repo: Option<&str>) -> String {
    repo.map(str::to_lowercase).unwrap_or_default()
}

/// Rings the dispatcher when deliveries wait to be matched, and says in which lanes when it knows.
///
/// Under a flood of webhooks every group-commit batch rang, and each ring made the dispatcher look for the
/// oldest waiting delivery of every repository: a query per batch (2.4 ms of the database's time each on
/// Postgres, most of what it did) to find the one lane already being matched, whose task reads its own
/// backlog anyway. Now the dispatcher passes over a ring whose news is only of lanes being matched: when
/// such a lane is done it rings again, and that ring says nothing of lanes, so the dispatcher looks.
#[derive(Default)]
pub struct DeliveryBell {
    notify: Notify,
    news: Mutex<News>,
}

/// What rang since the dispatcher last looked.
#[derive(Default, Debug, PartialEq)]
pub struct News {
    /// A ring that named no lane: look at every lane.
    pub unnamed: bool,
    /// The lanes named.
    pub lanes: HashSet<String>,
}

impl DeliveryBell {
    /// Deliveries may wait in any lane (stored by another replica, a lane done, a schedule's tick).
    pub fn ring(&self) {
        self.news.lock().unwrap_or_else(|e| e.into_inner()).unnamed = true;
        self.notify.notify_waiters();
    }

    /// Deliveries were stored in these lanes ([`lane_of`]).
    pub fn ring_lanes(&self, lanes: impl IntoIterator<Item = String>) {
        self.news
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lanes
            .extend(lanes);
        self.notify.notify_waiters();
    }

    /// The next ring; enabled before [`DeliveryBell::take_news`], it misses no ring that news missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// What rang since the last call.
    pub fn take_news(&self) -> News {
        std::mem::take(&mut *self.news.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bell says which lanes rang since the dispatcher last looked, and whether any ring named none; a
    /// ring while nobody waits is still heard by the next wait enabled before the news is taken.
    #[tokio::test]
    async fn the_bell_keeps_its_news_until_taken() {
        let bell = DeliveryBell::default();
        assert_eq!(bell.take_news(), News::default());
        bell.ring_lanes([lane_of(Some("Octo/Repo")), lane_of(None)]);
        bell.ring_lanes([lane_of(Some("octo/repo"))]);
        assert_eq!(
            bell.take_news(),
            News {
                unnamed: false,
                lanes: ["octo/repo".to_owned(), String::new()].into()
            }
        );
        assert_eq!(bell.take_news(), News::default(), "taken once");

        let notified = bell.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        bell.ring();
        let news = bell.take_news();
        assert!(news.unnamed && news.lanes.is_empty());
        tokio::time::timeout(std::time::Duration::from_secs(10), notified)
            .await
            .expect("the ring wakes the wait enabled before it");
    }
}
