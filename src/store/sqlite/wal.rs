//! The SQLite store's WAL: the task that checkpoints it, and the bound on its size.
//!
//! Checkpoints (copying the WAL into the database file, with an fsync of its own) run on a connection of
//! their own, every [`Checkpoints::EVERY`], never inside the commit of a writer: there they held every
//! request of a batch for milliseconds. A PASSIVE checkpoint waits for nobody and copies what it can.
//!
//! Under writes that never pause (a flood of webhooks), a PASSIVE checkpoint never copies the last frame
//! before the next write comes, and SQLite starts the WAL over only after one did: the WAL grew until the
//! flood paused or the disk was full (1.1 GB after 20 s of saturating ingest on this machine). So when the
//! WAL holds [`WalLimits::bound`] bytes, the checkpoint task first runs PASSIVEs back to back while writes
//! go on (each copies what came during the one before), then takes the process's write turn (the delivery
//! writer's next batch and every other write of the process wait for it) and checkpoints with RESTART: the
//! rest is copied, the database file synced, and the next write starts the WAL over from the start of its
//! file. The RESTART held writes 3–200 ms on this machine's disk, and a sender saw one pause of 0.13–0.2 s
//! around each (part of it, in one measured case all but 3 ms, outside the RESTART and not yet explained),
//! once per bound written under a flood (about every 15 s at its ingest rate); forcing a restart at every
//! checkpoint instead held writes back four times a second (p99 44–110 ms against 8 ms). The delivery writer looks at
//! the WAL file's size after each batch and rings the task when it grew past the bound ([`WalWatch`]).
//!
//! Readers on older snapshots (a long query, another process) keep the WAL from starting over whatever is
//! done. When they hold the PASSIVEs back, no restart is forced (writes would wait for them); a RESTART
//! waits for readers at most [`Checkpoints::READERS`]; and after either, the next try waits until the WAL
//! grew another bound. So the bound holds while no reader stays on an old snapshot for long.
//!
//! The file is cut back to the bound whenever the WAL starts over (`journal_size_limit`): cutting it
//! shorter there took the writer's commit ~0.1 s per 400 MB freed. Once the writes pause (fewer than
//! [`Checkpoints::CALM`] frames in a whole interval, and every frame copied), a file larger than
//! [`WalLimits::kept`] is truncated, in the write turn.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use sqlx::Connection;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::Notify;

use super::write_queue::WriteQueue;

/// How large the WAL may grow, and how large its file may stay once the writes paused.
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
    /// The service's: 64 MiB kept; a bound of 1 GiB, about 15 s of saturating ingest on this machine.
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
    /// The WAL's size at which writes wait for a restart: the bound; after a restart that readers kept
    /// from starting the WAL over, another bound past the size it was tried at (until it starts over).
    at: AtomicU64,
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
            at: AtomicU64::new(limits.bound),
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

    /// After a write: rings the checkpoint task when the WAL file grew, at or past the size at which
    /// writes wait for a restart.
    pub fn written(&self) {
        let size = self.size();
        let before = self.seen.swap(size, Ordering::Relaxed);
        if size >= self.at.load(Ordering::Relaxed) && size > before {
            self.full.notify_one();
        }
    }
}

/// The checkpoint task, on a connection of its own; stopped when the store is dropped.
pub(crate) struct Checkpoints(tokio::task::JoinHandle<()>);

/// What the checkpoint task remembers from one checkpoint to the next.
struct Seen {
    /// The WAL's frames at the last checkpoint.
    frames: i64,
    /// When that was.
    at: Instant,
}

impl Checkpoints {
    const EVERY: Duration = Duration::from_millis(250);
    /// How long a checkpoint that starts the WAL over waits for readers on an older snapshot.
    const READERS: Duration = Duration::from_millis(100);
    /// Frames left uncopied by a PASSIVE past which readers on older snapshots are holding it back: a
    /// RESTART then would copy the rest, or wait for them, while writes wait (4 MiB of 4 KiB pages).
    const STUCK: i64 = 1024;
    /// Fewer frames than this in a checkpoint interval are a pause of the writes, not a flood.
    const CALM: i64 = 1024;

    pub async fn start(
        options: SqliteConnectOptions,
        writes: WriteQueue,
        watch: Arc<WalWatch>,
    ) -> Result<Checkpoints> {
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
        // Set after the connection's own set-up, which keeps the store's busy timeout.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA busy_timeout = {}",
            Self::READERS.as_millis()
        )))
        .execute(&mut conn)
        .await?;
        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut conn)
            .await?;
        Ok(Checkpoints(tokio::spawn(async move {
            let mut failing = false;
            let mut seen = Seen {
                frames: -1,
                at: Instant::now(),
            };
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Self::EVERY) => {}
                    () = watch.full.notified() => {}
                }
                match Self::checkpoint(&mut conn, page, &writes, &watch, &mut seen).await {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("checkpointing the store's WAL failed (tried again): {e}");
                    }
                    Err(_) => {}
                }
            }
        })))
    }

    /// A PASSIVE checkpoint; then, when the WAL holds `watch.at` bytes, a RESTART in the write turn; or,
    /// when the writes paused and everything is copied, a file larger than `limits.kept` is truncated.
    async fn checkpoint(
        conn: &mut sqlx::SqliteConnection,
        page: i64,
        writes: &WriteQueue,
        watch: &WalWatch,
        seen: &mut Seen,
    ) -> Result<()> {
        let bound = watch.limits.bound;
        // A frame is a page and its 24-byte header, after the file's 32-byte header.
        let bytes_of = |frames: i64| 32 + frames.max(0) as u64 * (page.max(0) as u64 + 24);
        // (busy, frames in the WAL, frames copied); (1, -1, -1) while another connection checkpoints.
        let (busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *conn)
                .await?;
        if frames < 0 {
            return Ok(());
        }
        let started_over = frames < seen.frames;
        let came = if started_over {
            frames
        } else {
            frames - seen.frames.max(0)
        };
        let calm = seen.at.elapsed() >= Self::EVERY && came < Self::CALM;
        *seen = Seen {
            frames,
            at: Instant::now(),
        };
        let bytes = bytes_of(frames);
        if started_over || bytes < bound {
            watch.at.store(bound, Ordering::Relaxed);
        }
        if bytes < watch.at.load(Ordering::Relaxed) {
            // The writes paused (few frames came in a whole interval, every frame copied): a file grown past
            // what is kept is cut to nothing, in the write turn (truncating hundreds of MB takes ~0.1 s
            // here, under the WAL's lock). Under a flood this never comes, and the file stays near the
            // bound, reused from its start.
            if calm && busy == 0 && frames == copied && watch.size() > watch.limits.kept {
                let _turn = writes.turn().await;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(());
        }
        // What the RESTART copies while writes wait is what was written since the last PASSIVE began
        // (~0.2 s on this disk for what a quarter second of writes leaves): PASSIVEs first, back to back,
        // while writes go on, each copying what came during the one before, until that is little or stops
        // shrinking.
        let started = Instant::now();
        let (mut last, mut during, mut behind) = (frames, i64::MAX, frames - copied);
        let mut passes = 1;
        while passes < 8 {
            let (_, now, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *conn)
                .await?;
            passes += 1;
            // Another connection checkpoints, or the WAL started over meanwhile (a write found it copied
            // whole): nothing to force now.
            if now < 0 || now < last {
                return Ok(());
            }
            behind = now - done;
            let came = now - last;
            last = now;
            if came < 128 || came >= during {
                break;
            }
            during = came;
        }
        if behind > Self::STUCK {
            // Readers on older snapshots keep the PASSIVEs from copying: the WAL cannot start over before
            // they end, and writes would wait for them. Tried again after another bound.
            watch.at.store(bytes_of(last) + bound, Ordering::Relaxed);
            tracing::info!(
                wal_bytes = bytes_of(last),
                uncopied_frames = behind,
                "the store's WAL reached its bound, but readers on older snapshots keep it from starting \
                 over: tried again when it grew another bound"
            );
            return Ok(());
        }
        let turn = writes.turn().await;
        let waited = started.elapsed();
        let (busy, frames, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&mut *conn)
                .await?;
        drop(turn);
        let bytes = bytes_of(last);
        // Blocked (readers, or another connection's checkpoint): tried again after another bound, so that
        // writes are not held back again and again while a long reader stays.
        watch.at.store(
            if busy == 0 { bound } else { bytes + bound },
            Ordering::Relaxed,
        );
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
        Ok(())
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.0.abort();
    }
}
