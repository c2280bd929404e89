//! The SQLite store's WAL: the task that checkpoints it, and the bound on its size.
//!
//! Checkpoints (copying the WAL into the database file, with an fsync of its own) run on a connection of
//! their own, every [`Checkpoints::EVERY`], never inside the commit of a writer: there they held every
//! request of a batch for milliseconds. A PASSIVE checkpoint waits for nobody and copies what it can.
//!
//! Under writes that never pause (a flood of webhooks), a PASSIVE checkpoint never copies the last frame
//! before the next write comes, and SQLite starts the WAL over only after one did: the WAL grew until the
//! flood paused or the disk was full (about 2 GB after 10 s of saturating ingest here). So when the WAL
//! holds [`WalLimits::bound`] bytes, the checkpoint task first runs PASSIVEs back to back while writes go
//! on (each copies what came during the one before), then takes the process's write turn (the delivery
//! writer's next batch and every other write of the process wait for it) and checkpoints with RESTART: the
//! rest is copied, the database file synced, and the next write starts the WAL over from the start of its
//! file. What writes wait for is that rest and the fsync: 60–220 ms on this machine's disk, once per bound
//! written under a flood (about every 15 s at its ingest rate); forcing a restart at every checkpoint
//! instead held writes back four times a second (p99 44–110 ms against 8 ms). The delivery writer looks at
//! the WAL file's size after each batch and rings the task when it grew past the bound ([`WalWatch`]).
//!
//! The file is cut back to the bound whenever the WAL starts over (`journal_size_limit`): cutting it
//! shorter there took the writer's commit ~0.1 s per 400 MB freed. Once the writes pause (no frame came
//! since the last checkpoint and every frame is copied), a file larger than [`WalLimits::kept`] is
//! truncated, in the write turn.
//!
//! Readers are waited for at most [`Checkpoints::READERS`]: a reader still on an older snapshot (a long
//! query, another process) keeps the WAL from starting over whatever is done, and the writes held back
//! must not wait for it; nor is the restart tried again before the WAL grew another bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::Notify;

use super::write_queue::WriteQueue;

/// How large the WAL may grow, and how much of its file is kept when it starts over.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalLimits {
    /// The largest WAL file kept once the checkpoints caught up with the writes: a larger one is then
    /// truncated. (Without it, the file kept its largest size.)
    pub kept: u64,
    /// Past this, writes wait while the WAL is copied whole and started over; the file is cut back to it
    /// when the WAL starts over (`journal_size_limit`, on every connection).
    pub bound: u64,
}

impl WalLimits {
    /// The service's: 64 MiB kept; a bound of 1 GiB, about 13 s of saturating ingest on this machine.
    pub const DEFAULT: WalLimits = WalLimits {
        kept: 64 << 20,
        bound: 1 << 30,
    };
}

/// The WAL file's size as the delivery writer sees it after each batch, and the bell it rings for the
/// checkpoint task when the file grew past the bound. The file is never smaller than its frames, and every
/// connection cuts it back to the bound when the WAL starts over (`journal_size_limit`): a file growing
/// past the bound is a WAL at it.
pub(crate) struct WalWatch {
    file: PathBuf,
    limits: WalLimits,
    /// The file's size at the writer's last look.
    seen: AtomicU64,
    full: Notify,
}

impl WalWatch {
    pub fn new(database: &std::path::Path, limits: WalLimits) -> Arc<WalWatch> {
        assert!(
            limits.kept < limits.bound,
            "the WAL's bound must lie above what is kept of it"
        );
        let mut file = database.as_os_str().to_owned();
        file.push("-wal");
        Arc::new(WalWatch {
            file: file.into(),
            limits,
            seen: AtomicU64::new(0),
            full: Notify::new(),
        })
    }

    /// The size the WAL file is cut back to when the WAL starts over (`journal_size_limit`): the bound.
    pub fn size_limit(&self) -> u64 {
        self.limits.bound
    }

    /// The WAL file's size now.
    fn size(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    /// After a write: rings the checkpoint task when the WAL file grew, at or past the bound.
    pub fn written(&self) {
        let size = self.size();
        let before = self.seen.swap(size, Ordering::Relaxed);
        if size >= self.limits.bound && size > before {
            self.full.notify_one();
        }
    }
}

/// The checkpoint task, on a connection of its own; stopped when the store is dropped.
pub(crate) struct Checkpoints(tokio::task::JoinHandle<()>);

impl Checkpoints {
    const EVERY: Duration = Duration::from_millis(250);
    /// How long a checkpoint that starts the WAL over waits for readers on an older snapshot.
    const READERS: Duration = Duration::from_millis(100);

    pub async fn start(
        options: SqliteConnectOptions,
        writes: WriteQueue,
        watch: Arc<WalWatch>,
    ) -> Result<Checkpoints> {
        let mut conn =
            sqlx::SqliteConnection::connect_with(&options.busy_timeout(Self::READERS)).await?;
        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await?;
        Ok(Checkpoints(tokio::spawn(async move {
            let mut failing = false;
            // The WAL's size at which writes wait for a restart: the bound, or past a restart that readers
            // kept from starting the WAL over, another bound past the size it was tried at.
            let mut at = watch.limits.bound;
            // The WAL's frames at the last checkpoint: none came since, when they are the same.
            let mut last = -1;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Self::EVERY) => {}
                    () = watch.full.notified() => {}
                }
                match Self::checkpoint(&mut conn, page, &writes, &watch, at, &mut last).await {
                    Ok(restart) => {
                        failing = false;
                        match restart {
                            Restart::NotDue => {}
                            Restart::Done => at = watch.limits.bound,
                            Restart::Blocked(tried) => at = tried + watch.limits.bound,
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("checkpointing the store's WAL failed (tried again): {e}");
                    }
                    Err(_) => {}
                }
            }
        })))
    }

    /// A PASSIVE checkpoint; then, when the WAL holds `at` bytes, a RESTART in the write turn; or, when no
    /// write came since the last checkpoint (`last`: the WAL's frames then), everything is copied and the
    /// file is larger than `limits.kept`, a TRUNCATE.
    async fn checkpoint(
        conn: &mut sqlx::SqliteConnection,
        page: i64,
        writes: &WriteQueue,
        watch: &WalWatch,
        at: u64,
        last: &mut i64,
    ) -> Result<Restart> {
        // (busy, frames in the WAL, frames copied)
        let (busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *conn)
                .await?;
        let quiet = std::mem::replace(last, frames) == frames;
        // A frame is a page and its 24-byte header, after the file's 32-byte header.
        let bytes = 32 + frames.max(0) as u64 * (page.max(0) as u64 + 24);
        if bytes < at {
            // The writes paused (none since the last checkpoint, every frame copied): a file grown past what
            // is kept is cut to nothing, in the write turn (truncating hundreds of MB takes ~0.1 s here, and
            // the WAL's lock). Under a steady stream of writes this never comes, and the file stays at most
            // near the bound, reused from its start.
            if quiet && busy == 0 && frames == copied && watch.size() > watch.limits.kept {
                let _turn = writes.turn().await;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(Restart::NotDue);
        }
        // What the RESTART copies while writes wait is what was written since the last PASSIVE began
        // (~0.2 s on this disk for what a quarter second of writes leaves): PASSIVEs first, back to back,
        // while writes go on, each copying what came during the one before, until that is little or stops
        // shrinking.
        let started = Instant::now();
        let (mut seen, mut came) = (frames, i64::MAX);
        let mut passes = 1;
        while passes < 8 {
            let (_, now, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *conn)
                .await?;
            passes += 1;
            // The WAL started over meanwhile (another write found it copied whole): nothing to force.
            if now < seen {
                return Ok(Restart::NotDue);
            }
            let during = now - seen;
            seen = now;
            if during < 128 || during >= came {
                break;
            }
            came = during;
        }
        let _turn = writes.turn().await;
        let waited = started.elapsed();
        let (busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&mut *conn)
                .await?;
        tracing::info!(
            wal_bytes = bytes,
            started_over = busy == 0,
            frames,
            copied,
            passes,
            turn_ms = waited.as_millis() as u64,
            held_ms = (started.elapsed() - waited).as_millis() as u64,
            "the store's WAL reached its bound under writes that never paused: copied it whole, and \
             writes waited for it"
        );
        Ok(if busy == 0 {
            Restart::Done
        } else {
            Restart::Blocked(bytes)
        })
    }
}

/// What a checkpoint did about the WAL's bound.
enum Restart {
    /// The WAL had not reached the size a restart waits for.
    NotDue,
    /// Copied whole: the next write starts it over.
    Done,
    /// Readers on an older snapshot kept it from starting over; it held this many bytes. The next restart
    /// waits for another bound past it, so writes are not held back again and again while a long reader
    /// stays.
    Blocked(u64),
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.0.abort();
    }
}
