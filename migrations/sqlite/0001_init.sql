-- Deliveries as GitHub sent them. A row is written (and committed) before the webhook answers 202.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    delivery_id     TEXT    NOT NULL UNIQUE,   -- X-GitHub-Delivery; a redelivery repeats it
    event           TEXT    NOT NULL,          -- X-GitHub-Event
    action          TEXT,                      -- the payload's "action", when it has one
    repo            TEXT,                      -- repository.full_name, when the event has one
    installation_id INTEGER,                   -- installation.id (GitHub App deliveries)
    payload         BLOB    NOT NULL,          -- the raw body, exactly as signed
    received_at     INTEGER NOT NULL,          -- unix ms
    matched_at      INTEGER                    -- unix ms; NULL until triggers were matched against it
);
CREATE INDEX deliveries_unmatched ON deliveries (id) WHERE matched_at IS NULL;

-- One job per (delivery, trigger). The spec is the rendered job, frozen when it was matched.
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    delivery_id      INTEGER NOT NULL REFERENCES deliveries (id),
    trigger_name     TEXT    NOT NULL,
    repo             TEXT    NOT NULL,
    spec             TEXT    NOT NULL,          -- JSON (JobSpec)
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    concurrency_group TEXT,                     -- at most one running job per group
    cancel_requested INTEGER NOT NULL DEFAULT 0, -- a newer job of the group asked this one to stop
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,                   -- unix ms
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (delivery_id, trigger_name)
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_group ON jobs (concurrency_group, state) WHERE concurrency_group IS NOT NULL;

CREATE TABLE job_logs (
    id      INTEGER PRIMARY KEY,
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    at      INTEGER NOT NULL,
    stream  TEXT    NOT NULL,                   -- nightshift | stdout | stderr
    line    TEXT    NOT NULL
);
CREATE INDEX job_logs_by_job ON job_logs (job_id, id);

-- What a job delivered to GitHub. The key makes delivery idempotent across retries.
CREATE TABLE outputs (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    kind       TEXT    NOT NULL,                -- comment | pull_request
    key        TEXT    NOT NULL,
    url        TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (job_id, key)
);

-- Repositories nightshift has seen in deliveries: where to clone them and which installation acts on them.
-- Scheduled jobs, which have no delivery of their own, read them from here.
CREATE TABLE repositories (
    full_name       TEXT    PRIMARY KEY,
    installation_id INTEGER,
    clone_url       TEXT    NOT NULL,
    default_branch  TEXT    NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- The last tick of each schedule that was turned into a delivery, per repository.
CREATE TABLE schedule_ticks (
    schedule   TEXT    NOT NULL,   -- "cron@timezone"
    repo       TEXT    NOT NULL,
    last_tick  INTEGER NOT NULL,   -- unix ms
    PRIMARY KEY (schedule, repo)
);
