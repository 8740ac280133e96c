-- Brute-force counters shared by every replica, and the indexes cleanup needs.
-- Never edit this file once applied; add a new migration instead.

CREATE TABLE login_throttle (
    -- SHA-256 of the counter's kind and values ((account, IP) pair, account,
    -- or IP): the table holds no emails or addresses.
    key             bytea       PRIMARY KEY,
    failures        integer     NOT NULL,
    window_start    timestamptz NOT NULL,
    last_failure_at timestamptz NOT NULL,
    -- Locks since the counter was last quiet: the doubling exponent.
    locks           integer     NOT NULL,
    locked_until    timestamptz
);

CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_at);

-- Cleanup finds ended sessions by either end.
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
