//! Matching stored deliveries against the triggers, after the webhook has answered.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tracing::{Instrument, info, info_span, warn};

use super::Pipeline;
use crate::source::event::Event;
use crate::store::{NewJob, StoredDelivery};

/// How often stored-but-unmatched deliveries are looked for without a wake-up (after a crash, or when
/// another process stored them).
const SWEEP: Duration = Duration::from_secs(5);

pub async fn run(pipeline: Arc<Pipeline>) {
    loop {
        // Registered before looking, so a delivery stored while we look still wakes us.
        let notified = pipeline.deliveries_waiting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match drain(&pipeline).await {
            Ok(0) => {
                let _ = tokio::time::timeout(SWEEP, notified).await;
            }
            Ok(_) => {}
            Err(e) => {
                warn!("matching deliveries failed: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Matches every waiting delivery; returns how many there were.
pub async fn drain(pipeline: &Pipeline) -> Result<usize> {
    let batch = pipeline.store.unmatched_deliveries(100).await?;
    for delivery in &batch {
        let span = info_span!("delivery", id = %delivery.delivery_id, event = %delivery.event, repo = tracing::field::Empty);
        match_one(pipeline, delivery).instrument(span).await?;
    }
    Ok(batch.len())
}

async fn match_one(pipeline: &Pipeline, delivery: &StoredDelivery) -> Result<()> {
    let jobs = match Event::parse(&delivery.event, &delivery.payload) {
        Ok(event) => {
            if let Some(r) = &event.repository {
                tracing::Span::current().record("repo", tracing::field::display(&r.full_name));
            }
            pipeline
                .triggers
                .fired(&event)
                .into_iter()
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
                        },
                        Err(error) => {
                            warn!(trigger = %trigger.name, "{error}");
                            NewJob {
                                trigger: trigger.name.clone(),
                                repo,
                                spec: "{}".to_owned(),
                                error: Some(error),
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
