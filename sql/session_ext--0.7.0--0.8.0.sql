-- session_ext 0.7.0 -> 0.8.0: owner rights that cannot leak, reuse detection no caller can undo or
-- starve, requests of one session that never wait for each other (SPEC §2, §4, §8).
-- A detected token reuse is queued in shared memory and applied by the launcher's worker; a
-- revocation whose session row another transaction holds waits in the table below, honoured by
-- every lookup, until the worker can apply it. A fresh 0.8.0 install runs this file too
-- (src/lib.rs): both paths get the same table and comments.
\echo Use "ALTER EXTENSION session_ext UPDATE TO '0.8.0'" to load this file. \quit

-- Written and read only by session_ext (its worker, and lookups as the owner): no role is granted
-- anything on it, and row-level security without a policy shuts out everyone but the owner.
CREATE TABLE session_ext.pending_revocations (
    id             uuid        PRIMARY KEY,
    detected_at    timestamptz NOT NULL,
    detected_by    xid8,
    actor_role     text        NOT NULL,
    actor_user_id  uuid,
    audit          boolean     NOT NULL,
    notify_channel text        NOT NULL
);
ALTER TABLE session_ext.pending_revocations ENABLE ROW LEVEL SECURITY;
ALTER TABLE session_ext.pending_revocations FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('session_ext.pending_revocations', '');

COMMENT ON TABLE session_ext.pending_revocations IS
    'Sessions revoked for a token reuse whose row another transaction held: every lookup treats them as revoked, and the worker applies each once its row is free. Normally empty.';
COMMENT ON COLUMN session_ext.pending_revocations.id IS 'The session (user_sessions.id).';
COMMENT ON COLUMN session_ext.pending_revocations.detected_at IS 'When the earlier token was presented.';
COMMENT ON COLUMN session_ext.pending_revocations.detected_by IS
    'The transaction that presented it, while it may still hold or create the session''s row; NULL when it wrote nothing.';
COMMENT ON COLUMN session_ext.pending_revocations.actor_role IS 'The role that called the function: the actor of the revocation''s events.';
COMMENT ON COLUMN session_ext.pending_revocations.actor_user_id IS 'The user id in that call''s JWT claims, if any.';
COMMENT ON COLUMN session_ext.pending_revocations.audit IS 'session_ext.audit of that call: whether the revocation writes its audit rows.';
COMMENT ON COLUMN session_ext.pending_revocations.notify_channel IS 'session_ext.notify_channel of that call ('''' = no notification).';

-- Comments that now say what the functions do.
COMMENT ON FUNCTION session_ext.validate_session(text, text) IS
    'The hot path: the session a bearer token belongs to, or NULL. Records activity at most once per touch_interval, never waiting for a row another request holds; with fingerprint, a mismatch returns NULL and audits suspicious. Writes nothing in a read-only transaction.';
COMMENT ON FUNCTION session_ext.update_session_data(uuid, jsonb, bigint, boolean) IS
    'Merges (merge => true) or replaces session_data and records activity; returns the new data_version. A stale expected_version raises 40001 with both versions in DETAIL.';
COMMENT ON FUNCTION session_ext.rotate_session_token(text) IS
    'Replaces a session''s token; returns the new one. Within rotation_grace the replaced token still works and rotates again to the same new token; after it, presenting the replaced (or any earlier) token revokes the session (token_reuse).';
COMMENT ON FUNCTION session_ext.list_user_sessions(uuid) IS
    'A user''s active sessions (the caller''s when user_id is NULL), most recently active first: the device list.';
