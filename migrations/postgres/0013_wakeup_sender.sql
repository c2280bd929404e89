-- A stored delivery's wake-up says who stored it: its payload is the writer's `application_name`, which each
-- store sets to a name of its own (`PostgresStore::connect`). A replica passes over its own: under a flood of
-- webhooks every batch it stored came back to it as a NOTIFY, and each made its dispatcher look for waiting
-- deliveries again (one query per batch, most of what the database did), though the replica had already
-- rung for them itself. Another replica's wake-ups, a CLI command's, and those of an older version's
-- trigger (an empty payload) still ring. Jobs' wake-ups are left as they were: every replica hears them.

CREATE OR REPLACE FUNCTION nightshift_notify_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('nightshift_deliveries', coalesce(current_setting('application_name', true), ''));
    RETURN NULL;
END $$;
