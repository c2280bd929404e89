-- Claim lanes (as Postgres's, its migration 0007): one row per repository with a job queued, running or
-- delivering, kept by triggers on `jobs` in the statement that changes the job (every writer: a claim, a
-- finish, a retry, a cancel, retention). A claim reads the lanes, one row per repository, and looks into
-- each repository's queue by index from its oldest job, instead of checking every queued job (measured: a
-- claim behind 4,000 queued jobs read each of them, and counted its repository's starts for each).

CREATE TABLE claim_lanes (
    repo            TEXT    PRIMARY KEY,
    installation_id INTEGER,                    -- of the delivery of the job that opened the lane
    queued          INTEGER NOT NULL,           -- its jobs in state 'queued'
    running         INTEGER NOT NULL,           -- its jobs running or delivering
    last_started    INTEGER NOT NULL,           -- unix ms: the latest start of any of its jobs, 0 if none
    head            INTEGER                     -- its oldest queued job (NULL when none is queued)
) WITHOUT ROWID;

-- A claim looks for a repository's oldest queued jobs (and, at the repository's running limit, for the
-- queued jobs being cancelled, which bypass it).
CREATE INDEX jobs_queued_by_repo ON jobs (repo, id) WHERE state = 'queued';
CREATE INDEX jobs_queued_cancelling ON jobs (repo, id) WHERE state = 'queued' AND cancel_requested <> 0;

-- A job that is queued, running or delivering opens its repository's lane or adds to it.
CREATE TRIGGER jobs_claim_lane_insert AFTER INSERT ON jobs
WHEN NEW.state IN ('queued', 'running', 'delivering')
BEGIN
    INSERT INTO claim_lanes (repo, installation_id, queued, running, last_started, head)
    SELECT NEW.repo,
           (SELECT d.installation_id FROM deliveries AS d WHERE d.id = NEW.delivery_id),
           NEW.state = 'queued', NEW.state <> 'queued',
           COALESCE((SELECT MAX(s.started_at) FROM jobs AS s WHERE s.repo = NEW.repo), 0),
           CASE WHEN NEW.state = 'queued' THEN NEW.id END
    WHERE true
    ON CONFLICT (repo) DO UPDATE
        SET queued = queued + excluded.queued,
            running = running + excluded.running,
            last_started = MAX(last_started, excluded.last_started),
            head = CASE WHEN excluded.head IS NULL THEN head
                        WHEN head IS NULL OR excluded.head < head THEN excluded.head
                        ELSE head END;
END;

-- A job that changes state or starts: its lane gains or loses a queued or running job, its head is read
-- again when the head left the queue (the row has changed: the oldest queued job is another), and a lane
-- with neither queued nor running jobs is removed (a new one reads the repository's last start again).
CREATE TRIGGER jobs_claim_lane_update AFTER UPDATE OF state, started_at, repo ON jobs
WHEN OLD.state IS NOT NEW.state OR OLD.started_at IS NOT NEW.started_at OR OLD.repo IS NOT NEW.repo
BEGIN
    -- Arriving first (a lane the job stays in is not removed and opened again): the lane, opened if need be,
    -- gains the job.
    INSERT INTO claim_lanes (repo, installation_id, queued, running, last_started, head)
    SELECT NEW.repo,
           (SELECT d.installation_id FROM deliveries AS d WHERE d.id = NEW.delivery_id),
           NEW.state = 'queued', NEW.state <> 'queued',
           COALESCE((SELECT MAX(s.started_at) FROM jobs AS s WHERE s.repo = NEW.repo), 0),
           CASE WHEN NEW.state = 'queued' THEN NEW.id END
    WHERE NEW.state IN ('queued', 'running', 'delivering')
    ON CONFLICT (repo) DO UPDATE
        SET queued = queued + excluded.queued,
            running = running + excluded.running,
            last_started = MAX(last_started, excluded.last_started),
            head = CASE WHEN excluded.head IS NULL THEN head
                        WHEN head IS NULL OR excluded.head < head THEN excluded.head
                        ELSE head END;
    -- Leaving: the lane loses what the job was.
    UPDATE claim_lanes
    SET queued = queued - (OLD.state = 'queued'),
        running = running - (OLD.state IN ('running', 'delivering')),
        head = CASE WHEN OLD.state = 'queued' AND head = OLD.id
                    THEN (SELECT MIN(q.id) FROM jobs AS q INDEXED BY jobs_queued_by_repo
                          WHERE q.state = 'queued' AND q.repo = OLD.repo)
                    ELSE head END
    WHERE repo = OLD.repo AND OLD.state IN ('queued', 'running', 'delivering');
    DELETE FROM claim_lanes WHERE repo = OLD.repo AND queued <= 0 AND running <= 0;
    -- A start in a lane that stays (the job left no state a lane counts) is its last start still.
    UPDATE claim_lanes SET last_started = MAX(last_started, NEW.started_at)
    WHERE repo = NEW.repo AND NEW.started_at IS NOT NULL
      AND NEW.state NOT IN ('queued', 'running', 'delivering');
END;

CREATE TRIGGER jobs_claim_lane_delete AFTER DELETE ON jobs
WHEN OLD.state IN ('queued', 'running', 'delivering')
BEGIN
    UPDATE claim_lanes
    SET queued = queued - (OLD.state = 'queued'),
        running = running - (OLD.state IN ('running', 'delivering')),
        head = CASE WHEN OLD.state = 'queued' AND head = OLD.id
                    THEN (SELECT MIN(q.id) FROM jobs AS q INDEXED BY jobs_queued_by_repo
                          WHERE q.state = 'queued' AND q.repo = OLD.repo)
                    ELSE head END
    WHERE repo = OLD.repo;
    DELETE FROM claim_lanes WHERE repo = OLD.repo AND queued <= 0 AND running <= 0;
END;

-- The lanes of the jobs already there.
INSERT INTO claim_lanes (repo, installation_id, queued, running, last_started, head)
SELECT j.repo,
       (SELECT d.installation_id FROM jobs AS f JOIN deliveries AS d ON d.id = f.delivery_id
        WHERE f.repo = j.repo AND f.state IN ('queued', 'running', 'delivering') ORDER BY f.id DESC LIMIT 1),
       SUM(j.state = 'queued'),
       SUM(j.state IN ('running', 'delivering')),
       COALESCE((SELECT MAX(s.started_at) FROM jobs AS s WHERE s.repo = j.repo), 0),
       MIN(CASE WHEN j.state = 'queued' THEN j.id END)
FROM jobs AS j
WHERE j.state IN ('queued', 'running', 'delivering')
GROUP BY j.repo;
