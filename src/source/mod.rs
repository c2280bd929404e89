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

use std::sync::Arc;

use tokio::sync::Notify;

use crate::health::Health;
use crate::store::Store;

/// What a source may do with the service: store deliveries, ring the dispatcher when it did, and say in
/// `/readyz` when the store refuses them.
#[derive(Clone)]
pub struct Intake {
    pub store: Arc<dyn Store>,
    /// Rung when a delivery is stored.
    pub deliveries_waiting: Arc<Notify>,
    pub health: Arc<Health>,
    /// Payloads just stored, for the dispatcher to match without reading them back.
    pub fresh: Arc<ingest::FreshPayloads>,
}
