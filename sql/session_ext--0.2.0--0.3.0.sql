-- session_ext 0.2.0 -> 0.3.0: the API functions decide identity from their immediate caller
-- (SPEC §3). They become SECURITY INVOKER: each reads the calling role (current_user) first,
-- then switches to the extension's owner itself for the privileged work and runs every SQL
-- statement of its own under search_path = pg_catalog, pg_temp (src/definer.rs). A definer
-- function made the outer role, not the role just outside it, look like the caller.
-- Released: never edit; later changes go into the next upgrade script.
\echo Use "ALTER EXTENSION session_ext UPDATE TO '0.3.0'" to load this file. \quit

ALTER FUNCTION session_ext.cleanup_expired_sessions(integer) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.count_user_sessions(uuid) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.create_user_session(uuid, json, interval, interval, text, text, inet, text)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.create_user_session(uuid, text, json, interval, interval, text, text, inet, text)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.create_user_session(text) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.get_session(uuid) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.is_session_active(uuid) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.list_user_sessions(uuid) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.revoke_all_user_sessions(uuid, text) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.revoke_other_sessions(uuid) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.revoke_session(uuid, text) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.rotate_session_token(text) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.session_stats() SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.touch_session(uuid) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.update_session_data(uuid, jsonb, bigint, boolean) SECURITY INVOKER RESET search_path;
ALTER FUNCTION session_ext.validate_session(text, text) SECURITY INVOKER RESET search_path;
-- It runs no SQL; a SET clause only cost every call.
ALTER FUNCTION session_ext.current_user_id() RESET search_path;
