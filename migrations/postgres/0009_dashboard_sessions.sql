-- The dashboard's sessions and sign-ins under way, in the store so every replica knows them and a restart signs
-- no one out. Keyed by the SHA-256 (hex) of the session id or OAuth `state`, never the value itself: a leaked
-- backup signs no one in. Expired rows are ignored when read and deleted when another is made.
CREATE TABLE dashboard_sessions (
    id_hash    TEXT PRIMARY KEY NOT NULL,
    login      TEXT NOT NULL,
    admin      BOOLEAN NOT NULL,
    csrf       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_login ON dashboard_sessions (login, created_at);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);

CREATE TABLE dashboard_signins (
    state_hash   TEXT PRIMARY KEY NOT NULL,
    browser_hash TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX dashboard_signins_expires ON dashboard_signins (expires_at);
