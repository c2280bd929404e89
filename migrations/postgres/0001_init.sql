-- The Postgres store's schema: what the SQLite store has after its migrations 0001–0003 (migrations/sqlite/),
-- in Postgres types. Timestamps are unix milliseconds (BIGINT), payloads the raw bytes as signed (BYTEA).

-- Deliveries as GitHub sent them. A row is committed before the webhook answers 202.
CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     TEXT    NOT NULL UNIQUE,   -- X-GitHub-Delivery; a redelivery repeats it
    event           TEXT    NOT NULL,          -- X-GitHub-Event
    action          TEXT,                      -- the payload's "action", when it has one
    repo            TEXT,                      -- repository.full_name, when the event has one
    installation_id BIGINT,                    -- installation.id (GitHub App deliveries)
    payload         BYTEA   NOT NULL,          -- the raw body, exactly as signed
    received_at     BIGINT  NOT NULL,          -- unix ms
    matched_at      BIGINT                     -- unix ms; NULL until triggers were matched against it
);
CREATE INDEX deliveries_unmatched ON deliveries (id) WHERE matched_at IS NULL;

-- One job per (delivery, trigger). The spec is the rendered job, frozen when it was matched.
CREATE TABLE jobs (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id       BIGINT  NOT NULL REFERENCES deliveries (id),
    trigger_name      TEXT    NOT NULL,
    repo              TEXT    NOT NULL,
    spec              TEXT    NOT NULL,          -- JSON (JobSpec)
    state             TEXT    NOT NULL
        CHECK (state IN ('queued', 'running', 'delivering', 'succeeded', 'failed', 'cancelled')),
    concurrency_group TEXT,                      -- at most one running job per group
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE, -- a newer job of the group asked this one to stop
    attempts          BIGINT  NOT NULL DEFAULT 0,   -- starts of the agent
    retries           BIGINT  NOT NULL DEFAULT 0,   -- times the job was put back to wait (transient failures)
    lease_owner       TEXT,
    lease_expires_at  BIGINT,                    -- unix ms
    error             TEXT,
    usage             TEXT,                      -- JSON: what the agent spent
    result            TEXT,                      -- JSON: how the agent's run ended, what it proposed
    next_attempt_at   BIGINT,                    -- unix ms; the job waits until then
    wait_reason       TEXT,                      -- why it waits
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    UNIQUE (delivery_id, trigger_name)
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_group ON jobs (concurrency_group, state) WHERE concurrency_group IS NOT NULL;
CREATE INDEX jobs_by_repo_start ON jobs (repo, started_at);

CREATE TABLE job_logs (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  BIGINT  NOT NULL REFERENCES jobs (id),
    at      BIGINT  NOT NULL,
    stream  TEXT    NOT NULL,                    -- nightshift | stdout | stderr
    line    TEXT    NOT NULL
);
CREATE INDEX job_logs_by_job ON job_logs (job_id, id);

-- What a job delivered to GitHub. The key makes delivery idempotent across retries. An output is recorded
-- `pending` before the call that creates it, and `done` with its URL and GitHub id after.
CREATE TABLE outputs (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     BIGINT  NOT NULL REFERENCES jobs (id),
    kind       TEXT    NOT NULL,                 -- comment | pull_request | ...
    key        TEXT    NOT NULL,
    url        TEXT,
    created_at BIGINT  NOT NULL,
    state      TEXT    NOT NULL DEFAULT 'done' CHECK (state IN ('pending', 'done')),
    github_id  BIGINT,
    UNIQUE (job_id, key)
);

-- Repositories nightshift has seen in deliveries (scheduled jobs read them from here).
CREATE TABLE repositories (
    full_name       TEXT    PRIMARY KEY,
    installation_id BIGINT,
    clone_url       TEXT    NOT NULL,
    default_branch  TEXT    NOT NULL,
    updated_at      BIGINT  NOT NULL
);

-- The last tick of each schedule that was turned into a delivery, per repository.
CREATE TABLE schedule_ticks (
    schedule   TEXT    NOT NULL,   -- "cron@timezone"
    repo       TEXT    NOT NULL,
    last_tick  BIGINT  NOT NULL,   -- unix ms
    PRIMARY KEY (schedule, repo)
);

-- What nightshift last pushed to each branch it pushes (the next push is `--force-with-lease` against it).
CREATE TABLE pushes (
    repo       TEXT    NOT NULL,
    branch     TEXT    NOT NULL,
    sha        TEXT    NOT NULL,
    job_id     BIGINT  NOT NULL,
    pushed_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo, branch)
);
