-- The Supabase recipes of the README, on tables shaped as Supabase Auth's auth.users and
-- auth.sessions: sessions mirrored under the ids its JWTs carry, a JWT refused once its session
-- is signed out or revoked, the second factor's level, and sessions ending with their user.
\ir fixtures/begin.sql
SELECT plan(17);

CREATE SCHEMA auth;
CREATE TYPE auth.aal_level AS ENUM ('aal1', 'aal2', 'aal3');
CREATE TABLE auth.users (id uuid PRIMARY KEY, email text);
CREATE TABLE auth.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    factor_id uuid,
    aal auth.aal_level DEFAULT 'aal1',
    not_after timestamptz,
    refreshed_at timestamp,
    user_agent text,
    ip inet,
    tag text);
-- Signed in before the recipe ran.
INSERT INTO auth.users VALUES ('c0c00000-0000-4000-8000-000000000003', 'carol@example.com');
INSERT INTO auth.sessions (id, user_id, aal) VALUES ('0195f0a2-0000-7000-8000-0000000000ee', 'c0c00000-0000-4000-8000-000000000003', 'aal2');
\o /dev/null
\ir ../examples/supabase/mirror_auth_sessions.sql
\ir ../examples/supabase/mirror_auth_sessions.sql
\o
\ir ../examples/postgrest/require_session.sql

CREATE FUNCTION pg_temp.request(claims_of uuid) RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
    state text;
    owner uuid := (SELECT user_id FROM session_ext.user_sessions WHERE id = claims_of);
BEGIN
    PERFORM set_config('request.jwt.claims',
        json_build_object('sub', owner, 'role', 'authenticated', 'session_id', claims_of)::text, true);
    PERFORM set_config('role', 'authenticated', true);
    PERFORM public.require_live_session();
    PERFORM set_config('role', 'none', true);
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
    PERFORM set_config('role', 'none', true);
    RETURN state;
END
$f$;

-- Sign-ins, as Supabase Auth writes them.
INSERT INTO auth.users VALUES ('a11ce000-0000-4000-8000-000000000001', 'alice@example.com'),
                              ('b0b00000-0000-4000-8000-000000000002', 'bob@example.com');
INSERT INTO auth.sessions (id, user_id, user_agent, ip) VALUES
    ('0195f0a2-0000-7000-8000-00000000000a', :alice, 'Firefox', '203.0.113.9'),
    ('0195f0a2-0000-7000-8000-00000000000b', :alice, '', NULL),
    ('0195f0a2-0000-7000-8000-00000000000c', :bob, 'curl', NULL);
SELECT is((SELECT count(*) FROM session_ext.user_sessions WHERE id IN (SELECT id FROM auth.sessions) AND revoked_at IS NULL),
          4::bigint, 'each Supabase Auth session is mirrored under its id');
SELECT is((SELECT user_agent FROM session_ext.user_sessions WHERE id = '0195f0a2-0000-7000-8000-00000000000a'), 'Firefox',
          'with its device');
SELECT is(pg_temp.request('0195f0a2-0000-7000-8000-00000000000a'), 'ok', 'a JWT of a live session passes');
SELECT is((SELECT aal FROM session_ext.get_session('0195f0a2-0000-7000-8000-0000000000ee')), 'aal2',
          'a session from before the recipe is mirrored too, at its level, once');

-- A second factor: Supabase Auth raises the row's aal.
SELECT is((SELECT aal FROM session_ext.get_session('0195f0a2-0000-7000-8000-00000000000a')), 'aal1', 'before it, aal1');
UPDATE auth.sessions SET aal = 'aal2' WHERE id = '0195f0a2-0000-7000-8000-00000000000a';
SELECT is((SELECT aal FROM session_ext.get_session('0195f0a2-0000-7000-8000-00000000000a')), 'aal2', 'the level follows');
UPDATE auth.sessions SET updated_at = now() WHERE id = '0195f0a2-0000-7000-8000-00000000000a';
SELECT is((SELECT count(*) FROM session_ext.session_audit_log
            WHERE event = 'aal_change' AND session_id = '0195f0a2-0000-7000-8000-00000000000a'), 1::bigint,
          'one aal_change event: other updates of the row change nothing');

-- Sign-out in Supabase Auth deletes the row: the still-signed JWT is refused on its next request.
DELETE FROM auth.sessions WHERE id = '0195f0a2-0000-7000-8000-00000000000b';
SELECT is(pg_temp.request('0195f0a2-0000-7000-8000-00000000000b'), 'PT401', 'a signed-out session''s JWT is refused (401)');
SELECT is((SELECT revoke_reason FROM session_ext.user_sessions WHERE id = '0195f0a2-0000-7000-8000-00000000000b'), 'logout',
          'revoked as a logout');

-- "Password changed: log out everywhere else", from the request of the session that changed it.
INSERT INTO auth.sessions (id, user_id) VALUES ('0195f0a2-0000-7000-8000-00000000000d', :alice);
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', json_build_object('sub', :alice, 'session_id', '0195f0a2-0000-7000-8000-00000000000a')::text, true) \g /dev/null
SELECT is(session_ext.revoke_other_sessions(session_ext.current_session_id()), 1::bigint,
          'password changed: the other live session of the user is revoked');
RESET ROLE;
SELECT is(pg_temp.request('0195f0a2-0000-7000-8000-00000000000d'), 'PT401', 'its JWT is refused');
SELECT is(pg_temp.request('0195f0a2-0000-7000-8000-00000000000a'), 'ok', 'the session that changed it lives on');
-- Supabase Auth still has that row; after cleanup deleted the revoked session, running the recipe
-- again must not bring it back.
DELETE FROM session_ext.user_sessions WHERE id = '0195f0a2-0000-7000-8000-00000000000d';
\o /dev/null
\ir ../examples/supabase/mirror_auth_sessions.sql
\o
SELECT is((SELECT count(*) FROM session_ext.user_sessions WHERE id = '0195f0a2-0000-7000-8000-00000000000d'), 0::bigint,
          'running the recipe again mirrors no session again');

-- A deleted user's sessions all end, as user_deleted, and nobody else's.
DELETE FROM auth.users WHERE id = :alice;
SELECT is((SELECT array_agg(DISTINCT revoked_at IS NOT NULL ORDER BY revoked_at IS NOT NULL) FROM session_ext.user_sessions WHERE user_id = :alice),
          ARRAY[true], 'deleting the user ends every one of its sessions');
SELECT is((SELECT revoke_reason FROM session_ext.user_sessions WHERE id = '0195f0a2-0000-7000-8000-00000000000a'), 'user_deleted',
          'the live one with reason user_deleted');
-- The mirror function acts with its caller's rights: an API role that may call it gets nothing.
GRANT EXECUTE ON FUNCTION public.session_ext_mirror(auth.sessions) TO authenticated;
GRANT USAGE ON SCHEMA auth TO authenticated;
SET LOCAL ROLE authenticated;
SELECT throws_ok($$SELECT public.session_ext_mirror(ROW('0195f0a2-0000-7000-8000-0000000000ff', 'b0b00000-0000-4000-8000-000000000002',
                                                        now(), now(), NULL, 'aal3', NULL, NULL, NULL, NULL, NULL)::auth.sessions)$$,
                 '42501', NULL, 'a user granted the mirror function still cannot import a session with it');
RESET ROLE;
SELECT is(pg_temp.request('0195f0a2-0000-7000-8000-00000000000c'), 'ok', 'and nobody else''s');
SELECT * FROM finish();
ROLLBACK;
