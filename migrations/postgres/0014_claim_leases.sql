-- The claim's look for jobs whose worker died reads the expired leases by index, not every running job's
-- entry. Measured on benches/claims.rs (2 processes x 8 workers, 10,000 jobs over 500 repositories) with
-- auto_explain: the pick took 1.7 ms a call on average, and in a slow one 6.3 of its 7.2 ms went to that look.
-- It read `jobs_by_state` for state 'running': 5,961 entries, nearly all of jobs that had run and ended
-- since the last vacuum (an update leaves the old version's entry behind), to find none expired.
--
-- `jobs_by_lease` holds the running and delivering jobs by when their lease expires (a job with no owner, a
-- delivery waiting for its retry, as 0: it is due). The pick reads the part before now: an ended job's entry
-- left behind carries the lease it last had, which lies ahead for a lease's length, so it is not read. A
-- lease renewal now writes an index entry (it was a HOT update): one renewal a third of a lease, per
-- running job.
--
-- The pick is 0012's with that bound added to both of its passes; the rest of its conditions still decide,
-- written as a CASE on the state: as a disjunction of `state = 'running'` and `state = 'delivering'`, the
-- planner reads each from `jobs_by_state` (a bitmap OR of the two) whenever its statistics are old, the
-- same walk as before (measured: chosen before an ANALYZE, 7,020 entries and 225 pages for no row; the CASE
-- form reads `jobs_by_lease`, 2 pages, with statistics or without). Same name and arguments, so a replica of
-- the version before calls it too.

CREATE INDEX jobs_by_lease ON jobs ((CASE WHEN lease_owner IS NULL THEN 0 ELSE lease_expires_at END))
    WHERE state IN ('running', 'delivering');

CREATE OR REPLACE FUNCTION nightshift_claim_pick(p_now BIGINT, p_repo_limit BIGINT, p_limits JSONB, p_passed BIGINT[])
RETURNS BIGINT[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    passed  BIGINT[] := COALESCE(p_passed, '{}');
    cands   BIGINT[];
    lanes   BIGINT;
    heads   BIGINT;
    cap_all BIGINT := COALESCE(p_repo_limit, 9223372036854775807);
BEGIN
    -- Each installation's first 16 lanes by index, merged in fair order, the first 16 of them; the oldest job
    -- of each its limits let start (none: a lane without a head).
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
          AND (CASE WHEN j.lease_owner IS NULL THEN 0 ELSE j.lease_expires_at END) < p_now
          AND CASE j.state
                  WHEN 'running' THEN j.lease_expires_at < p_now
                  ELSE (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                       AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now) END
          AND j.id <> ALL(passed)) AS x;
    IF NOT (lanes >= 16 AND heads < lanes) THEN
        RETURN cands[1:16];
    END IF;
    -- Some of the first lanes have no job that may start, and more lanes may follow that would come before
    -- the later candidates: each installation's first 16 lanes that have one (walking past those that have
    -- none), merged.
    RETURN ARRAY(
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
              AND (CASE WHEN j.lease_owner IS NULL THEN 0 ELSE j.lease_expires_at END) < p_now
              AND CASE j.state
                      WHEN 'running' THEN j.lease_expires_at < p_now
                      ELSE (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                           AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now) END
              AND j.id <> ALL(passed)) AS x
        ORDER BY x.inst_running, x.running, x.last_started, x.id
        LIMIT 16);
END $$;
