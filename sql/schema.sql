-- session_ext: roles, table, indexes and result types. Runs before the functions are created.
-- Every name is schema-qualified; nothing here depends on the caller's search_path.

-- Roles are cluster-wide: another database may already have created them.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'session_ext_user') THEN
        CREATE ROLE session_ext_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'session_ext_admin') THEN
        CREATE ROLE session_ext_admin NOLOGIN;
    END IF;
    IF NOT pg_catalog.pg_has_role('session_ext_admin', 'session_ext_user', 'MEMBER') THEN
        GRANT session_ext_user TO session_ext_admin;
    END IF;
END
$roles$;

CREATE TABLE session_ext.user_sessions (
    id               uuid        PRIMARY KEY,
    user_id          uuid        NOT NULL,
    session_id       text        NOT NULL UNIQUE,
    token_hash       bytea       UNIQUE,
    -- The token this session had before its last rotation: presenting it again is reuse.
    previous_token_hash bytea,
    rotated_at       timestamptz,
    session_data     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    data_version     bigint      NOT NULL DEFAULT 1,
    device_info      text,
    user_agent       text,
    ip_address       inet,
    fingerprint_hash bytea,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_active_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at       timestamptz NOT NULL,
    idle_timeout     interval,
    -- least(expires_at, last_active_at + idle_timeout), kept current by every write, so that
    -- "is it still valid" and "which rows are expired" are both one indexed comparison.
    valid_until      timestamptz NOT NULL,
    revoked_at       timestamptz,
    revoke_reason    text,
    CONSTRAINT session_data_is_object CHECK (pg_catalog.jsonb_typeof(session_data) = 'object'),
    CONSTRAINT token_hash_is_sha256 CHECK (pg_catalog.length(token_hash) = 32),
    CONSTRAINT previous_token_hash_is_sha256 CHECK (pg_catalog.length(previous_token_hash) = 32),
    CONSTRAINT fingerprint_hash_is_sha256 CHECK (pg_catalog.length(fingerprint_hash) = 32),
    CONSTRAINT idle_timeout_is_positive CHECK (idle_timeout > interval '0'),
    CONSTRAINT revoked_with_reason CHECK ((revoked_at IS NULL) = (revoke_reason IS NULL)),
    CONSTRAINT valid_until_within_expiry CHECK (valid_until <= expires_at)
);

-- One user's sessions (list, count, per-user limits), oldest first.
CREATE INDEX user_sessions_user_idx ON session_ext.user_sessions (user_id, created_at);
-- Cleanup of expired rows, absolute or idle.
CREATE INDEX user_sessions_valid_until_idx ON session_ext.user_sessions (valid_until);
-- Reuse detection: a rotated-away token is looked up only when the current ones miss.
CREATE UNIQUE INDEX user_sessions_previous_token_idx ON session_ext.user_sessions (previous_token_hash)
    WHERE previous_token_hash IS NOT NULL;
-- Cleanup of revoked rows past their retention.
CREATE INDEX user_sessions_revoked_idx ON session_ext.user_sessions (revoked_at)
    WHERE revoked_at IS NOT NULL;

-- One row per session event (SPEC §6), written in the transaction of the change.
CREATE TABLE session_ext.session_audit_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event         text        NOT NULL,
    session_id    uuid,
    user_id       uuid,
    actor_role    text        NOT NULL,
    actor_user_id uuid,
    ip_address    inet,
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT event_is_known CHECK (event IN ('create', 'rotate', 'token_reuse', 'revoke',
        'data_update', 'suspicious', 'rate_limited', 'cleanup'))
);

-- A user's own events, newest first; pruning by age.
CREATE INDEX session_audit_log_user_idx ON session_ext.session_audit_log (user_id, occurred_at);
CREATE INDEX session_audit_log_occurred_idx ON session_ext.session_audit_log (occurred_at);
CREATE INDEX session_audit_log_session_idx ON session_ext.session_audit_log (session_id);

-- What the API returns about a session: every column except the secret hashes.
CREATE TYPE session_ext.session_info AS (
    id             uuid,
    session_id     text,
    user_id        uuid,
    session_data   jsonb,
    data_version   bigint,
    device_info    text,
    user_agent     text,
    ip_address     inet,
    created_at     timestamptz,
    last_active_at timestamptz,
    expires_at     timestamptz,
    idle_timeout   interval,
    valid_until    timestamptz,
    revoked_at     timestamptz,
    revoke_reason  text
);

-- A newly created session; `token` is shown this once and stored only as its SHA-256.
CREATE TYPE session_ext.new_session AS (
    id         uuid,
    session_id text,
    token      text,
    expires_at timestamptz
);
