//! What the webhook endpoint shares between requests: the group-commit writer that stores deliveries, and
//! the memory budget for request bodies in flight.
//!
//! **Group commit.** One task owns delivery inserts. Handlers send it a delivery and wait; it takes every
//! delivery waiting (up to `ingest.max_batch`), writes them in one transaction (one fsync), then answers
//! each. While it commits, the next batch gathers; a store whose transactions share their log flushes
//! (Postgres: `Store::concurrent_batches`) has the next batch written meanwhile, up to that many at once.
//! A request is acknowledged only after its batch committed;
//! a failed commit (disk full, I/O error) answers every request of the batch with an error (503), marks the
//! store failed in `/readyz` until a later batch commits, and says why in the log.
//!
//! **Body budget.** Every request body is counted against one budget of bytes before it is read (its
//! Content-Length) and as it streams (a body without one, or longer than it said): past the budget the
//! request is refused, so many large unsigned bodies at once cannot take the process's memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::warn;

use super::Intake;
use crate::config::IngestConfig;
use crate::store::{Inserted, NewDelivery};

/// The largest body whose digest and packing are worked out on the request's own (runtime) thread: about
/// 0.2 ms of CPU at most.
const PREPARE_INLINE: usize = 256 * 1024;

/// A delivery waiting for the writer, with the budget its body holds until it is written.
struct Request {
    delivery: NewDelivery,
    answer: oneshot::Sender<Result<Inserted, String>>,
    _budget: Reservation,
}

/// The handle handlers use to store deliveries.
#[derive(Clone)]
pub struct Writer {
    requests: mpsc::Sender<Request>,
    /// The store, for what its writer needs of a delivery worked out here (`NewDelivery::prepare`).
    store: Arc<dyn crate::store::Store>,
    /// Whether a replay window is on (bodies' digests are needed).
    digests: bool,
}

impl Writer {
    /// Starts the writer task on the intake's store; it ends when every `Writer` handle is dropped.
    pub fn start(intake: Intake, ingest: &IngestConfig) -> Writer {
        let max_batch = ingest.max_batch;
        let (requests, queue) = mpsc::channel(max_batch * 4);
        let store = intake.store.clone();
        tokio::spawn(run(intake, queue, max_batch, ingest.replay_window));
        Writer {
            requests,
            store,
            digests: !ingest.replay_window.is_zero(),
        }
    }

    /// Stores `delivery` with the next batch; returns once that batch committed, or why it did not.
    /// `budget` (the body's share of the memory budget) is held until then. What the store's single writer
    /// needs of the delivery (its digest, its packed body) is worked out first, here, on the request's task.
    pub async fn insert(
        &self,
        delivery: NewDelivery,
        budget: Reservation,
    ) -> Result<Inserted, String> {
        // A large body (GitHub's go up to 25 MB) is hashed and packed on a blocking thread: tens of
        // milliseconds of CPU that would otherwise hold up this runtime thread's other requests.
        let delivery = if delivery.payload().len() > PREPARE_INLINE {
            let (store, digests) = (self.store.clone(), self.digests);
            tokio::task::spawn_blocking(move || {
                delivery.prepare(&*store, digests);
                delivery
            })
            .await
            .map_err(|e| format!("preparing the delivery failed: {e}"))?
        } else {
            delivery.prepare(&*self.store, self.digests);
            delivery
        };
        let (answer, answered) = oneshot::channel();
        let request = Request {
            delivery,
            answer,
            _budget: budget,
        };
        if self.requests.send(request).await.is_err() {
            return Err("the delivery writer stopped".to_owned());
        }
        answered
            .await
            .unwrap_or_else(|_| Err("the delivery writer stopped".to_owned()))
    }
}

async fn run(
    intake: Intake,
    mut queue: mpsc::Receiver<Request>,
    max_batch: usize,
    window: Duration,
) {
    let intake = Arc::new(intake);
    // A batch is taken only when it can be written at once (a single writer: when the last one is written):
    // the deliveries that come meanwhile gather.
    let writing = Arc::new(Semaphore::new(intake.store.concurrent_batches().max(1)));
    let mut waiting = Vec::with_capacity(max_batch);
    loop {
        let Ok(permit) = writing.clone().acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut waiting, max_batch).await == 0 {
            return;
        }
        let batch = std::mem::replace(&mut waiting, Vec::with_capacity(max_batch));
        let intake = intake.clone();
        tokio::spawn(async move {
            write_batch(&intake, batch, window).await;
            drop(permit);
        });
    }
}

/// Writes one batch, then answers each of its requests (503 for all when the commit failed).
async fn write_batch(intake: &Intake, batch: Vec<Request>, window: Duration) {
    let (deliveries, answers): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|r| (r.delivery, (r.answer, r._budget)))
        .unzip();
    let count = deliveries.len();
    let (payloads, lanes): (Vec<bytes::Bytes>, Vec<String>) = deliveries
        .iter()
        .map(|d| (d.payload().clone(), super::lane_of(d.repo.as_deref())))
        .unzip();
    match crate::metrics::time_store(
        "ingest_commit",
        intake.store.insert_delivery_batch(deliveries, window),
    )
    .await
    {
        Ok(inserted) => {
            intake.health.store_ok();
            let mut news = Vec::new();
            for ((inserted, payload), lane) in inserted.iter().zip(payloads).zip(lanes) {
                if let Inserted::New(row) = inserted {
                    intake.fresh.put(*row, payload);
                    news.push(lane);
                }
            }
            if !news.is_empty() {
                intake.deliveries_waiting.ring_lanes(news);
            }
            for ((answer, _budget), inserted) in answers.into_iter().zip(inserted) {
                let _ = answer.send(Ok(inserted));
            }
        }
        Err(e) => {
            let why = format!("{e:#}");
            warn!(
                deliveries = count,
                "storing deliveries failed; each was answered 503 so its sender tries again: {why}"
            );
            intake
                .health
                .store_failed(format!("storing deliveries failed: {why}"));
            for (answer, _budget) in answers {
                let _ = answer.send(Err(why.clone()));
            }
        }
    }
}

/// Payloads of deliveries just stored, by row id, kept for the dispatcher so that matching a delivery does
/// not read back from the store what was written to it a moment before. Bounded in bytes: past the bound the
/// oldest are dropped (and read from the store when their turn comes). What is here is what was committed,
/// byte for byte: a payload is put only after its batch committed, under the row id the store gave it.
pub struct FreshPayloads {
    limit: usize,
    held: std::sync::Mutex<Fresh>,
}

#[derive(Default)]
struct Fresh {
    by_row: std::collections::HashMap<i64, bytes::Bytes>,
    order: std::collections::VecDeque<i64>,
    bytes: usize,
}

impl FreshPayloads {
    /// At most `limit` bytes of payloads at once.
    pub fn new(limit: usize) -> FreshPayloads {
        FreshPayloads {
            limit,
            held: Default::default(),
        }
    }

    /// Keeps the payload of the delivery stored as `row`, dropping the oldest kept past the bound.
    pub fn put(&self, row: i64, payload: bytes::Bytes) {
        if payload.len() > self.limit {
            return;
        }
        let mut fresh = self.held.lock().unwrap_or_else(|e| e.into_inner());
        fresh.bytes += payload.len();
        if let Some(old) = fresh.by_row.insert(row, payload) {
            fresh.bytes -= old.len();
        } else {
            fresh.order.push_back(row);
        }
        while fresh.bytes > self.limit {
            let Some(oldest) = fresh.order.pop_front() else {
                break;
            };
            if let Some(dropped) = fresh.by_row.remove(&oldest) {
                fresh.bytes -= dropped.len();
            }
        }
    }

    /// The payload of the delivery stored as `row`, if it is still kept (it is then no longer kept).
    pub fn take(&self, row: i64) -> Option<bytes::Bytes> {
        let mut fresh = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let payload = fresh.by_row.remove(&row)?;
        fresh.bytes -= payload.len();
        // Its place in the order is left behind and skipped when reached; the order is trimmed when it
        // holds many more rows than are kept.
        if fresh.order.len() > 2 * fresh.by_row.len() + 64 {
            let Fresh { by_row, order, .. } = &mut *fresh;
            order.retain(|row| by_row.contains_key(row));
        }
        Some(payload)
    }

    /// Bytes kept now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// The bytes of request bodies held in memory at once.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// A share of the [`BodyBudget`]; returned when dropped.
pub struct Reservation {
    budget: BodyBudget,
    held: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Reserves `bytes` now, or `None` when they are not free (the request should be refused, not wait).
    pub fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let mut reservation = Reservation {
            budget: self.clone(),
            held: None,
        };
        reservation.grow(bytes).then_some(reservation)
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// A reservation of nothing yet for a body whose headers announce `announced` bytes, or `None` when
    /// they would not fit in what is free now (the request is refused unread). Nothing is reserved for what
    /// headers announce: [`read_body`] counts the bytes as they arrive.
    pub fn for_body(&self, announced: usize) -> Option<Reservation> {
        (announced <= self.bytes.available_permits()).then(|| Reservation {
            budget: self.clone(),
            held: None,
        })
    }
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn held(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Reserves `more` bytes on top; false (and nothing more held) when they are not free.
    pub fn grow(&mut self, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match self.budget.bytes.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// How reading a request body ended, when it did not end with the body.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the most a request may carry.
    TooLarge,
    /// The memory budget for bodies in flight ran out.
    OverBudget,
    /// The client did not send it within the body timeout.
    TimedOut,
    /// The connection failed or the body was malformed.
    Broken(String),
}

/// Reads `body` whole, counting the memory that holds it against `reservation` as its bytes arrive (what
/// its headers say is never reserved up front: a client that sends the headers of a 25 MB body and then
/// nothing held 25 MB of the budget for the whole body timeout, and three of them kept every webhook out),
/// and refusing more than `max` bytes or a body slower than `timeout`.
pub async fn read_body(
    mut body: axum::body::Body,
    reservation: &mut Reservation,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    use axum::body::HttpBody;
    use std::pin::Pin;
    let read = async {
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = bytes.len() + data.len();
            if len > max {
                return Err(BodyError::TooLarge);
            }
            // What the buffer will hold once it has these bytes (it doubles as it grows), counted first.
            let needed = if len > bytes.capacity() {
                len.max(bytes.capacity() * 2).min(max)
            } else {
                bytes.capacity()
            };
            if needed > reservation.held() && !reservation.grow(needed - reservation.held()) {
                return Err(BodyError::OverBudget);
            }
            bytes.reserve_exact(needed - bytes.len());
            bytes.extend_from_slice(&data);
        }
        Ok(bytes)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// Reads and drops what is left of a body the request is refused for, when it is small (`max` bytes at most,
/// within `timeout`): closing a connection with unread data in it resets it, and a client still writing its
/// body then never sees the answer. Nothing is kept, so no budget is needed; a larger or slower body is left
/// unread (the connection is closed).
pub async fn discard_small_body(mut body: axum::body::Body, max: usize, timeout: Duration) {
    use axum::body::HttpBody;
    use std::pin::Pin;
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > max {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_payloads_are_taken_once_and_bounded_in_bytes() {
        let fresh = FreshPayloads::new(100);
        fresh.put(1, bytes::Bytes::from(vec![1u8; 40]));
        fresh.put(2, bytes::Bytes::from(vec![2u8; 40]));
        assert_eq!(fresh.take(1).as_deref(), Some(&[1u8; 40][..]));
        assert_eq!(fresh.take(1), None, "taken once");
        assert_eq!(fresh.held(), 40);
        // Past the bound the oldest kept go.
        fresh.put(3, bytes::Bytes::from(vec![3u8; 40]));
        fresh.put(4, bytes::Bytes::from(vec![4u8; 40]));
        assert_eq!(fresh.take(2), None);
        assert_eq!(fresh.held(), 80);
        assert!(fresh.take(3).is_some() && fresh.take(4).is_some());
        // A payload larger than the whole bound is not kept, and takes nothing else out.
        fresh.put(5, bytes::Bytes::from(vec![5u8; 10]));
        fresh.put(6, bytes::Bytes::from(vec![6u8; 101]));
        assert_eq!(fresh.take(6), None);
        assert!(fresh.take(5).is_some());
        // Many puts and takes keep the order's bookkeeping small.
        for row in 10..10_000 {
            fresh.put(row, bytes::Bytes::from_static(b"x"));
            assert!(fresh.take(row).is_some());
        }
        assert_eq!(fresh.held(), 0);
        assert!(fresh.held.lock().unwrap().order.len() < 200);
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_returns_what_is_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = budget.reserve(60).unwrap();
        assert_eq!(budget.in_use(), 60);
        assert!(budget.reserve(41).is_none());
        assert!(a.grow(40));
        assert!(!a.grow(1));
        assert_eq!(a.held(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.reserve(100).is_some());
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_body_longer_than_reserved_is_counted_as_it_streams() {
        let budget = BodyBudget::new(1000);
        // Another request holds most of the budget.
        let _other = budget.reserve(900).unwrap();
        let mut reservation = budget.reserve(10).unwrap();
        let body = axum::body::Body::from(vec![b'x'; 500]);
        let read = read_body(body, &mut reservation, 10_000, Duration::from_secs(5)).await;
        assert_eq!(read, Err(BodyError::OverBudget));
        assert!(budget.in_use() <= 1000);

        let mut reservation = budget.reserve(0).unwrap();
        let body = axum::body::Body::from(vec![b'x'; 90]);
        let read = read_body(body, &mut reservation, 10_000, Duration::from_secs(5)).await;
        assert_eq!(read.unwrap().len(), 90);
        assert_eq!(reservation.held(), 90);

        let mut reservation = budget.reserve(0).unwrap();
        drop(_other);
        let body = axum::body::Body::from(vec![b'x'; 501]);
        let read = read_body(body, &mut reservation, 500, Duration::from_secs(5)).await;
        assert_eq!(read, Err(BodyError::TooLarge));
    }
}
