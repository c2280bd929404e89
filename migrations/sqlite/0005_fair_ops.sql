-- Fair scheduling, concurrency limits, operator commands and retention (issue 11, items 6 and 7).

-- A retried job names the job it retries (`nightshift jobs retry`). No foreign key: retention may remove the
-- older job first.
ALTER TABLE jobs ADD COLUMN retried_from INTEGER;
-- Why a running job was asked to stop, when an operator asked (`nightshift jobs cancel`); NULL when a newer
-- job of its concurrency group did.
ALTER TABLE jobs ADD COLUMN cancel_reason TEXT;
-- The agent profile the job runs, from its frozen spec: per-profile `max_concurrent` counts running jobs by it.
ALTER TABLE jobs ADD COLUMN agent TEXT
    GENERATED ALWAYS AS (CASE WHEN json_valid(spec) THEN json_extract(spec, '$.agent') END) VIRTUAL;

-- Claims count running jobs per repository and profile, and look up when a repository last started one.
CREATE INDEX jobs_by_repo_state ON jobs (repo, state);
CREATE INDEX jobs_running_by_agent ON jobs (agent) WHERE state IN ('running', 'delivering');
-- The dispatcher takes the oldest unmatched delivery of each repository.
CREATE INDEX deliveries_unmatched_by_repo ON deliveries (repo, id) WHERE matched_at IS NULL;
-- Retention finds what ended, or arrived, before a cut-off.
CREATE INDEX jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX deliveries_by_received ON deliveries (received_at);
