-- The revocation feed: one row per ended session, in commit order, read by
-- other services through GET /revocations and /revocations/stream. Rows are
-- kept at least one access-token lifetime, then cleaned.
-- Never edit this file once applied; add a new migration instead.

CREATE TABLE session_revocations (
    -- Assigned while holding a transaction-level advisory lock that is kept
    -- until commit, so sequence order is commit order and a cursor never skips.
    seq        bigserial   PRIMARY KEY,
    sid        uuid        NOT NULL,
    revoked_at timestamptz NOT NULL
);

CREATE INDEX session_revocations_revoked_at_idx ON session_revocations (revoked_at);
