-- PostgREST db-pre-request hook: a request of an authenticated user must also carry a live
-- session_ext session token of that same user, in the header X-Session-Token. A revoked,
-- expired or foreign session ends the request with HTTP 401 before any query runs.
--
-- Enable it with   ALTER ROLE authenticator SET pgrst.db_pre_request = 'public.check_session';
-- followed by      NOTIFY pgrst, 'reload config';
-- Requests without a session (anon) and service_role requests pass unchanged.
CREATE OR REPLACE FUNCTION public.check_session() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    token   text := current_setting('request.headers', true)::json ->> 'x-session-token';
    session session_ext.session_info;
BEGIN
    IF current_user <> 'authenticated' THEN
        RETURN;
    END IF;
    IF token IS NULL THEN
        RAISE SQLSTATE 'PT401' USING MESSAGE = 'missing session token',
            HINT = 'Send the token create_user_session returned in the X-Session-Token header.';
    END IF;
    -- Read-only for GET requests (PostgREST runs them READ ONLY): validate_session then
    -- records no activity, and still refuses revoked and expired sessions.
    session := session_ext.validate_session(session_token => token);
    IF session.id IS NULL OR session.user_id IS DISTINCT FROM session_ext.current_user_id() THEN
        RAISE SQLSTATE 'PT401' USING MESSAGE = 'session revoked, expired or not yours',
            HINT = 'Log in again.';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.check_session() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.check_session() TO anon, authenticated, service_role;
