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

-- The column privileges on session_ext.user_sessions (users never see the secret hashes; no role
-- reads the session keys) are granted by sql/session_ext--0.3.0--0.4.0.sql, which a fresh install
-- runs too, so that both paths list them in the same order.
GRANT SELECT ON session_ext.session_audit_log TO session_ext_user, session_ext_admin;

-- Functions: nobody by default; users get the self-service API, admins (members of
-- session_ext_user too) additionally the maintenance functions.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA session_ext FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA session_ext TO session_ext_user;
-- (sql/session_ext--0.4.0--0.5.0.sql grants 0.5.0's functions as an update does.)
REVOKE EXECUTE ON FUNCTION session_ext.cleanup_expired_sessions(integer), session_ext.session_stats(),
    session_ext.set_session_aal(uuid, text, interval), session_ext.end_user_sessions(),
    session_ext.import_session(uuid, bytea, timestamptz, timestamptz, timestamptz, interval, text, text, inet, json, uuid)
    FROM session_ext_user;
GRANT EXECUTE ON FUNCTION session_ext.cleanup_expired_sessions(integer), session_ext.session_stats()
    TO session_ext_admin;

SELECT pg_catalog.pg_extension_config_dump('session_ext.user_sessions', '');
SELECT pg_catalog.pg_extension_config_dump('session_ext.session_audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('session_ext.session_audit_log_id_seq', '');
