-- Number 11 went to a Postgres change (the claim's pick) that SQLite has no counterpart of; kept so both
-- stores' migrations stay numbered without a gap.
SELECT 1;
