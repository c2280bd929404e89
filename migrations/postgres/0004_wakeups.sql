-- Replicas wake each other, and claims stay fast as ended jobs pile up (the index at the end).
-- Wake-ups: a stored delivery NOTIFYs `nightshift_deliveries`, a job that becomes claimable
-- (queued, or its concurrency group freed) NOTIFYs `nightshift_jobs`. Triggers, so every writer rings (a
-- replica, `nightshift jobs retry`, a batch insert) in its own transaction: Postgres delivers the notice on
-- commit, and once per channel per transaction however many rows it wrote. Listeners only look: the payload
-- is empty, the store is what they read.

CREATE FUNCTION nightshift_notify_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nightshift_deliveries', '');
    RETURN NULL;
END $$;

CREATE FUNCTION nightshift_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nightshift_jobs', '');
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_wake AFTER INSERT ON deliveries
    FOR EACH ROW EXECUTE FUNCTION nightshift_notify_deliveries();

CREATE TRIGGER jobs_queued_wake AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION nightshift_notify_jobs();

-- Queued again (retried, deferred, put back), or a job of a concurrency group ended or was released: the
-- group's next job can start.
CREATE TRIGGER jobs_released_wake AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN ((NEW.state = 'queued' AND OLD.state <> 'queued')
                       OR (NEW.concurrency_group IS NOT NULL
                           AND OLD.state IN ('running', 'delivering')
                           AND NEW.state NOT IN ('running', 'delivering')))
    EXECUTE FUNCTION nightshift_notify_jobs();

-- What a claim looks for, in id order: the jobs not yet ended. Without it, the claim's scan in id order walks
-- every ended job before the first claimable one (measured: 14 ms per claim behind 10,000 ended jobs; 0.06 ms
-- with it).
CREATE INDEX jobs_claimable ON jobs (id) WHERE state IN ('queued', 'running', 'delivering');
