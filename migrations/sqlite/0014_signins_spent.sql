-- A sign-in's OAuth `state` is now signed (an HMAC of the browser's cookie and its expiry) instead of stored
-- when it starts, so starting one costs the store nothing. What the store keeps is the `state`s already spent
-- (SHA-256, hex), until they expire: a replayed callback signs in at most once, on any replica.
DROP TABLE dashboard_signins;

CREATE TABLE dashboard_signins_spent (
    state_hash TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX dashboard_signins_spent_expires ON dashboard_signins_spent (expires_at);
