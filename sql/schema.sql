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
    -- Becomes root_token_hashes bytea[] in 0.4.0, which also adds token_key and
    -- token_generation (sql/session_ext--0.3.0--0.4.0.sql, run by a fresh install too).
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
    revoke_reason    text
);
-- No CHECK constraints, on purpose: only the functions write this table (nobody else has a write
-- privilege), and they keep its rules (a JSON object in session_data, 32-byte hashes, a reason
-- with every revocation, valid_until = least(expires_at, last_active_at + idle_timeout)). On
-- PostgreSQL 15 every INSERT and UPDATE statement re-reads each CHECK expression from the catalog,
-- which would cost a single-row write about a third of its time.

-- One user's sessions (list, count, per-user limits), oldest first.
CREATE INDEX user_sessions_user_idx ON session_ext.user_sessions (user_id, created_at);
-- Cleanup of expired rows, absolute or idle; id makes every entry unique, so that cleanup can
-- resume exactly where its previous batch ended. Replaced in 0.6.0 by an index on cleanup_after
-- (sql/session_ext--0.5.0--0.6.0.sql, run by a fresh install too).
CREATE INDEX user_sessions_valid_until_idx ON session_ext.user_sessions (valid_until, id);
-- Reuse detection: a rotated-away token is looked up only when the current ones miss.
CREATE UNIQUE INDEX user_sessions_previous_token_idx ON session_ext.user_sessions (previous_token_hash)
    WHERE previous_token_hash IS NOT NULL;
-- Cleanup of revoked rows past their retention.
CREATE INDEX user_sessions_revoked_idx ON session_ext.user_sessions (revoked_at, id)
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
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb
);

-- A user's own events; pruning by age. Every audited call pays for these indexes, so there are
-- no others (the second is appended to at its right end, the cheapest kind of index insert).
CREATE INDEX session_audit_log_user_idx ON session_ext.session_audit_log (user_id, occurred_at);
CREATE INDEX session_audit_log_occurred_idx ON session_ext.session_audit_log (occurred_at, id);

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
