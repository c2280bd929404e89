-- The dashboard's spend per repository and day (`Store::spend_by_day`) reads the jobs started in the last
-- two weeks across every repository: without this index that is a scan of every job kept (90 days).
CREATE INDEX jobs_by_start ON jobs (started_at) WHERE started_at IS NOT NULL;
