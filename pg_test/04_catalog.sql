-- Ecosystem fit: the catalog documents every object (\df+, \d+, \dT+, SHOW), and the README's
-- PostgREST db-pre-request hook refuses requests whose session is not live.
\ir fixtures/begin.sql
SELECT plan(13);

SELECT is(
    (SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text) FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'session_ext'::regnamespace
        AND pg_catalog.obj_description(p.oid, 'pg_proc') IS NULL),
    NULL, 'every function has a comment');
SELECT is(
    (SELECT array_agg(c.oid::regclass::text ORDER BY c.relname) FROM pg_catalog.pg_class c
      WHERE c.relnamespace = 'session_ext'::regnamespace AND c.relkind IN ('r', 'c')
        AND coalesce(pg_catalog.obj_description(c.oid, 'pg_class'),
                     pg_catalog.obj_description(c.reltype, 'pg_type')) IS NULL),
    NULL, 'every table and type has a comment');
SELECT is(
    (SELECT array_agg(a.attrelid::regclass || '.' || a.attname ORDER BY a.attrelid, a.attnum) FROM pg_catalog.pg_attribute a
       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
      WHERE c.relnamespace = 'session_ext'::regnamespace AND c.relkind IN ('r', 'c')
        AND a.attnum > 0 AND NOT a.attisdropped
        AND pg_catalog.col_description(a.attrelid, a.attnum) IS NULL),
    NULL, 'every column of every table and type has a comment');
SELECT is(
    (SELECT array_agg(r.rolname ORDER BY r.rolname) FROM pg_catalog.pg_roles r
      WHERE r.rolname IN ('session_ext_user', 'session_ext_admin')
        AND pg_catalog.shobj_description(r.oid, 'pg_authid') IS NOT NULL),
    ARRAY['session_ext_admin', 'session_ext_user']::name[], 'both roles have a comment');
SELECT isnt(pg_catalog.obj_description('session_ext'::regnamespace, 'pg_namespace'), NULL,
    'the schema has a comment');
SELECT is(
    (SELECT array_agg(name ORDER BY name) FROM pg_catalog.pg_settings
      WHERE name LIKE 'session\_ext.%' AND (short_desc IS NULL OR extra_desc IS NULL)),
    NULL, 'every setting has a description');

-- The db-pre-request hook of the README, in the PostgREST request shape.
\ir ../examples/postgrest/pre_request.sql
SET LOCAL session_ext.audit = off;
SET LOCAL ROLE service_role;
SELECT set_config('request.jwt.claims', :alice_claims, true);
CREATE TEMP TABLE alice_token ON COMMIT DROP AS
SELECT id, token FROM session_ext.create_user_session(user_id => :alice, session_data => '{}');
RESET ROLE;

CREATE FUNCTION pg_temp.request(api_role text, claims text, token text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM set_config('role', api_role, true);
    PERFORM set_config('request.jwt.claims', claims, true);
    PERFORM set_config('request.headers', json_build_object('x-session-token', token)::text, true);
    PERFORM public.check_session();
    PERFORM set_config('role', 'none', true);
END
$f$;

SELECT lives_ok(format('SELECT pg_temp.request(%L, %L, %L)', 'authenticated', :alice_claims, (SELECT token FROM alice_token)),
    'pre-request: the owner with a live session passes');
SELECT throws_ok(format('SELECT pg_temp.request(%L, %L, NULL)', 'authenticated', :alice_claims),
    'PT401', 'missing session token', 'pre-request: no token is 401');
SELECT throws_ok(format('SELECT pg_temp.request(%L, %L, %L)', 'authenticated', :bob_claims, (SELECT token FROM alice_token)),
    'PT401', 'session revoked, expired or not yours', 'pre-request: another user''s token is 401');
SELECT throws_ok(format('SELECT pg_temp.request(%L, %L, %L)', 'authenticated', :alice_claims, repeat('x', 43)),
    'PT401', 'session revoked, expired or not yours', 'pre-request: an unknown token is 401');
SELECT ok(session_ext.revoke_session((SELECT id FROM alice_token)), 'alice logs out');
SELECT throws_ok(format('SELECT pg_temp.request(%L, %L, %L)', 'authenticated', :alice_claims, (SELECT token FROM alice_token)),
    'PT401', 'session revoked, expired or not yours', 'pre-request: a revoked session is 401');
SELECT lives_ok(format('SELECT pg_temp.request(%L, %L, NULL)', 'anon', '{"role":"anon"}'),
    'pre-request: anonymous requests pass unchanged');

SELECT * FROM finish();
ROLLBACK;
