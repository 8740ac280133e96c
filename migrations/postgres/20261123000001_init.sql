-- authd schema: users, sessions (= refresh-token families) and refresh tokens.
-- Never edit this file once applied; add a new migration instead.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    -- Stored canonical (trimmed, lower-cased), so uniqueness is case-insensitive.
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz NOT NULL,
    -- Absolute lifetime: a rotation never extends past it.
    expires_at     timestamptz NOT NULL,
    user_agent     text,
    ip             text,
    revoked_at     timestamptz,
    revoked_reason text
);

CREATE INDEX sessions_user_live_idx ON sessions (user_id) WHERE revoked_at IS NULL;

CREATE TABLE refresh_tokens (
    jti            uuid        PRIMARY KEY,
    family         uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id        uuid        NOT NULL,
    -- SHA-256 of the token as sent; the token itself is never stored.
    token_hash     bytea       NOT NULL,
    -- Equal to the token's iat / exp claims (whole seconds), so the successor
    -- can be re-signed byte-identically inside the grace window.
    issued_at      timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    -- Set once, when this token is exchanged; the grace window is measured
    -- from here and nothing else ever writes it.
    rotated_at     timestamptz,
    successor      uuid,
    revoked_at     timestamptz,
    revoked_reason text
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);
