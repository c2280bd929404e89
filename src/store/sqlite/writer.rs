//! The SQLite store's delivery writer: one connection of its own, driven by one thread of its own, writes
//! every group-commit batch (`Store::insert_deliveries`) with direct calls into SQLite.
//!
//! Through sqlx, each statement of a batch (BEGIN, the inserts, each row they return, COMMIT) was a message
//! to the connection's worker thread and a wakeup back: most of the CPU of a delivery went to those hops.
//! Here a batch is one message to this thread and one answer; the statements are prepared once and kept.
//! The connection is the durable one (`synchronous = FULL`: the commit is one fsync of the WAL); it never
//! checkpoints (`wal_autocheckpoint = 0`, the store's checkpoint task does).

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use libsqlite3_sys as ffi;
use tokio::sync::oneshot;

use crate::ids::DeliveryId;
use crate::now_ms;
use crate::store::batch::Answers;
use crate::store::{Inserted, NewDelivery};

use super::WriteQueue;

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
    /// start) and starts its thread.
    /// Each batch takes its turn in `writes`, the queue of every write of the process to that file.
    pub fn start(
        path: &Path,
        busy_timeout: Duration,
        writes: WriteQueue,
    ) -> Result<DeliveryWriter> {
        let path = path.to_owned();
        let conn = Connection::open(&path, busy_timeout)?;
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, &path, busy_timeout, &writes, queue))
            .context("starting the store's writer thread")?;
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
    busy_timeout: Duration,
    writes: &WriteQueue,
    queue: std::sync::mpsc::Receiver<Job>,
) {
    while serve(&conn, writes, &queue) {
        drop(conn);
        conn = match reopen(path, busy_timeout, &queue) {
            Some(conn) => conn,
            None => return,
        };
    }
}

/// Writes batches on `conn` until every handle is gone (false) or the connection is unusable (true).
fn serve(conn: &Connection, writes: &WriteQueue, queue: &std::sync::mpsc::Receiver<Job>) -> bool {
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
        let turn = writes.blocking_turn();
        let written = write(conn, &mut statements, &job.batch, job.window);
        // A failed COMMIT whose ROLLBACK failed too leaves the connection inside a transaction: it is
        // closed, and the next batch gets a new one.
        let broken = written.is_err() && !conn.autocommit();
        drop(turn);
        let _ = job.answer.send(written);
        if broken {
            return true;
        }
    }
    false
}

/// A new connection for the next batch; each batch that comes while none opens is answered with why.
fn reopen(
    path: &Path,
    busy_timeout: Duration,
    queue: &std::sync::mpsc::Receiver<Job>,
) -> Option<Connection> {
    loop {
        match Connection::open(path, busy_timeout) {
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
        Ok(Statements {
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            rollback: conn.prepare("ROLLBACK")?,
            insert: conn.prepare(
                "INSERT INTO deliveries (delivery_id, event, action, repo, installation_id, received_at) \
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (delivery_id) DO NOTHING
                 RETURNING id",
            )?,
            insert_payload: conn
                .prepare("INSERT INTO delivery_payloads (delivery_id, payload) VALUES (?, ?)")?,
            forget_digests: conn.prepare("DELETE FROM delivery_digests WHERE received_at < ?")?,
            insert_digest: conn.prepare(
                "INSERT INTO delivery_digests (body_sha256, delivery_id, received_at) VALUES (?, ?, ?)
                 ON CONFLICT (body_sha256) DO NOTHING
                 RETURNING 1",
            )?,
            first_with_digest: conn
                .prepare("SELECT delivery_id FROM delivery_digests WHERE body_sha256 = ?")?,
            remove: conn.prepare("DELETE FROM deliveries WHERE id = ?")?,
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
    s.begin.run(&[], |_| ())?;
    match write_in_transaction(s, batch, window).and_then(|answers| {
        s.commit.run(&[], |_| ())?;
        Ok(answers)
    }) {
        Ok(answers) => Ok(answers),
        Err(e) => {
            if !conn.autocommit() {
                let _ = s.rollback.run(&[], |_| ());
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
    use Value::*;
    let now = now_ms();
    let mut inserted = Vec::with_capacity(batch.len());
    for d in batch {
        let installation = d.installation_id.map_or(Null, Int);
        let row = s.insert.run(
            &[
                Text(&d.delivery_id.0),
                Text(&d.event),
                d.action.as_deref().map_or(Null, Text),
                d.repo.as_deref().map_or(Null, Text),
                installation,
                Int(now),
            ],
            |row| row.int(0),
        )?;
        if let Some(row) = row {
            s.insert_payload
                .run(&[Int(row), Blob(&d.payload)], |_| ())?;
            inserted.push((d.delivery_id.0.clone(), row));
        }
    }
    let mut answers =
        Answers::from_inserted(batch.iter().map(|d| d.delivery_id.0.as_str()), inserted);
    if window.is_zero() {
        return Ok(answers.into_answers());
    }
    let cutoff = now.saturating_sub(window.as_millis() as i64);
    s.forget_digests.run(&[Int(cutoff)], |_| ())?;
    let (fresh, mut removed) = answers.digests(batch);
    for f in &fresh {
        // A digest already there (within the window: older ones were just removed) is a replay.
        let new = s.insert_digest.run(
            &[
                Blob(&f.digest),
                Text(&batch[f.index].delivery_id.0),
                Int(now),
            ],
            |_| (),
        )?;
        if new.is_none() {
            let first = s
                .first_with_digest
                .run(&[Blob(&f.digest)], |row| row.text(0))?
                .context("a replayed body's digest vanished")?;
            removed.push(f.row);
            answers.replayed(f, DeliveryId(first));
        }
    }
    for row in removed {
        s.remove.run(&[Int(row)], |_| ())?;
    }
    Ok(answers.into_answers())
}

/// A value bound to a statement's parameter.
#[derive(Clone, Copy)]
enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// A connection to SQLite, used by one thread at a time.
struct Connection {
    db: NonNull<ffi::sqlite3>,
}

// SAFETY: the connection is opened in SQLite's multi-thread mode (`SQLITE_OPEN_NOMUTEX`), where a
// connection may move between threads as long as two never use it at once: it is owned by one thread.
unsafe impl Send for Connection {}

impl Connection {
    fn open(path: &Path, busy_timeout: Duration) -> Result<Connection> {
        let name = CString::new(path.as_os_str().as_bytes())
            .with_context(|| format!("the store's path {} holds a NUL", path.display()))?;
        let mut db = ptr::null_mut();
        // SAFETY: `name` is a NUL-terminated string; `db` receives the handle (or null without memory).
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
                ptr::null(),
            )
        };
        let db = NonNull::new(db).context("SQLite could not allocate a connection")?;
        let conn = Connection { db };
        if rc != ffi::SQLITE_OK {
            return Err(conn.error(rc)).with_context(|| format!("opening {}", path.display()));
        }
        // SAFETY: a valid connection handle.
        unsafe {
            ffi::sqlite3_extended_result_codes(db.as_ptr(), 1);
            ffi::sqlite3_busy_handler(
                db.as_ptr(),
                Some(wait_for_lock),
                busy_timeout.as_millis().min(usize::MAX as u128) as usize as *mut c_void,
            );
        }
        // Durable commits (one fsync of the WAL each); the store's checkpoint task checkpoints. A small
        // page cache: this connection only appends.
        conn.exec(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -512",
        )
        .with_context(|| format!("setting up the writer's connection to {}", path.display()))?;
        Ok(conn)
    }

    /// Whether no transaction is open.
    fn autocommit(&self) -> bool {
        // SAFETY: a valid connection handle.
        unsafe { ffi::sqlite3_get_autocommit(self.db.as_ptr()) != 0 }
    }

    /// The connection's last error, for the result code `rc`.
    fn error(&self, rc: c_int) -> anyhow::Error {
        // SAFETY: a valid connection handle; sqlite3_errmsg returns a NUL-terminated string owned by
        // SQLite, copied before any other call.
        let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db.as_ptr())) };
        anyhow!("{} (SQLite code {rc})", message.to_string_lossy())
    }

    fn exec(&self, sql: &str) -> Result<()> {
        let sql = CString::new(sql)?;
        // SAFETY: a valid connection handle and a NUL-terminated statement; no callback, no error string
        // (the message is read from the connection).
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db.as_ptr(),
                sql.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        Ok(())
    }

    fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        let mut stmt = ptr::null_mut();
        // SAFETY: a valid connection handle; `sql` is read for exactly its length.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                self.db.as_ptr(),
                sql.as_ptr() as *const c_char,
                c_int::try_from(sql.len())?,
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc)).with_context(|| format!("preparing {sql}"));
        }
        let stmt = NonNull::new(stmt).with_context(|| format!("{sql} is empty"))?;
        Ok(Statement { stmt, conn: self })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: every statement borrows the connection, so all were finalized before this.
        unsafe {
            ffi::sqlite3_close(self.db.as_ptr());
        }
    }
}

thread_local! {
    /// When the writer thread started waiting for the write lock it waits for now.
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// SQLite's busy handler for the writer: in-process writers take their turn first (`WriteQueue`), so this
/// waits only for another process's write (a CLI command beside the service). While another connection
/// holds the write lock, try again after 50 µs, doubling to 800 µs, until the busy timeout
/// (`limit_ms`, carried in the pointer) has passed. SQLite's own handler sleeps 1, 2, 5, 10 ms and more
/// between tries: every request of the batch waited that long for a lock held for microseconds.
unsafe extern "C" fn wait_for_lock(limit_ms: *mut c_void, tries: c_int) -> c_int {
    let limit = Duration::from_millis(limit_ms as usize as u64);
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
        return 0;
    }
    std::thread::sleep(Duration::from_micros(50 << tries.clamp(0, 4)));
    1
}

/// A prepared statement, reset (and its parameters cleared) after every run.
struct Statement<'c> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    conn: &'c Connection,
}

/// The current row of a statement being run.
struct Row<'s> {
    stmt: &'s NonNull<ffi::sqlite3_stmt>,
}

impl Row<'_> {
    fn int(&self, column: c_int) -> i64 {
        // SAFETY: the statement has a row (SQLITE_ROW was just returned).
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), column) }
    }

    fn text(&self, column: c_int) -> String {
        // SAFETY: the statement has a row; the text pointer is valid for `column_bytes` bytes until the
        // next step or reset, and is copied before.
        unsafe {
            let text = ffi::sqlite3_column_text(self.stmt.as_ptr(), column);
            if text.is_null() {
                return String::new();
            }
            let len = ffi::sqlite3_column_bytes(self.stmt.as_ptr(), column) as usize;
            String::from_utf8_lossy(std::slice::from_raw_parts(text, len)).into_owned()
        }
    }
}

impl Statement<'_> {
    /// Binds `params`, runs the statement to its end and returns `read` of its first row (if it had one).
    /// The parameters are cleared before returning, so SQLite keeps no pointer into them.
    fn run<T>(
        &mut self,
        params: &[Value<'_>],
        read: impl FnOnce(&Row<'_>) -> T,
    ) -> Result<Option<T>> {
        let result = self.bind_and_step(params, read);
        // SAFETY: a valid statement; reset ends its run, clear_bindings drops every pointer into `params`.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
        }
        result
    }

    fn bind_and_step<T>(
        &mut self,
        params: &[Value<'_>],
        read: impl FnOnce(&Row<'_>) -> T,
    ) -> Result<Option<T>> {
        let stmt = self.stmt.as_ptr();
        for (i, value) in params.iter().enumerate() {
            let index = c_int::try_from(i + 1)?;
            // SAFETY: a valid statement. Text and blobs are bound without a copy (SQLITE_STATIC): they
            // outlive this run, and `run` clears the bindings before `params` can go.
            let rc = unsafe {
                match *value {
                    Value::Null => ffi::sqlite3_bind_null(stmt, index),
                    Value::Int(n) => ffi::sqlite3_bind_int64(stmt, index, n),
                    Value::Text(t) => ffi::sqlite3_bind_text(
                        stmt,
                        index,
                        t.as_ptr() as *const c_char,
                        c_int::try_from(t.len())?,
                        ffi::SQLITE_STATIC(),
                    ),
                    Value::Blob(b) => ffi::sqlite3_bind_blob(
                        stmt,
                        index,
                        b.as_ptr() as *const _,
                        c_int::try_from(b.len())?,
                        ffi::SQLITE_STATIC(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.conn.error(rc));
            }
        }
        let mut first = None;
        let mut read = Some(read);
        loop {
            // SAFETY: a valid statement with every parameter bound.
            match unsafe { ffi::sqlite3_step(stmt) } {
                ffi::SQLITE_ROW => {
                    if let Some(read) = read.take() {
                        first = Some(read(&Row { stmt: &self.stmt }));
                    }
                }
                ffi::SQLITE_DONE => return Ok(first),
                rc => return Err(self.conn.error(rc)),
            }
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: a valid statement, finalized once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}
