-- authd schema for the embedded SQLite store; same shape as the Postgres one.
-- Times are integer microseconds since the Unix epoch (exact, and they compare
-- as numbers). Never edit this file once applied; add a new migration instead.

CREATE TABLE users (
    id            BLOB    PRIMARY KEY NOT NULL,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    id             BLOB    PRIMARY KEY NOT NULL,
    user_id        BLOB    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    user_agent     TEXT,
    ip             TEXT,
    revoked_at     INTEGER,
    revoked_reason TEXT
);

CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE refresh_tokens (
    jti            BLOB    PRIMARY KEY NOT NULL,
    family         BLOB    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id        BLOB    NOT NULL,
    token_hash     BLOB    NOT NULL,
    issued_at      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    rotated_at     INTEGER,
    successor      BLOB,
    revoked_at     INTEGER,
    revoked_reason TEXT
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);
