-- The GitHub App's installations and the repositories each gives nightshift access to, kept from the
-- `installation` and `installation_repositories` events and from listing them through the API (at start and
-- daily). Schedules resolve a repository's installation here, and `repos:` patterns match these.
CREATE TABLE installations (
    id          INTEGER PRIMARY KEY,         -- installation.id
    account     TEXT    NOT NULL,            -- the user or organization it is installed on
    suspended   INTEGER NOT NULL DEFAULT 0,  -- a suspended installation cannot act
    updated_at  INTEGER NOT NULL             -- unix ms
);

CREATE TABLE installation_repositories (
    installation_id INTEGER NOT NULL REFERENCES installations (id) ON DELETE CASCADE,
    full_name       TEXT    NOT NULL,        -- as GitHub spells it
    PRIMARY KEY (installation_id, full_name)
);
CREATE INDEX installation_repositories_name ON installation_repositories (lower(full_name));

-- Deliveries nightshift asked GitHub to deliver again (backfill), so one is not asked twice within a while.
CREATE TABLE redeliveries (
    delivery_id TEXT    PRIMARY KEY,         -- X-GitHub-Delivery (GitHub's guid)
    asked_at    INTEGER NOT NULL             -- unix ms
);

-- Named leases for work that one replica at a time does (the backfill).
CREATE TABLE task_leases (
    name        TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL             -- unix ms
);
