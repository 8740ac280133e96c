-- The revocation feed; same shape as Postgres. SQLite has one writer, so
-- rowid order is commit order.
-- Never edit this file once applied; add a new migration instead.

CREATE TABLE session_revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sid        BLOB    NOT NULL,
    revoked_at INTEGER NOT NULL
);

CREATE INDEX session_revocations_revoked_at_idx ON session_revocations (revoked_at);
