//! The SQLite store's delivery writer: one connection of its own, driven by one thread of its own, writes
//! every group-commit batch (`Store::insert_deliveries`) through rusqlite (synchronous calls into SQLite).
//!
//! Through sqlx, each statement of a batch (BEGIN, the inserts, each row they return, COMMIT) was a message
//! to the connection's worker thread and a wakeup back: most of the CPU of a delivery went to those hops.
//! Here a batch is one message to this thread and one answer; the statements are prepared once and kept.
//! The connection is opened and used on this thread only (its busy handler reads the busy timeout from
//! the thread). It is the durable one (`synchronous = FULL`: the commit is one fsync of the WAL); it never
//! checkpoints (`wal_autocheckpoint = 0`, the store's checkpoint task does). Each batch holds the file's
//! write lock as the process shares it (`WriteQueue::lock_for_writer`), in turn with the one write at the
//! head of the process's line; SQLite's busy handler (`wait_for_lock`) is left for other processes.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, OpenFlags, Params, PrepFlags, Row, Statement};
use tokio::sync::oneshot;

use crate::ids::DeliveryId;
use crate::now_ms;
use crate::store::batch::Answers;
use crate::store::{Inserted, NewDelivery};

use super::WriteQueue;
use super::wal::WalWatch;

/// A batch for the writer thread, and where its answer goes.
struct Job {
    batch: Vec<NewDelivery>,
    window: Duration,
    answer: oneshot::Sender<Result<Vec<Inserted>>>,
}

/// The handle of the writer thread; the thread (and its connection) ends when this is dropped.
pub(crate) struct DeliveryWriter {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl DeliveryWriter {
    /// Opens the writer's connection to the database at `path` (an error here is the store's error at
    /// start) and starts its thread, which opens it: the connection is used on that thread only.
    pub fn start(
        path: &Path,
        busy_timeout: Duration,
        writes: WriteQueue,
        watch: Arc<WalWatch>,
    ) -> Result<DeliveryWriter> {
        let path = path.to_owned();
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let (opened, open) = std::sync::mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                BUSY_TIMEOUT.set(busy_timeout);
                match open_connection(&path, &watch) {
                    Ok(conn) => {
                        let _ = opened.send(Ok(()));
                        run(conn, &path, &writes, &watch, queue);
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                    }
                }
            })
            .context("starting the store's writer thread")?;
        open.recv()
            .unwrap_or_else(|_| Err(anyhow!("the store's writer thread stopped")))?;
        Ok(DeliveryWriter { jobs })
    }

    /// Writes `batch` in one transaction; see `Store::insert_deliveries`.
    pub async fn write(&self, batch: Vec<NewDelivery>, window: Duration) -> Result<Vec<Inserted>> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job {
                batch,
                window,
                answer,
            })
            .map_err(|_| anyhow!("the store's writer thread stopped"))?;
        answered
            .await
            .unwrap_or_else(|_| Err(anyhow!("the store's writer thread stopped")))
    }
}

fn run(
    mut conn: Connection,
    path: &Path,
    writes: &WriteQueue,
    watch: &WalWatch,
    queue: std::sync::mpsc::Receiver<Job>,
) {
    while serve(&conn, writes, watch, &queue) {
        drop(conn);
        conn = match reopen(path, watch, &queue) {
            Some(conn) => conn,
            None => return,
        };
    }
}

/// Writes batches on `conn` until every handle is gone (false) or the connection is unusable (true).
fn serve(
    conn: &Connection,
    writes: &WriteQueue,
    watch: &WalWatch,
    queue: &std::sync::mpsc::Receiver<Job>,
) -> bool {
    let mut statements = match Statements::prepare(conn) {
        Ok(statements) => statements,
        Err(e) => {
            // Nothing works on this connection: the next batch gets the error, and a new one is opened.
            let Ok(job) = queue.recv() else { return false };
            let _ = job.answer.send(Err(e));
            return true;
        }
    };
    while let Ok(job) = queue.recv() {
        // The file's write lock, taken in turn with the write at the head of the process's line.
        let lock = writes.lock_for_writer();
        let written = write(conn, &mut statements, &job.batch, job.window);
        drop(lock);
        // A failed COMMIT whose ROLLBACK failed too leaves the connection inside a transaction: it is
        // closed, and the next batch gets a new one.
        let broken = written.is_err() && !conn.is_autocommit();
        let _ = job.answer.send(written);
        watch.written();
        if broken {
            return true;
        }
    }
    false
}

/// A new connection for the next batch; each batch that comes while none opens is answered with why.
fn reopen(
    path: &Path,
    watch: &WalWatch,
    queue: &std::sync::mpsc::Receiver<Job>,
) -> Option<Connection> {
    loop {
        match open_connection(path, watch) {
            Ok(conn) => return Some(conn),
            Err(e) => {
                let job = queue.recv().ok()?;
                let _ = job.answer.send(Err(e));
            }
        }
    }
}

/// The statements of a batch, prepared once per connection.
struct Statements<'c> {
    begin: Statement<'c>,
    commit: Statement<'c>,
    rollback: Statement<'c>,
    insert: Statement<'c>,
    insert_payload: Statement<'c>,
    forget_digests: Statement<'c>,
    insert_digest: Statement<'c>,
    first_with_digest: Statement<'c>,
    remove: Statement<'c>,
}

impl<'c> Statements<'c> {
    fn prepare(conn: &'c Connection) -> Result<Statements<'c>> {
        let prepare = |sql: &str| {
            conn.prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT)
                .map_err(sqlite_error)
                .with_context(|| format!("preparing {sql}"))
        };
        Ok(Statements {
            begin: prepare("BEGIN IMMEDIATE")?,
            commit: prepare("COMMIT")?,
            rollback: prepare("ROLLBACK")?,
            insert: prepare(
                "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, received_at) \
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (delivery_id) DO NOTHING
                 RETURNING id",
            )?,
            insert_payload: prepare(
                "INSERT INTO delivery_payloads (delivery_id, payload, encoding) VALUES (?, ?, ?)",
            )?,
            forget_digests: prepare("DELETE FROM delivery_digests WHERE received_at < ?")?,
            insert_digest: prepare(
                "INSERT INTO delivery_digests (body_sha256, delivery_id, received_at) VALUES (?, ?, ?)
                 ON CONFLICT (body_sha256) DO NOTHING
                 RETURNING 1",
            )?,
            first_with_digest: prepare(
                "SELECT delivery_id FROM delivery_digests WHERE body_sha256 = ?",
            )?,
            remove: prepare("DELETE FROM deliveries WHERE id = ?")?,
        })
    }
}

/// One batch in one transaction: committed whole, or rolled back whole (the error says why).
fn write(
    conn: &Connection,
    s: &mut Statements<'_>,
    batch: &[NewDelivery],
    window: Duration,
) -> Result<Vec<Inserted>> {
    exec(&mut s.begin, [], |_| Ok(()))?;
    match write_in_transaction(s, batch, window).and_then(|answers| {
        exec(&mut s.commit, [], |_| Ok(()))?;
        Ok(answers)
    }) {
        Ok(answers) => Ok(answers),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = exec(&mut s.rollback, [], |_| Ok(()));
            }
            Err(e)
        }
    }
}

fn write_in_transaction(
    s: &mut Statements<'_>,
    batch: &[NewDelivery],
    window: Duration,
) -> Result<Vec<Inserted>> {
    let now = now_ms();
    let mut inserted = Vec::with_capacity(batch.len());
    for d in batch {
        let row = exec(
            &mut s.insert,
            (
                &d.delivery_id.0,
                &d.event,
                d.action.as_deref(),
                d.repo.as_deref(),
                d.installation_id,
                now,
            ),
            |row| row.get::<_, i64>(0),
        )?;
        if let Some(row) = row {
            // Packed on the request's task as a rule (`NewDelivery::prepare`). Bound as a borrowed slice:
            // rusqlite has SQLite copy it once (SQLITE_TRANSIENT), no copy here.
            exec(
                &mut s.insert_payload,
                (row, d.packed(), crate::store::payload::LZ4),
                |_| Ok(()),
            )?;
            inserted.push((d.delivery_id.0.clone(), row));
        }
    }
    let mut answers =
        Answers::from_inserted(batch.iter().map(|d| d.delivery_id.0.as_str()), inserted);
    if window.is_zero() {
        return Ok(answers.into_answers());
    }
    let cutoff = now.saturating_sub(window.as_millis() as i64);
    exec(&mut s.forget_digests, [cutoff], |_| Ok(()))?;
    let (fresh, mut removed) = answers.digests(batch);
    for f in &fresh {
        // A digest already there (within the window: older ones were just removed) is a replay.
        let new = exec(
            &mut s.insert_digest,
            (&f.digest[..], &batch[f.index].delivery_id.0, now),
            |_| Ok(()),
        )?;
        if new.is_none() {
            let first = exec(&mut s.first_with_digest, [&f.digest[..]], |row| {
                let text = row.get_ref(0)?.as_bytes_or_null()?.unwrap_or_default();
                Ok(String::from_utf8_lossy(text).into_owned())
            })?
            .context("a replayed body's digest vanished")?;
            removed.push(f.row);
            answers.replayed(f, DeliveryId(first));
        }
    }
    for row in removed {
        exec(&mut s.remove, [row], |_| Ok(()))?;
    }
    Ok(answers.into_answers())
}

/// Opens the writer's connection (on the writer thread: its busy handler is the thread's).
fn open_connection(path: &Path, watch: &WalWatch) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_error)
    .with_context(|| format!("opening {}", path.display()))?;
    // rusqlite sets a busy timeout of its own (SQLite's handler); this one replaces it.
    conn.busy_handler(Some(wait_for_lock))
        .map_err(sqlite_error)
        .with_context(|| format!("setting up the writer's connection to {}", path.display()))?;
    // Durable commits (one fsync of the WAL each); the store's checkpoint task checkpoints. A small
    // page cache: this connection only appends.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -512; PRAGMA journal_size_limit = {}",
        watch.size_limit()
    ))
    .map_err(sqlite_error)
    .with_context(|| format!("setting up the writer's connection to {}", path.display()))?;
    Ok(conn)
}

/// SQLite's message and extended result code, as the store's errors say them (`/readyz` shows the
/// message: "database or disk is full").
fn sqlite_error(e: rusqlite::Error) -> anyhow::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, Some(message)) => {
            anyhow!("{message} (SQLite code {})", code.extended_code)
        }
        rusqlite::Error::SqliteFailure(code, None) => {
            anyhow!("{code} (SQLite code {})", code.extended_code)
        }
        e => anyhow!(e),
    }
}

/// Binds `params`, runs `stmt` to its end and returns `read` of its first row (if it had one). The
/// statement is reset (when its rows are dropped) and its parameters cleared before returning.
fn exec<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    read: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>> {
    let result = step_to_end(stmt, params, read);
    stmt.clear_bindings();
    result.map_err(sqlite_error)
}

fn step_to_end<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    read: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut rows = stmt.query(params)?;
    let mut first = None;
    let mut read = Some(read);
    while let Some(row) = rows.next()? {
        if let Some(read) = read.take() {
            first = Some(read(row)?);
        }
    }
    Ok(first)
}

thread_local! {
    /// The busy timeout of the writer's connection, set once by the writer thread (the only one that uses
    /// the connection, so the only one SQLite calls `wait_for_lock` on).
    static BUSY_TIMEOUT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// When the writer thread started waiting for the write lock it waits for now.
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// SQLite's busy handler for the writer, which takes no turn in the store's write queue (`WriteQueue`):
/// webhook deliveries never line up behind the dispatcher's matches and the workers' writes; they wait
/// only for the one write holding SQLite's lock. While another connection holds it, try again after 50 µs,
/// doubling to 800 µs, until the busy timeout (the thread's `BUSY_TIMEOUT`) has passed. SQLite's own handler sleeps 1, 2, 5, 10 ms and more between tries: every
/// request of the batch waited that long for a lock held for microseconds.
fn wait_for_lock(tries: i32) -> bool {
    let limit = BUSY_TIMEOUT.try_with(Cell::get).unwrap_or_default();
    let now = Instant::now();
    let since = WAITING_SINCE
        .try_with(|since| {
            let started = match since.get() {
                Some(started) if tries > 0 => started,
                _ => now,
            };
            since.set(Some(started));
            started
        })
        .unwrap_or(now);
    if now.duration_since(since) >= limit {
        return false;
    }
    std::thread::sleep(Duration::from_micros(50 << tries.clamp(0, 4)));
    true
}
