-- The claim's pick reads a few index entries instead of every lane, and a state change of a job writes fewer
-- index entries. Measured on benches/claims.rs (2 processes x 8 workers, 4,000 jobs over 200 repositories of
-- 4 installations) and EXPLAIN (ANALYZE, BUFFERS) of the pick at 4,000 queued jobs in 200 lanes.
--
-- Before, `nightshift_claim_next` (0010) summed the running jobs of every lane per installation (a window
-- over all lanes), sorted every lane with queued jobs, then looked into the first 16: its cost grew with the
-- lanes. Now the pick walks the installations that have lanes (one index probe each), sums an
-- installation's running jobs over its lanes that have some (as many as jobs run, at most), reads each
-- installation's first 16 lanes in fair order from an index (`claim_lanes_fair`), merges them in the same
-- order as before (the installation's running jobs, the repository's running jobs, the repository's last
-- start, its oldest queued job) and looks into the first 16. When one of those has no job its limits let
-- start (past its hourly cap, its group or its profile full, waiting) and more lanes may follow, the pick
-- looks again, past them (each installation's first 16 lanes that have one): the order and what may start
-- are exactly those of 0010. (Counters of an installation's jobs, kept by the lanes' trigger, were measured
-- first: every claim and finish of an installation's jobs then waits for its counter's row lock, 1.9 ms a
-- statement with 16 workers on 4 installations.)
--
-- Same name and arguments as 0010 (CREATE OR REPLACE): during a rolling upgrade, replicas of the version
-- before call this one too, with the same results. Nothing else they run needs what is dropped below.

-- The installations with lanes (one probe each); of one installation, its lanes with running jobs (their sum:
-- its running jobs), and its lanes in the pick's order (those with no queued job, as many as jobs run at
-- most, are passed over). Lanes change at every claim and finish: one index, not two.
CREATE INDEX claim_lanes_fair ON claim_lanes (COALESCE(installation_id, 0), running, last_started, head);

-- The claim: as 0010's (see there for the locks, the limits and why a commit here does not wait for its
-- flush); only the pick of the candidates changed, and a repository's running jobs under its limit are its
-- lane's count (kept in the same transaction as every state change, so equal to counting its jobs).
CREATE OR REPLACE FUNCTION nightshift_claim_next(
    p_now BIGINT, p_owner TEXT, p_lease_until BIGINT,
    p_per_hour BIGINT, p_repo_limit BIGINT, p_limits JSONB, p_passed BIGINT[])
RETURNS TABLE (o_id BIGINT, o_delivery BIGINT, o_trigger TEXT, o_repo TEXT, o_spec TEXT, o_attempts BIGINT,
               o_retries BIGINT, o_result TEXT, o_cancel_requested BOOLEAN, o_created_at BIGINT,
               o_started_at BIGINT, o_guid TEXT, o_passed BIGINT[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    passed  BIGINT[] := COALESCE(p_passed, '{}');
    cands   BIGINT[];
    cand    BIGINT;
    lanes   BIGINT;
    heads   BIGINT;
    wide    BOOLEAN := FALSE;
    seen    INT;
    c       RECORD;
    n       BIGINT;
    cap     BIGINT;
    hour    CONSTANT BIGINT := 3600000;
    cap_all BIGINT := COALESCE(p_repo_limit, 9223372036854775807);
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        IF NOT wide THEN
            -- Each installation's first 16 lanes by index, merged in fair order, the first 16 of them; the
            -- oldest job of each its limits let start (none: a lane without a head).
            WITH RECURSIVE keys (installation_key) AS (
                SELECT MIN(COALESCE(l.installation_id, 0)) FROM claim_lanes l
                UNION ALL
                SELECT (SELECT MIN(COALESCE(l.installation_id, 0)) FROM claim_lanes l
                        WHERE COALESCE(l.installation_id, 0) > k.installation_key)
                FROM keys k WHERE k.installation_key IS NOT NULL),
            busy AS (
                SELECT k.installation_key,
                       (SELECT COALESCE(SUM(l.running), 0) FROM claim_lanes l
                        WHERE COALESCE(l.installation_id, 0) = k.installation_key AND l.running > 0) AS running
                FROM keys k WHERE k.installation_key IS NOT NULL)
            SELECT COALESCE(array_agg(x.id ORDER BY x.inst_running, x.running, x.last_started, x.id)
                                FILTER (WHERE x.id IS NOT NULL), '{}'),
                   COUNT(*) FILTER (WHERE x.lane), COUNT(x.id) FILTER (WHERE x.lane)
            INTO cands, lanes, heads
            FROM (
                SELECT h.id, l.inst_running, l.running, l.last_started, TRUE AS lane
                FROM (SELECT i.running AS inst_running, f.repo, f.running, f.last_started, f.head
                      FROM busy i
                      CROSS JOIN LATERAL (
                          SELECT l.repo, l.running, l.last_started, l.head FROM claim_lanes l
                          WHERE COALESCE(l.installation_id, 0) = i.installation_key AND l.queued > 0
                          ORDER BY l.running, l.last_started, l.head
                          LIMIT 16) AS f
                      ORDER BY i.running, f.running, f.last_started, f.head
                      LIMIT 16) AS l
                LEFT JOIN LATERAL (
                    SELECT j.id FROM jobs j
                    WHERE j.repo = l.repo AND j.state = 'queued'
                      AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)
                      AND (j.concurrency_group IS NULL
                           OR NOT EXISTS (SELECT 1 FROM jobs g
                                          WHERE g.concurrency_group = j.concurrency_group
                                            AND g.state IN ('running', 'delivering')))
                      AND (j.cancel_requested
                           OR (l.running < cap_all
                               AND CASE WHEN (p_limits ->> j.agent) IS NULL THEN TRUE
                                        ELSE (SELECT COUNT(*) FROM jobs a
                                              WHERE a.agent = j.agent AND a.state IN ('running', 'delivering'))
                                             < (p_limits ->> j.agent)::bigint END))
                      AND j.id <> ALL(passed)
                    ORDER BY j.id
                    LIMIT 1) AS h ON TRUE
                UNION ALL
                -- Jobs whose worker died (or whose delivery's wait is over), among the running ones.
                SELECT j.id, COALESCE(i.running, 0), COALESCE(l.running, 0), COALESCE(l.last_started, 0), FALSE
                FROM jobs j
                LEFT JOIN claim_lanes l ON l.repo = j.repo
                LEFT JOIN busy i ON i.installation_key = COALESCE(l.installation_id, 0)
                WHERE j.state IN ('running', 'delivering')
                  AND ((j.state = 'running' AND j.lease_expires_at < p_now)
                       OR (j.state = 'delivering'
                           AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                           AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
                  AND j.id <> ALL(passed)) AS x;
            IF lanes >= 16 AND heads < lanes THEN
                -- Some of the first lanes have no job that may start, and more lanes may follow that
                -- would come before the later candidates: look past them.
                wide := TRUE;
                CONTINUE;
            END IF;
            cands := cands[1:16];
        ELSE
            -- Some of the first lanes had no job that may start and more lanes may follow: each
            -- installation's first 16 lanes that have one (walking past those that have none), merged.
            cands := ARRAY(
                WITH RECURSIVE keys (installation_key) AS (
                    SELECT MIN(COALESCE(l.installation_id, 0)) FROM claim_lanes l
                    UNION ALL
                    SELECT (SELECT MIN(COALESCE(l.installation_id, 0)) FROM claim_lanes l
                            WHERE COALESCE(l.installation_id, 0) > k.installation_key)
                    FROM keys k WHERE k.installation_key IS NOT NULL),
                busy AS (
                    SELECT k.installation_key,
                           (SELECT COALESCE(SUM(l.running), 0) FROM claim_lanes l
                            WHERE COALESCE(l.installation_id, 0) = k.installation_key AND l.running > 0)
                               AS running
                    FROM keys k WHERE k.installation_key IS NOT NULL)
                SELECT x.id FROM (
                    SELECT f.id, i.running AS inst_running, f.running, f.last_started
                    FROM busy i
                    CROSS JOIN LATERAL (
                        SELECT h.id, l.running, l.last_started FROM claim_lanes l
                        CROSS JOIN LATERAL (
                            SELECT j.id FROM jobs j
                            WHERE j.repo = l.repo AND j.state = 'queued'
                              AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)
                              AND (j.concurrency_group IS NULL
                                   OR NOT EXISTS (SELECT 1 FROM jobs g
                                                  WHERE g.concurrency_group = j.concurrency_group
                                                    AND g.state IN ('running', 'delivering')))
                              AND (j.cancel_requested
                                   OR (l.running < cap_all
                                       AND CASE WHEN (p_limits ->> j.agent) IS NULL THEN TRUE
                                                ELSE (SELECT COUNT(*) FROM jobs a
                                                      WHERE a.agent = j.agent
                                                        AND a.state IN ('running', 'delivering'))
                                                     < (p_limits ->> j.agent)::bigint END))
                              AND j.id <> ALL(passed)
                            ORDER BY j.id
                            LIMIT 1) AS h
                        WHERE COALESCE(l.installation_id, 0) = i.installation_key AND l.queued > 0
                        ORDER BY l.running, l.last_started, l.head
                        LIMIT 16) AS f
                    UNION ALL
                    SELECT j.id, COALESCE(i.running, 0), COALESCE(l.running, 0), COALESCE(l.last_started, 0)
                    FROM jobs j
                    LEFT JOIN claim_lanes l ON l.repo = j.repo
                    LEFT JOIN busy i ON i.installation_key = COALESCE(l.installation_id, 0)
                    WHERE j.state IN ('running', 'delivering')
                      AND ((j.state = 'running' AND j.lease_expires_at < p_now)
                           OR (j.state = 'delivering'
                               AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                               AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
                      AND j.id <> ALL(passed)) AS x
                ORDER BY x.inst_running, x.running, x.last_started, x.id
                LIMIT 16);
        END IF;
        seen := 0;
        FOREACH cand IN ARRAY cands
        LOOP
            seen := seen + 1;
            -- Locked (skipped when another claim holds it) and checked to be claimable still, on a new
            -- snapshot (VOLATILE: each statement reads one).
            SELECT j.concurrency_group, j.state, j.repo, j.agent, j.cancel_requested INTO c FROM jobs j
            WHERE j.id = cand
              AND ((j.state = 'queued' AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now))
                   OR (j.state = 'running' AND j.lease_expires_at < p_now)
                   OR (j.state = 'delivering'
                       AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                       AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
            FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                passed := passed || cand;
                CONTINUE;
            END IF;
            IF c.state = 'queued' THEN
                -- A start: counted against the repository's hourly cap, exactly, whoever claims at once (a
                -- job being cancelled only ends, so it is not a start). Counting stops at the cap. Past it,
                -- the repository's queued jobs wait with the reason (rows another claim holds are left for
                -- its own pass: SKIP LOCKED, nobody waits).
                IF NOT c.cancel_requested THEN
                    PERFORM pg_advisory_xact_lock(28274, hashtext(c.repo));
                    SELECT COUNT(*) INTO n FROM (SELECT 1 FROM jobs s
                                                 WHERE s.repo = c.repo AND s.started_at >= p_now - hour
                                                 LIMIT p_per_hour) AS s;
                    IF n >= p_per_hour THEN
                        WITH capped AS (
                            SELECT q.id FROM jobs q
                            WHERE q.repo = c.repo AND q.state = 'queued'
                              AND (q.next_attempt_at IS NULL OR q.next_attempt_at <= p_now)
                            ORDER BY q.id
                            FOR UPDATE SKIP LOCKED)
                        UPDATE jobs
                        SET next_attempt_at = (SELECT MIN(s.started_at) FROM jobs s
                                               WHERE s.repo = c.repo AND s.started_at >= p_now - hour) + hour,
                            wait_reason = 'the repository started ' || p_per_hour
                                          || ' jobs in the last hour (max_jobs_per_hour)'
                        FROM capped WHERE jobs.id = capped.id;
                        RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::text,
                            NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, NULL::bigint, NULL::bigint,
                            NULL::text, passed || cand;
                        RETURN;
                    END IF;
                END IF;
                IF c.concurrency_group IS NOT NULL THEN
                    PERFORM pg_advisory_xact_lock(28275, hashtext(c.concurrency_group));
                    SELECT COUNT(*) INTO n FROM jobs g
                    WHERE g.concurrency_group = c.concurrency_group AND g.state IN ('running', 'delivering');
                    IF n >= 1 THEN
                        RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::text,
                            NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, NULL::bigint, NULL::bigint,
                            NULL::text, passed || cand;
                        RETURN;
                    END IF;
                END IF;
                IF NOT c.cancel_requested THEN
                    IF p_repo_limit IS NOT NULL THEN
                        PERFORM pg_advisory_xact_lock(28274, hashtext(c.repo));
                        SELECT COALESCE((SELECT l.running FROM claim_lanes l WHERE l.repo = c.repo), 0)
                        INTO n;
                        IF n >= p_repo_limit THEN
                            RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::text,
                                NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, NULL::bigint,
                                NULL::bigint, NULL::text, passed || cand;
                            RETURN;
                        END IF;
                    END IF;
                    cap := (p_limits ->> c.agent)::bigint;
                    IF cap IS NOT NULL THEN
                        PERFORM pg_advisory_xact_lock(28272, hashtext(c.agent));
                        SELECT COUNT(*) INTO n FROM jobs a
                        WHERE a.agent = c.agent AND a.state IN ('running', 'delivering');
                        IF n >= cap THEN
                            RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::text, NULL::text,
                                NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, NULL::bigint,
                                NULL::bigint, NULL::text, passed || cand;
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
                lease_owner = p_owner, lease_expires_at = p_lease_until, next_attempt_at = NULL,
                wait_reason = NULL
            WHERE jobs.id = cand
            RETURNING jobs.id, jobs.delivery_id, jobs.trigger_name, jobs.repo, jobs.spec, jobs.attempts,
                      jobs.retries, jobs.result, jobs.cancel_requested, jobs.created_at, jobs.started_at,
                      (SELECT d.delivery_id FROM deliveries d WHERE d.id = jobs.delivery_id), NULL::bigint[];
            RETURN;
        END LOOP;
        EXIT WHEN seen = 0;
    END LOOP;
    RETURN;
END $$;

-- What a state change of a job writes: every index of `jobs` gets an entry at each claim and each finish
-- (the state is in every partial index's predicate, so these updates are never HOT). Dropped, with what
-- reads without them now:
-- - `jobs_by_repo_state` (repo, state): a repository's running jobs under its limit are its lane's count
--   (above); a repository's queued jobs are read through `jobs_queued_by_repo` (0007).
-- - `jobs_claimable` (id) of jobs not ended (0004, for the claim's scan in id order before lanes): the claim
--   reads queued jobs through `jobs_queued_by_repo` and running ones through `jobs_running_by_agent`.
-- Kept: `jobs_by_state` (the counts of `/metrics`), `jobs_by_repo_start` (the hourly cap, spend),
-- `jobs_by_start` (spend by day), `jobs_by_finish` (retention), `jobs_running_by_agent` (profile limits, and
-- the running jobs a claim looks at for a dead worker's), `jobs_by_group`, `jobs_queued_by_repo`.
DROP INDEX jobs_by_repo_state;
DROP INDEX jobs_claimable;

-- Room on each page for a row's next version, so a change of no indexed column (a lease renewed every third
-- of a lease while an agent runs, its usage recorded, a cancel requested) is a HOT update: no index entry,
-- the page only. Pages written from now on.
ALTER TABLE jobs SET (fillfactor = 85);
