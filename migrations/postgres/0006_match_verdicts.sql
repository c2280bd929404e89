-- Why each trigger did or did not fire for a delivery (`nightshift deliveries`), written in the transaction that
-- records its match. Compact JSON (see `store::Verdicts`): each distinct reason once, the skipped triggers by
-- name with the index of their reason, and how many triggers do not listen to the event in the repository
-- (not named). NULL for a delivery not matched yet, or matched before this was recorded. Removed with its
-- delivery by retention. TEXT, not JSONB: a reason may quote hostile text with an escaped NUL.
ALTER TABLE deliveries ADD COLUMN verdicts TEXT;
