-- The outbox (issue 9). A job's agent result is stored with the job in the same transaction that moves it to
-- `delivering`; delivery reads it from here and can be tried again without running the agent again. A job that
-- met a transient failure waits until `next_attempt_at`, with the reason in `wait_reason`.
--
-- SQLite cannot change a CHECK constraint in place, so `jobs` is rebuilt (with foreign keys off, outside
-- sqlx's transaction: this migration runs without one and opens its own).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
DROP TABLE IF EXISTS jobs_new;
CREATE TABLE jobs_new (
    id               INTEGER PRIMARY KEY,
    delivery_id      INTEGER NOT NULL REFERENCES deliveries (id),
    trigger_name     TEXT    NOT NULL,
    repo             TEXT    NOT NULL,
    spec             TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'delivering', 'succeeded', 'failed', 'cancelled')),
    concurrency_group TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,  -- starts of the agent
    retries          INTEGER NOT NULL DEFAULT 0,  -- times the job was put back to wait (transient failures)
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    error            TEXT,
    usage            TEXT,
    result           TEXT,                        -- JSON: how the agent's run ended, what it proposed
    next_attempt_at  INTEGER,                     -- unix ms; the job waits until then
    wait_reason      TEXT,                        -- why it waits
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (delivery_id, trigger_name)
);
INSERT INTO jobs_new (id, delivery_id, trigger_name, repo, spec, state, concurrency_group, cancel_requested,
                      attempts, lease_owner, lease_expires_at, error, usage, created_at, started_at, finished_at)
    SELECT id, delivery_id, trigger_name, repo, spec, state, concurrency_group, cancel_requested,
           attempts, lease_owner, lease_expires_at, error, usage, created_at, started_at, finished_at
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_group ON jobs (concurrency_group, state) WHERE concurrency_group IS NOT NULL;
CREATE INDEX jobs_by_repo_start ON jobs (repo, started_at);

-- An output is recorded `pending` before the call that creates it (so a retry knows to look on GitHub for
-- what that call may have created), and `done` with its URL and GitHub id after.
ALTER TABLE outputs ADD COLUMN state TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('pending', 'done'));
ALTER TABLE outputs ADD COLUMN github_id INTEGER;

-- What nightshift last pushed to each branch it pushes: the next push is `--force-with-lease` against it, so
-- commits someone else added are never erased.
CREATE TABLE pushes (
    repo       TEXT    NOT NULL,
    branch     TEXT    NOT NULL,
    sha        TEXT    NOT NULL,
    job_id     INTEGER NOT NULL,
    pushed_at  INTEGER NOT NULL,
    PRIMARY KEY (repo, branch)
);
COMMIT;
PRAGMA foreign_keys = ON;
