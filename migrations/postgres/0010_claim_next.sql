-- A claim in one round trip: `nightshift_claim_next` picks the candidates in fair order, locks and checks
-- them one after the other in the server, and leases the first that may start (before, the client read the
-- candidates, then called `nightshift_claim` once per candidate: with 16 workers all reading the same
-- order, a claim walked past the candidates the others had just taken, one round trip each). Measured on
-- benches/claims.rs (2 processes x 8 workers).
--
-- The order is the one of the candidate query it replaces (src/store/postgres.rs before): of each
-- repository's oldest queued job its limits let start, and of the jobs whose worker died (or whose
-- delivery's wait is over), the one of the installation and the repository with the fewest running jobs,
-- then of the repository served least recently, then the oldest. An installation's running jobs are now the
-- sum of its lanes' (every running job has its repository's lane, migration 0007) instead of a scan of
-- every running job joined to its delivery per claim; a lane's installation is the one of the delivery that
-- opened it (a repository belongs to one installation of the App).
--
-- Deadlocks: a claim holds the advisory locks it took (hourly cap, group, repository and profile limits)
-- until it commits, and takes them in one order for one candidate. A candidate found over a limit after
-- its locks were taken ends the call (its id in `o_passed`, no job): the client calls again in a new
-- transaction, so a claim never waits for a lock while holding another candidate's. Row locks are taken
-- with SKIP LOCKED (nobody waits for them here). `nightshift_claim` (0007) stays for replicas of the
-- version before during a rolling upgrade.
--
-- The claim's commit does not wait for its WAL flush (`synchronous_commit` off for its transaction only): a
-- claim lost to a crash of the database is a job queued again, claimed again. Nothing of it reached GitHub
-- yet: every create on GitHub is recorded `pending` in this database first (src/sink/once.rs), a durable
-- commit whose flush covers the claim's commit before it (WAL is flushed in order), and so do the worker's
-- lease renewals, its stored result and its finish. What is lost is at most an agent run begun locally.
CREATE FUNCTION nightshift_claim_next(
    p_now BIGINT, p_owner TEXT, p_lease_until BIGINT,
    p_per_hour BIGINT, p_repo_limit BIGINT, p_limits JSONB, p_passed BIGINT[])
RETURNS TABLE (o_id BIGINT, o_delivery BIGINT, o_trigger TEXT, o_repo TEXT, o_spec TEXT, o_attempts BIGINT,
               o_retries BIGINT, o_result TEXT, o_cancel_requested BOOLEAN, o_created_at BIGINT,
               o_started_at BIGINT, o_guid TEXT, o_passed BIGINT[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    passed  BIGINT[] := COALESCE(p_passed, '{}');
    cand    BIGINT;
    seen    INT;
    c       RECORD;
    n       BIGINT;
    cap     BIGINT;
    hour    CONSTANT BIGINT := 3600000;
    cap_all BIGINT := COALESCE(p_repo_limit, 9223372036854775807);
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    LOOP
        seen := 0;
        FOR cand IN
            WITH lanes AS (
                SELECT l.repo, l.running, l.last_started, l.head, l.queued,
                       SUM(l.running) OVER (PARTITION BY l.installation_id) AS inst_running
                FROM claim_lanes l),
            heads AS (
                SELECT h.id, l.inst_running, l.running, l.last_started
                FROM (SELECT * FROM lanes WHERE lanes.queued > 0
                      ORDER BY inst_running, running, last_started, head) AS l
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
                                              WHERE a.agent = j.agent AND a.state IN ('running', 'delivering'))
                                             < (p_limits ->> j.agent)::bigint END))
                      AND j.id <> ALL(passed)
                    ORDER BY j.id
                    LIMIT 1) AS h
                LIMIT 16),
            expired AS (
                SELECT j.id, COALESCE(l.inst_running, 0) AS inst_running, COALESCE(l.running, 0) AS running,
                       COALESCE(l.last_started, 0) AS last_started
                FROM jobs j LEFT JOIN lanes l ON l.repo = j.repo
                WHERE j.state IN ('running', 'delivering')
                  AND ((j.state = 'running' AND j.lease_expires_at < p_now)
                       OR (j.state = 'delivering'
                           AND (j.lease_owner IS NULL OR j.lease_expires_at < p_now)
                           AND (j.next_attempt_at IS NULL OR j.next_attempt_at <= p_now)))
                  AND j.id <> ALL(passed))
            SELECT x.id FROM (SELECT * FROM heads UNION ALL SELECT * FROM expired) AS x
            ORDER BY x.inst_running, x.running, x.last_started, x.id
            LIMIT 16
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
                        SELECT COUNT(*) INTO n FROM jobs r
                        WHERE r.repo = c.repo AND r.state IN ('running', 'delivering');
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
