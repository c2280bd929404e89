-- Payloads in a table of their own. SQLite rewrites a row whole when any column of it changes: marking a
-- delivery matched (its `matched_at` and `verdicts`) read and wrote the 20-30 KB payload again, a second
-- copy of every payload through the WAL and the checkpoint. A payload is written once, with its delivery,
-- and read when the delivery is matched or its job runs. A delivery whose payload retention pruned has no row
-- here (before, an empty payload). Removed with its delivery.
CREATE TABLE delivery_payloads (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    payload     BLOB    NOT NULL          -- the raw body, exactly as signed
);
INSERT INTO delivery_payloads (delivery_id, payload)
SELECT id, payload FROM deliveries WHERE length(payload) > 0;
ALTER TABLE deliveries DROP COLUMN payload;
