//! Event sources. Today: GitHub webhooks ([`webhook`]), parsed at the edge into [`event::Event`]; the
//! schedules ([`schedule`]); the App's installations ([`installations`]); deliveries missed while nightshift
//! was down, asked for again ([`backfill`]).

pub mod backfill;
pub mod event;
pub mod installations;
pub mod schedule;
pub mod webhook;
