-- PostgREST db-pre-request hook for JWTs that carry their session (Supabase Auth's session_id
-- claim, or an auth server of your own that signs session_ext's session id into the token):
-- a signed-out, revoked or expired session's still-signed JWT is refused on its very next
-- request with HTTP 401, before any query runs. Requests without a session_id claim (anon, the
-- service role) pass unchanged.
--
-- Enable it with   ALTER ROLE authenticator SET pgrst.db_pre_request = 'public.require_live_session';
-- followed by      NOTIFY pgrst, 'reload config';
--
-- session_ext.require_session raises 28000 for a session that is not active and 42501 for one
-- below the assurance level asked; PostgREST answers a SQLSTATE 'PTxyz' with HTTP status xyz.
-- An endpoint that needs a second factor calls session_ext.require_session('aal2') itself (a
-- 42501 from an authenticated role is already HTTP 403 in PostgREST).
--
-- SECURITY DEFINER so that anon, which may call no session_ext function, passes too: the session
-- and its user come from the claims alone, never from the role. Create it as an admin of
-- session_ext (the project owner).
CREATE OR REPLACE FUNCTION public.require_live_session(min_aal text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    message text;
    detail  text;
    hint    text;
BEGIN
    PERFORM session_ext.require_session(min_aal);
EXCEPTION
    WHEN invalid_authorization_specification OR insufficient_privilege THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
        IF SQLSTATE = '28000' THEN
            RAISE SQLSTATE 'PT401' USING MESSAGE = message, DETAIL = detail, HINT = hint;
        END IF;
        RAISE SQLSTATE 'PT403' USING MESSAGE = message, DETAIL = detail, HINT = hint;
END
$$;
REVOKE ALL ON FUNCTION public.require_live_session(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.require_live_session(text) TO anon, authenticated, service_role;
