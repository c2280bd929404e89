//! The queue of this process's writes to one SQLite database file.
//!
//! SQLite lets one connection write at a time; a connection that finds the write lock taken calls its busy
//! handler, which *polls*: it sleeps (1, 2, 5, 10 … 100 ms) and tries again, until the busy timeout. Under
//! many connections (a pool's eight, the delivery writer, a second store on the same file) a write could
//! lose every race for ten seconds and fail with "database is locked", and every loser slept far longer
//! than the lock was held. Here every write transaction of the process takes its turn first, in the order
//! asked (tokio's mutex is fair: first come, first served), and only then begins (`BEGIN IMMEDIATE`, or a
//! statement of its own): in-process, no connection ever waits in the busy handler. Reads take no turn
//! (WAL: readers never wait for the writer).
//!
//! The delivery writer (`writer.rs`) takes no turn: webhook deliveries, each a sender waiting for its
//! `202`, must not line up behind the dispatcher's matches and the workers' writes (measured: in line,
//! ingest fell to 0.59x of its rate). Instead the writer and the write whose turn it is take turns at a
//! second, fair lock ([`WriteQueue::lock_for_writer`]), held across each transaction: the writer waits for
//! at most the one write in turn, and that write for at most one batch. Before this lock, the write in
//! turn met the writer's SQLite lock and waited in SQLite's busy handler, which sleeps: under a steady
//! flood of webhooks the writer's batches follow each other back to back, the sleeper almost never found
//! the lock free, and the dispatcher matched 20 deliveries a second while 7,000 a second were stored.
//!
//! The queue is one per database file in the process, whichever store or pool opened it: the file is known
//! by its device and inode, so a second path to it (a symlink, a hard link, `./` or not) finds the same
//! queue. Another process on the same file (a CLI command beside the service) is not in the queue: SQLite's
//! busy timeout stays the fallback between processes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context, Result};

/// The write turn of one database file; cloned, it is the same queue.
#[derive(Clone)]
pub(crate) struct WriteQueue(Arc<Queue>);

#[derive(Default)]
struct Queue {
    /// The line of the process's writes (all but the delivery writer's), first come, first served.
    line: tokio::sync::Mutex<()>,
    /// SQLite's write lock, as this process shares it: the write at the head of the line and the delivery
    /// writer take turns here (tokio's mutex is fair, also between a task and the writer's thread).
    lock: tokio::sync::Mutex<()>,
}

/// Holding it is this writer's turn, with the file's write lock; dropped, the next writer's turn begins.
pub(crate) struct Turn<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    _line: tokio::sync::MutexGuard<'a, ()>,
}

/// The process's queues, by (device, inode) of the database file; a queue no store holds any more is
/// forgotten.
static QUEUES: Mutex<Option<Queues>> = Mutex::new(None);

type Queues = HashMap<(u64, u64), Weak<Queue>>;

impl WriteQueue {
    /// The queue of the database file at `path` (which exists), shared with every other store of this
    /// process on the same file.
    pub fn of_file(path: &Path) -> Result<WriteQueue> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let key = (meta.dev(), meta.ino());
        let mut queues = QUEUES.lock().unwrap_or_else(|e| e.into_inner());
        let queues = queues.get_or_insert_with(HashMap::new);
        if let Some(queue) = queues.get(&key).and_then(Weak::upgrade) {
            return Ok(WriteQueue(queue));
        }
        queues.retain(|_, queue| queue.strong_count() > 0);
        let queue = Arc::new(Queue::default());
        queues.insert(key, Arc::downgrade(&queue));
        Ok(WriteQueue(queue))
    }

    /// A queue of its own (an in-memory database: no other store can open it).
    pub fn private() -> WriteQueue {
        WriteQueue(Arc::new(Queue::default()))
    }

    /// Waits for this writer's turn (after every writer that asked before), then for the write lock (after
    /// the delivery writer's batch, when one is being written or waits).
    pub async fn turn(&self) -> Turn<'_> {
        let line = self.0.line.lock().await;
        Turn {
            _lock: self.0.lock.lock().await,
            _line: line,
        }
    }

    /// The delivery writer's hold of the write lock, for one batch: it waits for the write in turn, if one
    /// holds or waits for the lock, and never for the line behind it. Blocks the calling thread (the
    /// writer's own, never the runtime's).
    pub fn lock_for_writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.lock.blocking_lock()
    }

    /// Whether `other` is the same queue.
    #[cfg(test)]
    pub fn same(&self, other: &WriteQueue) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_queue_per_file_whatever_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.db");
        std::fs::write(&file, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let hard = dir.path().join("hard.db");
        std::fs::hard_link(&file, &hard).unwrap();
        let other = dir.path().join("b.db");
        std::fs::write(&other, b"").unwrap();

        let a = WriteQueue::of_file(&file).unwrap();
        assert!(a.same(&WriteQueue::of_file(&link).unwrap()));
        assert!(a.same(&WriteQueue::of_file(&hard).unwrap()));
        assert!(a.same(&WriteQueue::of_file(&dir.path().join("./a.db")).unwrap()));
        assert!(!a.same(&WriteQueue::of_file(&other).unwrap()));
    }
}
