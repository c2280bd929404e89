-- Replay protection: the SHA-256 of every webhook body stored in the last `ingest.replay_window`. The same
-- signed body under a new delivery id within the window is acknowledged and not stored again. Rows older
-- than the window are deleted as new batches are written.
CREATE TABLE delivery_digests (
    body_sha256 BYTEA  PRIMARY KEY,
    delivery_id TEXT   NOT NULL,           -- the X-GitHub-Delivery the body was first stored under
    received_at BIGINT NOT NULL            -- unix ms
);
CREATE INDEX delivery_digests_received ON delivery_digests (received_at);
