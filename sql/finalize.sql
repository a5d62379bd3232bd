-- session_ext: row-level security, privileges and pg_dump registration. Runs after every
-- function exists.

ALTER TABLE session_ext.user_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE session_ext.user_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE session_ext.session_audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE session_ext.session_audit_log FORCE ROW LEVEL SECURITY;

-- A user reads its own rows; `(SELECT ...)` makes the id an InitPlan, evaluated once per
-- statement instead of once per row. There is no write policy: writes go through the functions.
CREATE POLICY user_sessions_select_own ON session_ext.user_sessions
    FOR SELECT TO session_ext_user
    USING (user_id = (SELECT session_ext.current_user_id()));

CREATE POLICY user_sessions_select_admin ON session_ext.user_sessions
    FOR SELECT TO session_ext_admin
    USING (true);

CREATE POLICY session_audit_log_select_own ON session_ext.session_audit_log
    FOR SELECT TO session_ext_user
    USING (user_id = (SELECT session_ext.current_user_id()));

CREATE POLICY session_audit_log_select_admin ON session_ext.session_audit_log
    FOR SELECT TO session_ext_admin
    USING (true);

GRANT USAGE ON SCHEMA session_ext TO session_ext_user, session_ext_admin;

-- Users never see the secret hashes.
GRANT SELECT (id, user_id, session_id, session_data, data_version, device_info, user_agent,
              ip_address, created_at, last_active_at, expires_at, idle_timeout, valid_until,
              revoked_at, revoke_reason)
    ON session_ext.user_sessions TO session_ext_user;
-- Admins read every column but the session keys: with a key and any earlier token of its family,
-- the session's current token could be computed (src/token.rs). No role reads them.
GRANT SELECT (id, user_id, session_id, token_hash, root_token_hashes, rotated_at, session_data, data_version,
              device_info, user_agent, ip_address, fingerprint_hash, created_at, last_active_at, expires_at,
              idle_timeout, valid_until, revoked_at, revoke_reason, token_generation)
    ON session_ext.user_sessions TO session_ext_admin;
GRANT SELECT ON session_ext.session_audit_log TO session_ext_user, session_ext_admin;

-- Functions: nobody by default; users get the self-service API, admins (members of
-- session_ext_user too) additionally the maintenance functions.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA session_ext FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA session_ext TO session_ext_user;
REVOKE EXECUTE ON FUNCTION session_ext.cleanup_expired_sessions(integer), session_ext.session_stats()
    FROM session_ext_user;
GRANT EXECUTE ON FUNCTION session_ext.cleanup_expired_sessions(integer), session_ext.session_stats()
    TO session_ext_admin;

SELECT pg_catalog.pg_extension_config_dump('session_ext.user_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('session_ext.session_audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('session_ext.session_audit_log_id_seq', '');
