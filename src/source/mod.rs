//! Event sources. Today: GitHub webhooks ([`webhook`]), parsed at the edge into [`event::Event`].

pub mod event;
pub mod ingest;
pub mod schedule;
pub mod webhook;
