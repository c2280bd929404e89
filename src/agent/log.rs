//! A job's log as the agent runs: lines from the agent's streams on their way to the store, within a budget.
//!
//! Every line is charged against the job's budget ([`JobLog::new`]: bytes, counting a small overhead per
//! line so that empty lines are not free) **when it is sent**, so what waits in the channel for the store
//! never exceeds the budget, however fast the agent writes and however slow the store is: an agent cannot
//! grow the service's memory or the store through its output. Past the budget one line says the rest was
//! cut, and later lines are dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::store::LogStream;

/// What each line costs besides its bytes (the store's row, the channel's slot).
const LINE_OVERHEAD: usize = 64;

/// The line that says the rest was cut.
pub fn cut_line(max: usize) -> String {
    format!(
        "(the job log reached its limit of {} bytes; the rest of the agent's output was cut)",
        max
    )
}

/// The sending side of a job's log; cheap to clone (every stream of the agent has one).
#[derive(Clone, Debug)]
pub struct JobLog {
    tx: mpsc::UnboundedSender<(LogStream, String)>,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct Budget {
    max: usize,
    used: AtomicUsize,
    cut: AtomicBool,
}

/// The receiving side: what the logger writes to the store.
pub type JobLogReceiver = mpsc::UnboundedReceiver<(LogStream, String)>;

impl JobLog {
    /// A log of at most `max_bytes` of output, and its receiving side.
    pub fn new(max_bytes: usize) -> (JobLog, JobLogReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Budget {
            max: max_bytes,
            used: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
        });
        (JobLog { tx, budget }, rx)
    }

    /// Sends a line, if the budget allows it; the first line past the budget is replaced by one that says
    /// the rest was cut. Fails only when nothing receives any more (as the channel's `send`).
    pub fn send(
        &self,
        line: (LogStream, String),
    ) -> Result<(), mpsc::error::SendError<(LogStream, String)>> {
        let cost = line.1.len() + LINE_OVERHEAD;
        let before = self.budget.used.fetch_add(cost, Ordering::Relaxed);
        if before.saturating_add(cost) <= self.budget.max {
            return self.tx.send(line);
        }
        // Keep the counter from wrapping on a very long run of dropped lines.
        self.budget.used.store(self.budget.max, Ordering::Relaxed);
        if !self.budget.cut.swap(true, Ordering::Relaxed) {
            return self
                .tx
                .send((LogStream::Nightshift, cut_line(self.budget.max)));
        }
        Ok(())
    }

    /// Whether the budget ran out.
    pub fn was_cut(&self) -> bool {
        self.budget.cut.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_cut_with_one_note_and_never_queued() {
        let (log, mut rx) = JobLog::new(1000);
        for i in 0..10_000 {
            log.send((LogStream::Stderr, format!("line {i} {}", "x".repeat(100))))
                .unwrap();
        }
        let mut got = Vec::new();
        while let Ok(line) = rx.try_recv() {
            got.push(line);
        }
        assert!(log.was_cut());
        // Each line costs 100+ bytes and 64 overhead: 5 fit in 1000.
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[5], (LogStream::Nightshift, cut_line(1000)));
        let queued: usize = got.iter().map(|(_, l)| l.len()).sum();
        assert!(queued < 1000 + 200);
    }

    #[test]
    fn empty_lines_are_not_free() {
        let (log, mut rx) = JobLog::new(640);
        for _ in 0..1_000_000 {
            log.send((LogStream::Stdout, String::new())).unwrap();
        }
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 11);
    }
}
