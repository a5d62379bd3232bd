-- Supabase Auth keeps its sessions in auth.sessions and signs each row's id into the session's
-- access tokens as the session_id claim. This mirrors every row into session_ext under the same
-- id, so that session_ext.require_session() (the db-pre-request hook of
-- examples/postgrest/require_session.sql) knows the session a JWT names:
--   * a sign-in (a new row) creates the session; Supabase Auth keeps the refresh token, so the
--     mirror gets a random token hash nobody holds, and no idle timeout of its own;
--   * a second factor (the row's aal raised) raises the session's level;
--   * a sign-out (the row deleted) revokes it (reason logout; user_deleted when its user is
--     being deleted): its JWTs are refused at once;
--   * session_ext's own revocations (revoke_session, revoke_all_user_sessions, end_user_sessions)
--     refuse the JWTs too, and for good: a mirrored session is created only by a new row.
-- Run it as a role with session_ext_admin (on Supabase: GRANT session_ext_admin TO postgres).
-- Running it again replaces the functions and triggers and mirrors nothing again.

-- One row of auth.sessions, mirrored. SECURITY INVOKER: it acts with its caller's rights, so
-- only an admin of session_ext (the trigger's owner, or whoever runs this file) can make it do
-- anything; API roles that default privileges let call it get 42501.
CREATE OR REPLACE FUNCTION public.session_ext_mirror(s auth.sessions) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT session_ext.import_session(
        id => s.id,
        user_id => s.user_id,
        token_sha256 => sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
        expires_at => coalesce(s.not_after, now() + interval '10 years'),
        idle_timeout => interval '0',
        user_agent => left(nullif(btrim(s.user_agent), ''), 1024),
        ip_address => s.ip);
    SELECT session_ext.set_session_aal(s.id, s.aal::text) WHERE s.aal::text <> 'aal1';
$$;
REVOKE ALL ON FUNCTION public.session_ext_mirror(auth.sessions) FROM PUBLIC;

-- A trigger function: PostgreSQL lets nobody call it but the trigger manager.
CREATE OR REPLACE FUNCTION public.session_ext_mirror_trigger() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM public.session_ext_mirror(NEW);
    ELSIF TG_OP = 'DELETE' THEN
        -- A user's deletion cascades to its sessions before end_user_sessions runs.
        PERFORM session_ext.revoke_session(OLD.id, CASE
            WHEN EXISTS (SELECT FROM auth.users u WHERE u.id = OLD.user_id) THEN 'logout'
            ELSE 'user_deleted' END);
    ELSIF NEW.aal IS DISTINCT FROM OLD.aal THEN
        PERFORM session_ext.set_session_aal(NEW.id, NEW.aal::text);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.session_ext_mirror_trigger() FROM PUBLIC;

-- The first time only (the trigger does not exist yet): the sessions signed in before. Later
-- runs must not: a session session_ext revoked and cleanup deleted would come back.
SELECT public.session_ext_mirror(s)
  FROM auth.sessions s
 WHERE NOT EXISTS (SELECT FROM pg_trigger t
                    WHERE t.tgrelid = 'auth.sessions'::regclass AND t.tgname = 'session_ext_mirror')
   AND NOT EXISTS (SELECT FROM session_ext.user_sessions m WHERE m.id = s.id);

CREATE OR REPLACE TRIGGER session_ext_mirror
    AFTER INSERT OR DELETE OR UPDATE OF aal ON auth.sessions
    FOR EACH ROW EXECUTE FUNCTION public.session_ext_mirror_trigger();

-- A deleted user's sessions end with it (reason user_deleted).
CREATE OR REPLACE TRIGGER session_ext_end_user_sessions
    AFTER DELETE ON auth.users
    FOR EACH ROW EXECUTE FUNCTION session_ext.end_user_sessions('id');
