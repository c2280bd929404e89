-- Claim lanes: one row per repository with a job queued, running or delivering, kept by a trigger on `jobs`
-- in the transaction that changes the job (every writer: a claim, a finish, a retry, a cancel, retention). A
-- claim reads the lanes in fair order (the installation's and the repository's running jobs, the
-- repository's last start, its oldest queued job) and looks into the first lanes only, by index, instead of
-- reading every queued job (measured: a claim behind 10,000 queued jobs read all of them).

CREATE TABLE claim_lanes (
    repo            TEXT    PRIMARY KEY,
    installation_id BIGINT,                     -- of the delivery of the job that opened the lane
    queued          BIGINT  NOT NULL,           -- its jobs in state 'queued'
    running         BIGINT  NOT NULL,           -- its jobs running or delivering
    last_started    BIGINT  NOT NULL,           -- unix ms: the latest start of any of its jobs, 0 if none
    head            BIGINT                      -- its oldest queued job (NULL when none is queued)
);

-- A claim looks for a repository's oldest queued jobs.
CREATE INDEX jobs_queued_by_repo ON jobs (repo, id) WHERE state = 'queued';

-- The lane of the job a row change touches gains or loses a queued or running job; a lane with neither is
-- removed (a new one reads the repository's last start again). Run after the statement's rows all changed:
-- the oldest queued job read again when the head left the queue is the statement's result.
CREATE FUNCTION nightshift_claim_lane() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    j       jobs%ROWTYPE;
    dq      BIGINT := 0;
    dr      BIGINT := 0;
    started BIGINT;
    lane    claim_lanes%ROWTYPE;
BEGIN
    IF TG_OP = 'INSERT' THEN
        j := NEW;
    ELSE
        j := OLD;
        dq := dq - (OLD.state = 'queued')::int;
        dr := dr - (OLD.state IN ('running', 'delivering'))::int;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        dq := dq + (NEW.state = 'queued')::int;
        dr := dr + (NEW.state IN ('running', 'delivering'))::int;
        started := NEW.started_at;
    END IF;
    IF dq = 0 AND dr = 0 AND started IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE claim_lanes AS l
    SET queued = l.queued + dq,
        running = l.running + dr,
        last_started = GREATEST(l.last_started, COALESCE(started, 0)),
        head = CASE
            WHEN dq > 0 THEN LEAST(l.head, j.id)
            WHEN dq < 0 AND l.head = j.id THEN
                (SELECT MIN(q.id) FROM jobs q WHERE q.repo = j.repo AND q.state = 'queued')
            ELSE l.head
        END
    WHERE l.repo = j.repo
    RETURNING * INTO lane;
    IF FOUND THEN
        IF lane.queued <= 0 AND lane.running <= 0 THEN
            DELETE FROM claim_lanes WHERE repo = j.repo;
        END IF;
    ELSIF dq > 0 OR dr > 0 THEN
        -- Opened by another transaction meanwhile: added to.
        INSERT INTO claim_lanes AS l (repo, installation_id, queued, running, last_started, head)
        VALUES (j.repo,
                (SELECT d.installation_id FROM deliveries d WHERE d.id = j.delivery_id),
                GREATEST(dq, 0), GREATEST(dr, 0),
                GREATEST(COALESCE(started, 0),
                         COALESCE((SELECT MAX(s.started_at) FROM jobs s WHERE s.repo = j.repo), 0)),
                CASE WHEN dq > 0 THEN j.id END)
        ON CONFLICT (repo) DO UPDATE
            SET queued = l.queued + excluded.queued,
                running = l.running + excluded.running,
                last_started = GREATEST(l.last_started, excluded.last_started),
                head = LEAST(l.head, excluded.head);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_claim_lane_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state IN ('queued', 'running', 'delivering'))
    EXECUTE FUNCTION nightshift_claim_lane();

CREATE TRIGGER jobs_claim_lane_update AFTER UPDATE OF state, started_at ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.started_at IS DISTINCT FROM NEW.started_at)
    EXECUTE FUNCTION nightshift_claim_lane();

CREATE TRIGGER jobs_claim_lane_delete AFTER DELETE ON jobs
    FOR EACH ROW WHEN (OLD.state IN ('queued', 'running', 'delivering'))
    EXECUTE FUNCTION nightshift_claim_lane();

-- The lanes of the jobs already there.
INSERT INTO claim_lanes (repo, installation_id, queued, running, last_started, head)
SELECT j.repo,
       (SELECT d.installation_id FROM jobs f JOIN deliveries d ON d.id = f.delivery_id
        WHERE f.repo = j.repo AND f.state IN ('queued', 'running', 'delivering') ORDER BY f.id DESC LIMIT 1),
       COUNT(*) FILTER (WHERE j.state = 'queued'),
       COUNT(*) FILTER (WHERE j.state IN ('running', 'delivering')),
       COALESCE((SELECT MAX(s.started_at) FROM jobs s WHERE s.repo = j.repo), 0),
       MIN(j.id) FILTER (WHERE j.state = 'queued')
FROM jobs j
WHERE j.state IN ('queued', 'running', 'delivering')
GROUP BY j.repo;

-- A claim of one candidate job, in one statement (one round trip; the statement is its transaction): the
-- job locked (skipped when another claim holds it) and checked to be claimable still; for a start, under
-- transaction-scoped advisory locks, the repository's hourly cap (past it, its queued jobs wait with the
-- reason, and nothing is claimed), its concurrency group, the repository's and the profile's running
-- limits; then leased. The locks are taken in one order (repository, group, repository, profile) so two
-- claims never wait on each other in a circle. VOLATILE: each statement reads a new snapshot, taken after
-- the lock before it, so every count sees what an earlier claim of the same key committed. Lock spaces:
-- 28275 groups, 28274 repositories, 28272 profiles (src/store/postgres.rs).
CREATE FUNCTION nightshift_claim(
    p_id BIGINT, p_now BIGINT, p_owner TEXT, p_lease_until BIGINT,
    p_per_hour BIGINT, p_repo_limit BIGINT, p_limits JSONB)
RETURNS TABLE (o_id BIGINT, o_delivery BIGINT, o_trigger TEXT, o_repo TEXT, o_spec TEXT, o_attempts BIGINT,
               o_retries BIGINT, o_result TEXT, o_cancel_requested BOOLEAN, o_created_at BIGINT,
               o_started_at BIGINT, o_guid TEXT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    c       RECORD;
    n       BIGINT;
    cap     BIGINT;
    hour    CONSTANT BIGINT := 3600000;
BEGIN
    SELECT j.concurrency_group, j.state, j.repo, j.agent, j.cancel_requested INTO c FROM jobs j
    WHERE j.id = p_id
      AND ((j.state = 'queued' AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now))
           OR (j.state = 'running' AND j.lease_expires_at < p_now)
           OR (j.state = 'delivering'
               AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
               AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF c.state = 'queued' THEN
        -- A start: counted against the repository's hourly cap, exactly, whoever claims at once (a job
        -- being cancelled only ends, so it is not a start). Counting stops at the cap.
        IF NOT c.cancel_requested THEN
            PERFORM pg_advisory_xact_lock(28274, hashtext(c.repo));
            SELECT COUNT(*) INTO n FROM (SELECT 1 FROM jobs s
                                         WHERE s.repo = c.repo AND s.started_at >= p_now - hour
                                         LIMIT p_per_hour) AS s;
            IF n >= p_per_hour THEN
                -- Rows another claim holds are left for its own pass (SKIP LOCKED: nobody waits).
                WITH capped AS (
                    SELECT q.id FROM jobs q
                    WHERE q.repo = c.repo AND q.state = 'queued'
                      AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= p_now)
                    ORDER BY q.id
                    FOR UPDATE SKIP LOCKED)
                UPDATE jobs
                SET next_attempt_at = (SELECT MIN(s.started_at) FROM jobs s
                                       WHERE s.repo = c.repo AND s.started_at >= p_now - hour) + hour,
                    wait_reason = 'the repository started ' || p_per_hour || ' jobs in the last hour (max_jobs_per_hour)'
                FROM capped WHERE jobs.id = capped.id;
                RETURN;
            END IF;
        END IF;
        IF c.concurrency_group IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock(28275, hashtext(c.concurrency_group));
            SELECT COUNT(*) INTO n FROM jobs g
            WHERE g.concurrency_group = c.concurrency_group AND g.state IN ('running', 'delivering');
            IF n >= 1 THEN
                RETURN;
            END IF;
        END IF;
        IF NOT c.cancel_requested THEN
            IF p_repo_limit IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock(28274, hashtext(c.repo));
                SELECT COUNT(*) INTO n FROM jobs r
                WHERE r.repo = c.repo AND r.state IN ('running', 'delivering');
                IF n >= p_repo_limit THEN
                    RETURN;
                END IF;
            END IF;
            cap := (p_limits ->> c.agent)::bigint;
            IF cap IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock(28272, hashtext(c.agent));
                SELECT COUNT(*) INTO n FROM jobs a
                WHERE a.agent = c.agent AND a.state IN ('running', 'delivering');
                IF n >= cap THEN
                    RETURN;
                END IF;
            END IF;
        END IF;
    END IF;
    RETURN QUERY
    UPDATE jobs
    SET state = CASE WHEN result IS NULL THEN 'running' ELSE 'delivering' END,
        attempts = attempts + CASE WHEN result IS NULL THEN 1 ELSE 0 END,
        started_at = CASE WHEN result IS NULL THEN p_now ELSE started_at END,
        lease_owner = p_owner, lease_expires_at = p_lease_until, next_attempt_at = NULL, wait_reason = NULL
    WHERE jobs.id = p_id
    RETURNING jobs.id, jobs.delivery_id, jobs.trigger_name, jobs.repo, jobs.spec, jobs.attempts, jobs.retries,
              jobs.result, jobs.cancel_requested, jobs.created_at, jobs.started_at,
              (SELECT d.delivery_id FROM deliveries d WHERE d.id = jobs.delivery_id);
END $$;

-- Webhook bodies (22–30 KB of JSON, stored TOASTed) compressed with lz4 instead of the default pglz:
-- measured on a 25 KB `pull_request.opened`, 4,000 rows: pglz 6.0 s of server CPU, lz4 0.83 s, and a smaller
-- table (16 MB against 24 MB); the writer's transaction holds every waiting webhook's answer while the
-- server compresses. Rows stored before keep pglz (both read back alike). A server without lz4 (built
-- without it, or older than Postgres 14) keeps pglz.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE deliveries ALTER COLUMN payload SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
    RAISE NOTICE 'payloads stay compressed with pglz: %', SQLERRM;
END $$;
