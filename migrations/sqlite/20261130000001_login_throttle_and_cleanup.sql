-- Brute-force counters and the indexes cleanup needs; same shape as Postgres.
-- Never edit this file once applied; add a new migration instead.

CREATE TABLE login_throttle (
    key             BLOB    PRIMARY KEY NOT NULL,
    failures        INTEGER NOT NULL,
    window_start    INTEGER NOT NULL,
    last_failure_at INTEGER NOT NULL,
    locks           INTEGER NOT NULL,
    locked_until    INTEGER
);

CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_at);

CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
