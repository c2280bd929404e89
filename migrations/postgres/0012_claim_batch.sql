-- Claims in batches: one call leases a job to each of several idle workers of a process (src/queue/claims.rs),
-- so the pick in fair order (0011) is read once for them all instead of once per worker, and the workers of a
-- process stop racing one another for the same first candidates. Measured on benches/claims.rs (2 processes x
-- 8 workers) and pgbench at one client: of a claim and a finish, 0.58 ms of server time, the pick alone was
-- 0.16 ms and the call around it 0.14 ms; and a claim looked at 2.8 candidates to take one, because the 16
-- workers all read the same order and took its first candidates from one another.
--
-- The order: the pick's candidates (0011: each repository's oldest job its limits let start, and the jobs
-- whose worker died, in fair order) leased in that order, one to each owner, until every owner has one or no
-- candidate is left; then the pick is read again (past the candidates passed over) for the owners still
-- without a job. A pick holds at most one job of a repository (its oldest), so a batch takes one job of each
-- repository before a second of any, and the order within a batch is the one read when the pick was; the
-- next pick counts what the batch started. For one owner, this is `nightshift_claim_next` exactly (below).
--
-- Locks: the first candidate is taken as `nightshift_claim_next` takes it (it may wait for an advisory lock,
-- holding nothing but its own row). From the first lock held on, a claim never waits: an advisory lock is
-- tried (`pg_try_advisory_xact_lock`) and the repository's lane row locked with SKIP LOCKED before the
-- claim's update (whose trigger writes that lane), and a candidate whose lock another claim holds is passed
-- over in this call (the claim holding it is at work on that repository, group or profile). So two batches
-- never wait for each other in a circle. A candidate over a limit is passed over, as before; the limits are
-- counted under their locks on a new snapshot, which sees the jobs this batch leased before it.
--
-- Returns one row per job leased, its owner in `o_owner`, in the order of `p_owners`; or, when the first
-- candidate taken with a waiting lock was over a limit and nothing was leased, one row with no job and the
-- ids to pass over in `o_passed`: the caller calls again (a new transaction, holding nothing), as with 0010.

-- The pick of 0011, as a function of its own: the first 16 candidates in fair order, passing over `p_passed`.
CREATE FUNCTION nightshift_claim_pick(p_now BIGINT, p_repo_limit BIGINT, p_limits JSONB, p_passed BIGINT[])
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
          AND ((j.state = 'running' AND j.lease_expires_at < p_now)
               OR (j.state = 'delivering'
                   AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                   AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
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
              AND ((j.state = 'running' AND j.lease_expires_at < p_now)
                   OR (j.state = 'delivering'
                       AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                       AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
              AND j.id <> ALL(passed)) AS x
        ORDER BY x.inst_running, x.running, x.last_started, x.id
        LIMIT 16);
END $$;

-- Takes an advisory lock of a claim: waiting for it (`p_wait`, while the claim holds no lock of another
-- candidate), or only tried (false: another claim holds it).
CREATE FUNCTION nightshift_claim_lock(p_space INT, p_key TEXT, p_wait BOOLEAN) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(p_space, hashtext(p_key));
        RETURN TRUE;
    END IF;
    RETURN pg_try_advisory_xact_lock(p_space, hashtext(p_key));
END $$;

CREATE FUNCTION nightshift_claim_batch(
    p_now BIGINT, p_owners TEXT[], p_lease_until BIGINT,
    p_per_hour BIGINT, p_repo_limit BIGINT, p_limits JSONB, p_passed BIGINT[])
RETURNS TABLE (o_id BIGINT, o_owner TEXT, o_delivery BIGINT, o_trigger TEXT, o_repo TEXT, o_spec TEXT,
               o_attempts BIGINT, o_retries BIGINT, o_result TEXT, o_cancel_requested BOOLEAN,
               o_created_at BIGINT, o_started_at BIGINT, o_guid TEXT, o_passed BIGINT[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    passed  BIGINT[] := COALESCE(p_passed, '{}');
    cands   BIGINT[];
    cand    BIGINT;
    got     INT := 0;
    want    INT := COALESCE(array_length(p_owners, 1), 0);
    holding BOOLEAN := FALSE;
    waits   BOOLEAN;
    c       RECORD;
    n       BIGINT;
    cap     BIGINT;
    hour    CONSTANT BIGINT := 3600000;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    WHILE got < want LOOP
        cands := nightshift_claim_pick(p_now, p_repo_limit, p_limits, passed);
        EXIT WHEN cardinality(cands) = 0;
        FOREACH cand IN ARRAY cands
        LOOP
            EXIT WHEN got = want;
            -- Any candidate read again is passed over in the next pick, leased or not.
            passed := passed || cand;
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
            CONTINUE WHEN NOT FOUND;
            -- The first candidate that takes a lock takes all of its own waiting; the candidates after it only
            -- try theirs.
            waits := NOT holding;
            IF holding THEN
                -- The update's trigger writes the repository's lane: its row is taken now, or the candidate
                -- left to the claim that holds it, so that this claim never waits holding a lock.
                PERFORM 1 FROM claim_lanes l WHERE l.repo = c.repo FOR UPDATE SKIP LOCKED;
                CONTINUE WHEN NOT FOUND
                    AND EXISTS (SELECT 1 FROM claim_lanes l WHERE l.repo = c.repo);
            END IF;
            IF c.state = 'queued' THEN
                -- A start: counted against the repository's hourly cap, exactly, whoever claims at once (a
                -- job being cancelled only ends, so it is not a start). Counting stops at the cap. Past it,
                -- the repository's queued jobs wait with the reason (rows another claim holds are left for
                -- its own pass: SKIP LOCKED, nobody waits).
                IF NOT c.cancel_requested THEN
                    CONTINUE WHEN NOT nightshift_claim_lock(28274, c.repo, waits);
                    holding := TRUE;
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
                        EXIT WHEN waits AND got = 0;
                        CONTINUE;
                    END IF;
                END IF;
                IF c.concurrency_group IS NOT NULL THEN
                    CONTINUE WHEN NOT nightshift_claim_lock(28275, c.concurrency_group, waits);
                    holding := TRUE;
                    SELECT COUNT(*) INTO n FROM jobs g
                    WHERE g.concurrency_group = c.concurrency_group AND g.state IN ('running', 'delivering');
                    IF n >= 1 THEN
                        EXIT WHEN waits AND got = 0;
                        CONTINUE;
                    END IF;
                END IF;
                IF NOT c.cancel_requested THEN
                    IF p_repo_limit IS NOT NULL THEN
                        CONTINUE WHEN NOT nightshift_claim_lock(28274, c.repo, waits);
                        holding := TRUE;
                        SELECT COUNT(*) INTO n FROM jobs r
                        WHERE r.repo = c.repo AND r.state IN ('running', 'delivering');
                        IF n >= p_repo_limit THEN
                            EXIT WHEN waits AND got = 0;
                            CONTINUE;
                        END IF;
                    END IF;
                    cap := (p_limits ->> c.agent)::bigint;
                    IF cap IS NOT NULL THEN
                        CONTINUE WHEN NOT nightshift_claim_lock(28272, c.agent, waits);
                        holding := TRUE;
                        SELECT COUNT(*) INTO n FROM jobs a
                        WHERE a.agent = c.agent AND a.state IN ('running', 'delivering');
                        IF n >= cap THEN
                            EXIT WHEN waits AND got = 0;
                            CONTINUE;
                        END IF;
                    END IF;
                END IF;
            END IF;
            got := got + 1;
            holding := TRUE;
            RETURN QUERY
            UPDATE jobs
            SET state = CASE WHEN result IS NULL THEN 'running' ELSE 'delivering' END,
                attempts = attempts + CASE WHEN result IS NULL THEN 1 ELSE 0 END,
                started_at = CASE WHEN result IS NULL THEN p_now ELSE started_at END,
                lease_owner = p_owners[got], lease_expires_at = p_lease_until, next_attempt_at = NULL,
                wait_reason = NULL
            WHERE jobs.id = cand
            RETURNING jobs.id, jobs.lease_owner, jobs.delivery_id, jobs.trigger_name, jobs.repo, jobs.spec,
                      jobs.attempts, jobs.retries, jobs.result, jobs.cancel_requested, jobs.created_at,
                      jobs.started_at,
                      (SELECT d.delivery_id FROM deliveries d WHERE d.id = jobs.delivery_id), NULL::bigint[];
        END LOOP;
        -- The first candidate, taken with a waiting lock, was over a limit and nothing is leased: the caller
        -- calls again, holding nothing.
        IF got = 0 AND holding THEN
            RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::bigint, NULL::text, NULL::text, NULL::text,
                NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, NULL::bigint, NULL::bigint, NULL::text,
                passed;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END $$;

-- Replicas of the version before, during a rolling upgrade, call `nightshift_claim_next` (0010, 0011): a batch
-- of one owner, with the same results.
CREATE OR REPLACE FUNCTION nightshift_claim_next(
    p_now BIGINT, p_owner TEXT, p_lease_until BIGINT,
    p_per_hour BIGINT, p_repo_limit BIGINT, p_limits JSONB, p_passed BIGINT[])
RETURNS TABLE (o_id BIGINT, o_delivery BIGINT, o_trigger TEXT, o_repo TEXT, o_spec TEXT, o_attempts BIGINT,
               o_retries BIGINT, o_result TEXT, o_cancel_requested BOOLEAN, o_created_at BIGINT,
               o_started_at BIGINT, o_guid TEXT, o_passed BIGINT[])
LANGUAGE sql VOLATILE AS $$
    SELECT b.o_id, b.o_delivery, b.o_trigger, b.o_repo, b.o_spec, b.o_attempts, b.o_retries, b.o_result,
           b.o_cancel_requested, b.o_created_at, b.o_started_at, b.o_guid, b.o_passed
    FROM nightshift_claim_batch(p_now, ARRAY[p_owner], p_lease_until, p_per_hour, p_repo_limit, p_limits,
                                p_passed) AS b
$$;
