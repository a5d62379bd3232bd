-- session_ext 0.1.0 -> 0.2.0: the catalog documents itself, so that \df+ session_ext.*,
-- \d+ session_ext.* and \dT+ session_ext.* are a usable reference without the README.
-- A fresh 0.2.0 install runs this file too (src/lib.rs), so both paths get the same comments.
-- Released: never edit; later changes go into the next upgrade script.

COMMENT ON SCHEMA session_ext IS
    'session_ext: user sessions kept inside PostgreSQL. Call the functions; read the tables through RLS.';

COMMENT ON ROLE session_ext_user IS
    'session_ext: may call the self-service functions on its own sessions (identity from request.jwt.claims). Supabase: GRANT session_ext_user TO authenticated.';
COMMENT ON ROLE session_ext_admin IS
    'session_ext: may call every session_ext function for any user, including cleanup and stats. Supabase: GRANT session_ext_admin TO service_role.';

COMMENT ON TABLE session_ext.user_sessions IS
    'One row per session. Written only by the session_ext functions; users read their own rows through RLS, without the secret hashes.';
COMMENT ON COLUMN session_ext.user_sessions.id IS 'Primary key, a time-ordered UUIDv7.';
COMMENT ON COLUMN session_ext.user_sessions.user_id IS 'The user the session belongs to (the JWT sub claim).';
COMMENT ON COLUMN session_ext.user_sessions.session_id IS 'Public handle: id::text, or the custom id given at creation. Unique.';
COMMENT ON COLUMN session_ext.user_sessions.token_hash IS 'SHA-256 of the bearer token; the token itself is never stored. Not readable by session_ext_user.';
COMMENT ON COLUMN session_ext.user_sessions.previous_token_hash IS 'SHA-256 of the token before the last rotation; presenting that token again revokes the session (token_reuse). Not readable by session_ext_user.';
COMMENT ON COLUMN session_ext.user_sessions.rotated_at IS 'When the token was last rotated.';
COMMENT ON COLUMN session_ext.user_sessions.session_data IS 'Application data, always a JSON object, at most session_ext.max_session_data_bytes.';
COMMENT ON COLUMN session_ext.user_sessions.data_version IS 'Starts at 1, increased by every update_session_data; pass it as expected_version for optimistic locking.';
COMMENT ON COLUMN session_ext.user_sessions.device_info IS 'Free text the application gives at creation, e.g. a device name.';
COMMENT ON COLUMN session_ext.user_sessions.user_agent IS 'The client''s User-Agent, as given at creation.';
COMMENT ON COLUMN session_ext.user_sessions.ip_address IS 'The client address, as given at creation.';
COMMENT ON COLUMN session_ext.user_sessions.fingerprint_hash IS 'SHA-256 of the client fingerprint the session is bound to, if any. Not readable by session_ext_user.';
COMMENT ON COLUMN session_ext.user_sessions.created_at IS 'When the session was created.';
COMMENT ON COLUMN session_ext.user_sessions.last_active_at IS 'Last recorded activity; written at most once per session_ext.touch_interval.';
COMMENT ON COLUMN session_ext.user_sessions.expires_at IS 'Absolute end of the session, whatever its activity.';
COMMENT ON COLUMN session_ext.user_sessions.idle_timeout IS 'The session ends after this long without activity; NULL for no idle limit.';
COMMENT ON COLUMN session_ext.user_sessions.valid_until IS 'least(expires_at, last_active_at + idle_timeout): the session is valid while now() < valid_until.';
COMMENT ON COLUMN session_ext.user_sessions.revoked_at IS 'When the session was revoked; NULL while it is not.';
COMMENT ON COLUMN session_ext.user_sessions.revoke_reason IS 'Why it was revoked: logout, logout_all, logout_others, session_limit, token_reuse, or the reason the caller gave.';

COMMENT ON TABLE session_ext.session_audit_log IS
    'One row per session event, written in the transaction of the change (when session_ext.audit is on), pruned after session_ext.audit_retention. Users read their own events.';
COMMENT ON COLUMN session_ext.session_audit_log.id IS 'Increasing event number.';
COMMENT ON COLUMN session_ext.session_audit_log.occurred_at IS 'Start time of the transaction that made the change.';
COMMENT ON COLUMN session_ext.session_audit_log.event IS 'create, rotate, token_reuse, revoke, data_update, suspicious, cleanup or rate_limited.';
COMMENT ON COLUMN session_ext.session_audit_log.session_id IS 'The session concerned (user_sessions.id), if any.';
COMMENT ON COLUMN session_ext.session_audit_log.user_id IS 'The user whose session it is.';
COMMENT ON COLUMN session_ext.session_audit_log.actor_role IS 'The role that called the function (the role in effect outside it).';
COMMENT ON COLUMN session_ext.session_audit_log.actor_user_id IS 'The caller''s user id from the JWT claims, if any.';
COMMENT ON COLUMN session_ext.session_audit_log.ip_address IS 'The client address, when the call carried one.';
COMMENT ON COLUMN session_ext.session_audit_log.details IS 'Event-specific JSON (reason, versions, session_id); never a token.';

COMMENT ON TYPE session_ext.session_info IS 'A session as the API returns it: every column of user_sessions except the secret hashes.';
COMMENT ON COLUMN session_ext.session_info.id IS 'Primary key, a time-ordered UUIDv7.';
COMMENT ON COLUMN session_ext.session_info.session_id IS 'Public handle: id::text or the custom id.';
COMMENT ON COLUMN session_ext.session_info.user_id IS 'The user the session belongs to.';
COMMENT ON COLUMN session_ext.session_info.session_data IS 'Application data, a JSON object.';
COMMENT ON COLUMN session_ext.session_info.data_version IS 'Version of session_data, for expected_version.';
COMMENT ON COLUMN session_ext.session_info.device_info IS 'Device description given at creation.';
COMMENT ON COLUMN session_ext.session_info.user_agent IS 'User-Agent given at creation.';
COMMENT ON COLUMN session_ext.session_info.ip_address IS 'Client address given at creation.';
COMMENT ON COLUMN session_ext.session_info.created_at IS 'When the session was created.';
COMMENT ON COLUMN session_ext.session_info.last_active_at IS 'Last recorded activity.';
COMMENT ON COLUMN session_ext.session_info.expires_at IS 'Absolute end of the session.';
COMMENT ON COLUMN session_ext.session_info.idle_timeout IS 'Idle limit; NULL for none.';
COMMENT ON COLUMN session_ext.session_info.valid_until IS 'The session is valid while now() < valid_until.';
COMMENT ON COLUMN session_ext.session_info.revoked_at IS 'When it was revoked; NULL while it is not.';
COMMENT ON COLUMN session_ext.session_info.revoke_reason IS 'Why it was revoked.';

COMMENT ON TYPE session_ext.new_session IS 'A session just created or rotated. token is shown this once; only its SHA-256 is stored.';
COMMENT ON COLUMN session_ext.new_session.id IS 'The session''s id (user_sessions.id).';
COMMENT ON COLUMN session_ext.new_session.session_id IS 'The session''s public handle.';
COMMENT ON COLUMN session_ext.new_session.token IS 'The bearer token: 32 random bytes, URL-safe base64 without padding. Give it to the client; it cannot be read again.';
COMMENT ON COLUMN session_ext.new_session.expires_at IS 'Absolute end of the session.';

COMMENT ON FUNCTION session_ext.current_user_id() IS
    'The caller''s user id: the sub claim of request.jwt.claims, else request.jwt.claim.sub; NULL when absent; 22P02 when not a UUID.';
COMMENT ON FUNCTION session_ext.create_user_session(text) IS
    'Creates a session for the calling user under a token the caller generated (at least 32 characters); returns the session id. Example: SELECT session_ext.create_user_session(session_token => ''...'').';
COMMENT ON FUNCTION session_ext.create_user_session(uuid, json, interval, interval, text, text, inet, text) IS
    'Creates a session for user_id with generated id and token; returns (id, session_id, token, expires_at). Example: SELECT * FROM session_ext.create_user_session(user_id => auth.uid(), session_data => ''{}'', device_info => ''Firefox'').';
COMMENT ON FUNCTION session_ext.create_user_session(uuid, text, json, interval, interval, text, text, inet, text) IS
    'Creates a session for user_id under a custom session_id (23505 when taken), with a generated token. Example: SELECT * FROM session_ext.create_user_session(user_id => ..., session_id => ''tab-1'').';
COMMENT ON FUNCTION session_ext.is_session_active(uuid) IS
    'True when the session exists, is not revoked and has neither expired nor idled out; false otherwise (and for other users'' sessions).';
COMMENT ON FUNCTION session_ext.validate_session(text, text) IS
    'The hot path: the session a bearer token belongs to, or NULL. Records activity at most once per touch_interval; with fingerprint, a mismatch returns NULL and audits suspicious. Writes nothing in a read-only transaction.';
COMMENT ON FUNCTION session_ext.get_session(uuid) IS
    'A session by id, in any state, without secrets; NULL when unknown; 42501 for another user''s session.';
COMMENT ON FUNCTION session_ext.touch_session(uuid) IS
    'Records activity now, whatever touch_interval says; returns the new last_active_at, NULL when not active.';
COMMENT ON FUNCTION session_ext.update_session_data(uuid, jsonb, bigint, boolean) IS
    'Merges (merge => true) or replaces session_data; returns the new data_version. A stale expected_version raises 40001 with both versions in DETAIL.';
COMMENT ON FUNCTION session_ext.rotate_session_token(text) IS
    'Replaces a session''s token; returns the new one. The old token dies, and presenting it again revokes the session (token_reuse).';
COMMENT ON FUNCTION session_ext.list_user_sessions(uuid) IS
    'A user''s active sessions (the caller''s when user_id is NULL), oldest first: the device list.';
COMMENT ON FUNCTION session_ext.count_user_sessions(uuid) IS
    'How many active sessions a user has (the caller when user_id is NULL).';
COMMENT ON FUNCTION session_ext.revoke_session(uuid, text) IS
    'Revokes one session (logout); true when it was active.';
COMMENT ON FUNCTION session_ext.revoke_other_sessions(uuid) IS
    'Revokes every other active session of the owner of current_session_id ("log out everywhere else"); returns how many.';
COMMENT ON FUNCTION session_ext.revoke_all_user_sessions(uuid, text) IS
    'Revokes every active session of a user (the caller when user_id is NULL); returns how many.';
COMMENT ON FUNCTION session_ext.cleanup_expired_sessions(integer) IS
    'Admin: deletes expired sessions, revoked ones past revoked_retention and audit rows past audit_retention, in batches of batch_size (default cleanup_batch_size); returns the sessions deleted.';
COMMENT ON FUNCTION session_ext.session_stats() IS
    'Admin: counts of active, expired and revoked sessions, the cleanup worker''s state for this database, and the effective settings, as JSON.';
